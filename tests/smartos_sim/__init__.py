"""A SmartOS global zone simulated for tests: vmadm, imgadm, zfs, zpool, sysinfo and zlogin.

The tools follow the command contract of shared/research/smartos.md (arguments, exit codes,
stdout for data and stderr for messages, create's validation and defaults, the state machine,
list formatting, the ZFS clone layout). Stdlib only; a test fixture, never shipped: nothing
under virt/ or drivers/ imports it. Modules import each other relatively, so that the
wrappers (`python -m tests.smartos_sim.install BIN_DIR STATE_ROOT`) can run the package as
`smartos_sim` without importing the `tests` package (and pytest with it).

State root layout (all JSON written atomically, every command under one fcntl lock):

    host.json               the host: uuid, hostname, memory, cores, zpool size, nic tags
    vms/<uuid>.json         one zone's configuration (what `vmadm get` shows, plus `_sim`)
    zfs.json                the datasets: name -> type, origin, properties, creation time
    zones/<uuid>/           a filesystem dataset's mountpoint (`/zones/<uuid>`); guest root
                            at zones/<uuid>/root
    .snapshots/<ds>/<snap>/ a snapshot's frozen tree (hard links: copy-on-write in spirit)
    .zvol/<ds>/data         a volume's bytes
    images/<pool>-<uuid>.json  imgadm's database: {manifest, zpool, source}
    faults.json             injected faults (below)
    log                     one line per command (tool and arguments; never stdin)

Faults (`faults.json`, a JSON object; absent or unreadable means none):

    {"provision": "fail"}             the next `vmadm create` that boots ends in state
                                      `failed` (exit 1); consumed by that create.
                                      {"provision": "fail-always"} stays until removed.
    {"hang": "vmadm stop"}            a command whose words start with these words
    {"hang": ["zfs send", "imgadm"]}  blocks (sleeps, holding no lock) until the entry is
                                      removed from the file (or 15 minutes
                                      pass); then it fails with exit 1.
    {"zfs": "message"}                every `zfs` command fails: the message on stderr, exit 1
    {"zfs": {"snapshot": "message"}}  only that zfs subcommand fails
    {"fail": {"vmadm start": "message"}}  any command whose words start so fails (exit 1)
"""

# shellcheck shell=bash
# -- SmartOS simulator (a "global zone": vmadm/imgadm/zfs/zpool/sysinfo/zlogin) ------------
#
# SmartOS cannot run here: the tests drive tests/smartos_sim, which speaks the real tools'
# protocol. Its wrappers go in .testbed/smartos/bin, its state in .testbed/smartos/root, the
# small zone-dataset test image (manifest + stream file, built once, cached) in
# .testbed/smartos/images. Reachable locally (the bin directory) and over the ssh service's
# sshd (the wrappers have their state root baked in, so a bare ssh session runs them).
# Needs the ssh service (SSH_DIR, SSH_PORT) for the remote half. Nothing outside
# .testbed/smartos is written.

SMARTOS_DIR="$STATE/smartos"
SMARTOS_BIN="$SMARTOS_DIR/bin"
SMARTOS_ROOT="$SMARTOS_DIR/root"
SMARTOS_IMAGES="$SMARTOS_DIR/images"

smartos_py() { (cd "$ROOT" && PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PY" "$@"); }

smartos_ssh() {  # run a command on the "global zone" through the test bed's sshd
    "$SSH_DIR/ssh" -p "$SSH_PORT" -i "$SSH_DIR/client_ed25519" -o BatchMode=yes \
        -o ConnectTimeout=5 root@127.0.0.1 "$@" </dev/null
}

smartos_local_up() { [[ -x "$SMARTOS_BIN/vmadm" ]] && "$SMARTOS_BIN/vmadm" list >/dev/null 2>&1; }
smartos_ssh_up() { [[ -x "$SSH_DIR/ssh" ]] && smartos_ssh "$SMARTOS_BIN/vmadm" list >/dev/null 2>&1; }

start_smartos() {
    [[ -x "$PY" ]] || { log "smartos: no python at $PY (make venv)"; return 1; }
    mkdir -p "$SMARTOS_DIR"
    smartos_py -m tests.smartos_sim.install "$SMARTOS_BIN" "$SMARTOS_ROOT" >/dev/null ||
        { log "smartos: installing the simulator's tools failed"; return 1; }
    local image
    image="$(smartos_py -m tests.smartos_sim.mkimage "$SMARTOS_IMAGES")" ||
        { log "smartos: building the test image failed"; return 1; }
    smartos_local_up || { log "smartos: $SMARTOS_BIN/vmadm list does not run"; return 1; }
    setenv VIRTKIT_TEST_SMARTOS_BIN "$SMARTOS_BIN"
    setenv VIRTKIT_TEST_SMARTOS_ROOT "$SMARTOS_ROOT"
    setenv VIRTKIT_TEST_SMARTOS_IMAGE "$image"
    setenv VIRTKIT_TEST_SMARTOS_IMAGE_DIR "$SMARTOS_IMAGES"
    if ! smartos_ssh_up; then
        log "smartos: the tools do not run over ssh (is the ssh service up? scripts/testbed up ssh)"
        return 1
    fi
    setenv VIRTKIT_TEST_SMARTOS_SSH "ssh://root@127.0.0.1:$SSH_PORT"
    setenv VIRTKIT_TEST_SMARTOS_SSH_KEY "$SSH_DIR/client_ed25519"
    setenv VIRTKIT_TEST_SMARTOS_KNOWN_HOSTS "$SSH_DIR/known_hosts"
}

stop_smartos() {
    # No daemon: "down" removes the tools and the simulated host's state (zones, datasets);
    # the built test image stays cached for the next "up".
    rm -rf "$SMARTOS_BIN" "$SMARTOS_ROOT"
}

status_smartos() { smartos_local_up && smartos_ssh_up; }

SERVICES+=(smartos)

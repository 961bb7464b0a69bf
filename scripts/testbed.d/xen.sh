# shellcheck shell=bash
# -- xen: a real Xen 4.17 nested in qemu-system-x86_64 (TCG; KVM where it runs guests) ------
#
# Facts: shared/TESTBED.md, "Xen: a real hypervisor, nested in QEMU". scripts/build-xen-image
# makes the hypervisor, dom0's kernel and initramfs and the agent guest's image from Debian
# packages (cached in .testbed/xen: a second `up` does not rebuild). dom0 starts xenstored,
# xenconsoled and the PV guest "agent-guest" running virtkit-agent (scripts/xen/dom0-init).
#
# Exports (nothing listens beyond 127.0.0.1: QEMU's user-mode forwards and a Unix socket):
#   VIRTKIT_TEST_XENSTORED_PATH  Unix socket reaching dom0's real xenstored
#                                (XENSTORED_PATH=... xenstore-ls works from the host)
#   VIRTKIT_TEST_XEN_DOM0        a command running its arguments as a shell script in dom0
#                                (output and stderr on stdout, dom0's exit code)
#   VIRTKIT_TEST_XEN_CONSOLE     the serial console log (Xen and dom0)
#   VIRTKIT_TEST_XEN_URI         xen+tcp://127.0.0.1:PORT/system: dom0's libvirtd (libxl driver)
#   VIRTKIT_TEST_XEN_SHARE       a host directory dom0 mounts at the same path (9p): where the
#                                libvirt driver's instances_path/images_path go, so the files it
#                                makes on the host are the ones dom0's libxl opens; xenconsoled
#                                writes the guests' console logs in its console/ subdirectory
#   VIRTKIT_TEST_XEN_PV_KERNEL, _RAMDISK, _DISK: the PV guest the libvirt tests and the
#                                libvirt-xen conformance run boot (scripts/xen/pv-guest-init)
# Ports: VIRTKIT_TEST_XEN_PORT_BASE (default 7400) + 1 (xenstored), + 2 (dom0 commands),
# + 3 (libvirtd).
#
# Part of a plain `scripts/testbed up` (and so of make test), like the others; it boots a whole
# hypervisor (QEMU takes ~2.3 GB of RAM, a CPU is busy for ~30 s): VIRTKIT_TESTBED_XEN=0 leaves
# it out of a plain `up` on a machine that cannot spare that (its tests then skip).

XEN_DIR="$STATE/xen"
XEN_PORT_BASE="${VIRTKIT_TEST_XEN_PORT_BASE:-7400}"
XEN_XS_PORT=$((XEN_PORT_BASE + 1))
XEN_EXEC_PORT=$((XEN_PORT_BASE + 2))
XEN_LIBVIRT_PORT=$((XEN_PORT_BASE + 3))
XEN_URI="xen+tcp://127.0.0.1:$XEN_LIBVIRT_PORT/system"
XEN_SHARE="$XEN_DIR/share"
XEN_QEMU_PIDFILE="$XEN_DIR/qemu.pid"
XEN_SOCAT_PIDFILE="$XEN_DIR/socat.pid"
XEN_CONSOLE="$STATE/log/xen-console.log"
XEN_SOCK="$XEN_DIR/xenstored.sock"
# A unix socket path holds at most 107 bytes: a deep checkout gets one in /tmp instead.
((${#XEN_SOCK} <= 100)) || XEN_SOCK="/tmp/virtkit-xenstored-$(printf '%s' "$STATE" | cksum | cut -d' ' -f1).sock"
XEN_DOM0="$XEN_DIR/dom0"
# dom0 holds libvirtd and QEMU's Xen build in its initramfs (~200 MB unpacked): 1 GiB.
XEN_MEM=2048
XEN_ARGS="console=com1 com1=115200,8n1 dom0_mem=1024M,max:1024M dom0_max_vcpus=1 spec-ctrl=no xpti=false pv-l1tf=false"

[[ "${VIRTKIT_TESTBED_XEN:-1}" == 0 ]] || SERVICES+=(xen)

xen_pid_alive() {  # xen_pid_alive PIDFILE COMM: that process of ours runs (not a zombie)
    local pid
    pid="$(cat "$1" 2>/dev/null)" || return 1
    [[ $pid =~ ^[0-9]+$ ]] && [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$2" ]] &&
        ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null
}
xen_qemu_alive() { xen_pid_alive "$XEN_QEMU_PIDFILE" qemu-system-x86; }
xen_socat_alive() { xen_pid_alive "$XEN_SOCAT_PIDFILE" socat; }
xen_store_up() { XENSTORED_PATH="$XEN_SOCK" timeout 5 xenstore-read /local/domain/0/name >/dev/null 2>&1; }
xen_exec_up() { [[ -x $XEN_DOM0 ]] && timeout 10 "$XEN_DOM0" true; }
xen_libvirt_up() { timeout 20 virsh -q -c "$XEN_URI" version >/dev/null 2>&1; }

xen_accel() {  # "kvm" where KVM runs guests (a bounded probe, kept for this boot), else "tcg"
    [[ -n "${VIRTKIT_TEST_XEN_ACCEL:-}" ]] && { echo "$VIRTKIT_TEST_XEN_ACCEL"; return; }
    [[ -e /dev/kvm ]] || { echo tcg; return; }
    local boot cache="$XEN_DIR/accel"
    boot="$(cat /proc/sys/kernel/random/boot_id 2>/dev/null)"
    if [[ -s $cache && "$(head -n 1 "$cache")" == "$boot" ]]; then
        sed -n 2p "$cache"
        return
    fi
    local accel=tcg
    kvm_broken || accel=kvm
    printf '%s\n%s\n' "$boot" "$accel" >"$cache"
    echo "$accel"
}

xen_write_dom0_command() {  # .testbed/xen/dom0 SCRIPT...: run it in dom0, exit with its code
    cat >"$XEN_DOM0.tmp" <<EOF
#!/bin/sh
# Runs its arguments as one shell script in the nested Xen's dom0 (scripts/testbed.d/xen.sh).
out=\$(printf '%s\n' "\$*" | socat -t 600 -T 600 - TCP:127.0.0.1:$XEN_EXEC_PORT) || exit 255
rc=\$(printf '%s\n' "\$out" | sed -n 's/^VIRTKIT-RC=\([0-9]*\)\$/\1/p' | tail -n 1)
printf '%s\n' "\$out" | sed '\$d'
[ -n "\$rc" ] || exit 255
exit "\$rc"
EOF
    chmod 0755 "$XEN_DOM0.tmp"
    mv "$XEN_DOM0.tmp" "$XEN_DOM0"
}

xen_start_qemu() {  # xen_start_qemu BUILD_JSON
    local json=$1 accel cpu get
    get() { "$PY" -c 'import json, sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$json" "$1"; }
    accel="$(xen_accel)"
    # Nehalem: libvirt's libxl driver needs `sep` in the CPUID Xen exposes (qemu64 lacks it).
    cpu=Nehalem
    [[ $accel == kvm ]] && cpu=host
    log "xen: booting Xen 4.17 nested in QEMU ($accel)"
    rm -f "$XEN_QEMU_PIDFILE"
    : >"$XEN_CONSOLE"
    setsid qemu-system-x86_64 -machine pc -accel "$accel" -cpu "$cpu" -m "$XEN_MEM" -smp 1 \
        -nodefaults -display none -monitor none -no-reboot -daemonize \
        -pidfile "$XEN_QEMU_PIDFILE" -serial "file:$XEN_CONSOLE" \
        -kernel "$(get xen)" -append "$XEN_ARGS" \
        -initrd "$(get dom0_kernel) console=hvc0 earlyprintk=xen rdinit=/init virtkit.share=$XEN_SHARE,$(get dom0_initrd)" \
        -virtfs "local,path=$XEN_SHARE,mount_tag=vkshare,security_model=none,id=vkshare" \
        -netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$XEN_XS_PORT-:8001,hostfwd=tcp:127.0.0.1:$XEN_EXEC_PORT-:8002,hostfwd=tcp:127.0.0.1:$XEN_LIBVIRT_PORT-:16509" \
        -device virtio-net-pci,netdev=n0 \
        </dev/null >>"$STATE/log/xen-qemu.log" 2>&1
}

start_xen() {
    local tool json
    for tool in qemu-system-x86_64 qemu-img socat xenstore-read virsh apt-get dpkg cpio lz4 readelf; do
        command -v "$tool" >/dev/null || { log "xen: $tool is not installed (scripts/install-deps)"; return 1; }
    done
    mkdir -p "$XEN_DIR" "$XEN_SHARE/console"
    if ! xen_qemu_alive; then
        json="$("$PY" "$ROOT/scripts/build-xen-image" "$XEN_DIR" 2>>"$STATE/log/xen-build.log")" ||
            { log "xen: image build failed: $(tail -n 2 "$STATE/log/xen-build.log")"; return 1; }
        xen_start_qemu "$json" ||
            { log "xen: QEMU did not start: $(tail -n 2 "$STATE/log/xen-qemu.log")"; return 1; }
    fi
    if ! xen_socat_alive; then
        rm -f "$XEN_SOCK"
        (umask 077; setsid socat "UNIX-LISTEN:$XEN_SOCK,fork,unlink-early,mode=0600" \
            "TCP:127.0.0.1:$XEN_XS_PORT" </dev/null >>"$STATE/log/xen-socat.log" 2>&1 &
         echo $! >"$XEN_SOCAT_PIDFILE")
    fi
    xen_write_dom0_command
    wait_for 180 "dom0's xenstored (console: $XEN_CONSOLE)" xen_store_up || return 1
    wait_for 60 "dom0's command service" xen_exec_up || return 1
    wait_for 120 "dom0's libvirtd ($XEN_URI)" xen_libvirt_up || return 1
    [[ -n ${json:-} ]] || json="$("$PY" "$ROOT/scripts/build-xen-image" "$XEN_DIR" 2>>"$STATE/log/xen-build.log")" ||
        { log "xen: image build failed: $(tail -n 2 "$STATE/log/xen-build.log")"; return 1; }
    setenv VIRTKIT_TEST_XEN_URI "$XEN_URI"
    setenv VIRTKIT_TEST_XEN_SHARE "$XEN_SHARE"
    local key var
    for key in domu_kernel:KERNEL pv_initrd:RAMDISK pv_disk:DISK; do
        var="VIRTKIT_TEST_XEN_PV_${key#*:}"
        setenv "$var" "$("$PY" -c 'import json, sys; print(json.loads(sys.argv[1])[sys.argv[2]])' \
            "$json" "${key%%:*}")"
    done
    setenv VIRTKIT_TEST_XENSTORED_PATH "$XEN_SOCK"
    setenv VIRTKIT_TEST_XEN_DOM0 "$XEN_DOM0"
    setenv VIRTKIT_TEST_XEN_CONSOLE "$XEN_CONSOLE"
}

stop_xen() {
    local file comm
    for file in "$XEN_SOCAT_PIDFILE:socat" "$XEN_QEMU_PIDFILE:qemu-system-x86"; do
        comm=${file##*:} file=${file%:*}
        xen_pid_alive "$file" "$comm" || { rm -f "$file"; continue; }
        kill "$(cat "$file")" 2>/dev/null || true
        local deadline=$((SECONDS + 15))
        while xen_pid_alive "$file" "$comm" && ((SECONDS < deadline)); do sleep 0.2; done
        ! xen_pid_alive "$file" "$comm" || kill -9 "$(cat "$file")" 2>/dev/null || true
        rm -f "$file"
    done
    rm -f "$XEN_SOCK"
    # Its variables go too: tests then skip the nested Xen instead of failing on a dead socket.
    if [[ -f $ENV_FILE ]]; then
        grep -v -e '^export VIRTKIT_TEST_XENSTORED_PATH=' -e '^export VIRTKIT_TEST_XEN_' \
            "$ENV_FILE" >"$ENV_FILE.tmp" || true
        mv "$ENV_FILE.tmp" "$ENV_FILE"
    fi
}

status_xen() { xen_qemu_alive && xen_socat_alive && xen_store_up; }

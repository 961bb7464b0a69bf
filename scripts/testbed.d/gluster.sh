# shellcheck shell=bash
# -- GlusterFS (a one-brick volume; QEMU's native gluster access and a FUSE mount) ----------
#
# A private glusterd of this checkout: its working directory (the volume definitions), pid
# file, logs and the brick live under .testbed/gluster; nothing of /var/lib/glusterd is read or
# written. glusterd listens on 24007 (the port is fixed by the protocol: one per host). The
# volume is mounted (FUSE) at .testbed/gluster/mnt for tests that need it. Facts this follows
# are in shared/TESTBED.md (the brick needs `force`; stop order: unmount, volume stop, glusterd).

GL_DIR="$STATE/gluster"
GL_LIB="$GL_DIR/lib"
GL_BRICK="$GL_DIR/brick"
GL_MNT="$GL_DIR/mnt"
GL_PIDFILE="$GL_DIR/glusterd.pid"
GL_VOLFILE="$GL_DIR/glusterd.vol"
GL_VOLUME="${VIRTKIT_TEST_GLUSTER_VOLNAME:-virtkit-test}"

gluster_cli() { gluster --mode=script "$@" </dev/null; }

gluster_pid_alive() {  # the glusterd this checkout started (its pid file), not any other one
    local pid
    pid="$(cat "$GL_PIDFILE" 2>/dev/null)" || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] && [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == glusterd ]] &&
        ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null
}

live_glusterd_other() {  # a glusterd running that is not the test bed's (zombies do not count)
    local pid
    for pid in $(pgrep -x glusterd); do
        grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null || return 0
    done
    return 1
}

gluster_volume_started() {
    gluster_cli volume info "$GL_VOLUME" 2>/dev/null | grep -q '^Status: Started'
}

gluster_mounted() { mountpoint -q "$GL_MNT" 2>/dev/null; }

# libvirtd may run in a mount namespace of its own (scripts/testbed hides a broken /dev/kvm
# that way, with private propagation): a mount made here after it started is invisible to
# QEMU. The volume is then mounted a second time, at the same path, inside that namespace, so
# an instances_path on the mount is the same files for the driver and for QEMU.
GL_LIBVIRTD_PIDFILE=/run/libvirtd.pid

gluster_libvirtd_ns_pid() {  # libvirtd's pid, when its mount namespace is not ours
    local pid
    pid="$(cat "$GL_LIBVIRTD_PIDFILE" 2>/dev/null)" || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] && [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == libvirtd ]] ||
        return 1
    [[ "$(readlink "/proc/$pid/ns/mnt")" != "$(readlink /proc/self/ns/mnt)" ]] || return 1
    echo "$pid"
}

gluster_mounted_for_qemu() {  # true when QEMU sees the mount (or shares our namespace)
    local pid
    pid="$(gluster_libvirtd_ns_pid)" || return 0
    nsenter -t "$pid" -m mountpoint -q "$GL_MNT" 2>/dev/null
}

gluster_umount_other_namespaces() {
    # The FUSE clients of this mount point in other namespaces (also one whose libvirtd has
    # gone: its client keeps the namespace alive); found by their mount point argument.
    local pid
    for pid in $(pgrep -x glusterfs); do
        [[ "$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" == *" $GL_MNT " ]] || continue
        [[ "$(readlink "/proc/$pid/ns/mnt")" != "$(readlink /proc/self/ns/mnt)" ]] || continue
        nsenter -t "$pid" -m umount "$GL_MNT" 2>/dev/null ||
            nsenter -t "$pid" -m umount -l "$GL_MNT" 2>/dev/null || true
    done
}

start_gluster() {
    command -v glusterd >/dev/null || { log "glusterfs-server is not installed"; return 1; }
    command -v mount.glusterfs >/dev/null || [[ -x /sbin/mount.glusterfs ]] ||
        { log "glusterfs-client is not installed"; return 1; }
    mkdir -p "$GL_LIB" "$GL_BRICK" "$GL_MNT" "$GL_DIR/log"
    chmod 0711 "$GL_DIR"
    if ! gluster_pid_alive; then
        if live_glusterd_other; then
            log "another glusterd runs on this host (not the test bed's): stop it first"
            return 1
        fi
        sed "s|^\([[:space:]]*option working-directory\).*|\1 $GL_LIB|" \
            /etc/glusterfs/glusterd.vol >"$GL_VOLFILE"
        rm -f "$GL_PIDFILE"
        glusterd -f "$GL_VOLFILE" -p "$GL_PIDFILE" -l "$GL_DIR/log/glusterd.log" ||
            { log "glusterd did not start: $(tail -n 2 "$GL_DIR/log/glusterd.log")"; return 1; }
    fi
    wait_for 30 glusterd gluster_cli volume list || return 1
    if ! gluster_cli volume info "$GL_VOLUME" >/dev/null 2>&1; then
        # One node, a brick on a plain directory: gluster wants `force` for that.
        gluster_cli volume create "$GL_VOLUME" "$(hostname):$GL_BRICK" force >/dev/null ||
            { log "gluster volume create failed"; return 1; }
    fi
    if ! gluster_volume_started; then
        gluster_cli volume start "$GL_VOLUME" force >/dev/null ||
            { log "gluster volume start failed"; return 1; }
    fi
    if ! gluster_mounted; then
        wait_for 30 "gluster mount of $GL_VOLUME" \
            mount -t glusterfs -o "log-file=$GL_DIR/log/mnt.log" "127.0.0.1:/$GL_VOLUME" "$GL_MNT" ||
            return 1
    fi
    local pid
    if ! gluster_mounted_for_qemu && pid="$(gluster_libvirtd_ns_pid)"; then
        wait_for 30 "gluster mount of $GL_VOLUME in libvirtd's mount namespace" \
            nsenter -t "$pid" -m mount -t glusterfs -o "log-file=$GL_DIR/log/mnt-libvirtd.log" \
            "127.0.0.1:/$GL_VOLUME" "$GL_MNT" || return 1
    fi
    gluster_conformance_volume || return 1
    setenv VIRTKIT_TEST_GLUSTER_VOLUME "127.0.0.1:/$GL_VOLUME"
    setenv VIRTKIT_TEST_GLUSTER_MOUNT "$GL_MNT"
}

GL_CONFORMANCE_FILE=conformance-volume.raw

gluster_conformance_volume() {  # a 32 MiB raw file for the conformance suite, its JSON
    local info="$STATE/conformance-gluster-volume.json"
    if [[ ! -e "$GL_MNT/$GL_CONFORMANCE_FILE" ]]; then
        truncate -s 32M "$GL_MNT/$GL_CONFORMANCE_FILE" || return 1
    fi
    chmod 0666 "$GL_MNT/$GL_CONFORMANCE_FILE"  # QEMU opens it as its own user
    cat >"$info" <<EOF
{"driver_volume_type": "glusterfs", "serial": "conformance-gluster",
 "data": {"export": "127.0.0.1:/$GL_VOLUME", "name": "$GL_CONFORMANCE_FILE", "format": "raw"}}
EOF
    setenv VIRTKIT_CONFORMANCE_GLUSTER_VOLUME "$info"
}

stop_gluster() {
    if gluster_mounted; then
        umount "$GL_MNT" 2>/dev/null || umount -l "$GL_MNT" 2>/dev/null || true
    fi
    gluster_umount_other_namespaces
    # Mounts virtkit itself made under the tests' instances paths are the tests' to remove.
    if gluster_pid_alive; then
        gluster_volume_started && gluster_cli volume stop "$GL_VOLUME" force >/dev/null 2>&1
        kill "$(<"$GL_PIDFILE")" 2>/dev/null || true
        local deadline=$((SECONDS + 15))
        while gluster_pid_alive && ((SECONDS < deadline)); do sleep 0.2; done
        ! gluster_pid_alive || kill -9 "$(<"$GL_PIDFILE")" 2>/dev/null || true
    fi
    rm -f "$GL_PIDFILE"
}

status_gluster() {
    gluster_pid_alive && gluster_volume_started && gluster_mounted && gluster_mounted_for_qemu
}

SERVICES+=(gluster)

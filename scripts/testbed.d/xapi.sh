# shellcheck shell=bash
# -- XAPI simulator (XCP-ng / XenServer's toolstack API) -------------------------------------
#
# XAPI cannot run here: the tests drive tests/xapi_sim, which serves XenAPI's XML-RPC over
# HTTPS on 127.0.0.1 (a self-signed certificate made with openssl, kept in .testbed/xapi) to
# the real XenAPI SDK. Exports:
#   VIRTKIT_TEST_XENAPI_URL            https://127.0.0.1:<port>/
#   VIRTKIT_TEST_XENAPI_USER           root
#   VIRTKIT_TEST_XENAPI_PASSWORD_FILE  the generated password, a 0600 file (never in argv/env)
#   VIRTKIT_TEST_XENAPI_CA_FILE        the certificate to verify the URL with
# When the nested Xen's store is up (the xen service) the simulator's dom0 plugins and domain
# trees use that real xenstored, with domids from 1000 (clear of the real domains); an `up`
# after the Xen store came or went restarts it so. Log: .testbed/log/xapi.log.

XAPI_DIR="$STATE/xapi"
XAPI_PIDFILE="$XAPI_DIR/xapi-sim.pid"
XAPI_URLFILE="$XAPI_DIR/url"
XAPI_PWFILE="$XAPI_DIR/password"
XAPI_STOREFILE="$XAPI_DIR/xenstore"  # the store the running simulator was started with
XAPI_CA="$XAPI_DIR/tls/xapi-cert.pem"

xapi_py() { (cd "$ROOT" && PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PY" "$@"); }

xapi_pid_alive() {  # the simulator this checkout started (its pid file), not any other process
    local pid
    pid="$(cat "$XAPI_PIDFILE" 2>/dev/null)" || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null &&
        grep -q 'tests\.xapi_sim' "/proc/$pid/cmdline" 2>/dev/null &&
        ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null
}

xapi_up() {
    xapi_pid_alive && [[ -s $XAPI_URLFILE ]] &&
        xapi_py -m tests.xapi_sim --check --url-file "$XAPI_URLFILE" \
            --password-file "$XAPI_PWFILE" --ca-file "$XAPI_CA" 2>/dev/null
}

xapi_wanted_store() {  # the nested Xen's xenstored socket when it answers, else nothing
    if declare -F xen_store_up >/dev/null && [[ -n ${XEN_SOCK:-} ]] && xen_store_up; then
        printf '%s' "$XEN_SOCK"
    fi
}

start_xapi() {
    [[ -x "$PY" ]] || { log "xapi: no python at $PY (make venv)"; return 1; }
    xapi_py -c 'import XenAPI' 2>/dev/null ||
        { log "xapi: the XenAPI SDK is not installed (pip install -e '.[test]')"; return 1; }
    mkdir -p "$XAPI_DIR" && chmod 0700 "$XAPI_DIR"
    local store
    store="$(xapi_wanted_store)"
    if xapi_up && [[ "$(cat "$XAPI_STOREFILE" 2>/dev/null)" == "$store" ]]; then
        xapi_export
        return 0
    fi
    stop_xapi_process
    if [[ ! -s $XAPI_PWFILE ]]; then
        (umask 077 && head -c 24 /dev/urandom | base64 | tr -d '/+=\n' >"$XAPI_PWFILE")
    fi
    chmod 0600 "$XAPI_PWFILE"
    rm -f "$XAPI_URLFILE"
    local args=(--host 127.0.0.1 --port 0 --user root --password-file "$XAPI_PWFILE"
        --url-file "$XAPI_URLFILE" --tls-dir "$XAPI_DIR/tls" --suspend-sr)
    [[ -z $store ]] || args+=(--xenstore "$store" --first-domid 1000)
    printf '%s' "$store" >"$XAPI_STOREFILE"
    PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" nohup "$PY" -m tests.xapi_sim "${args[@]}" \
        </dev/null >>"$STATE/log/xapi.log" 2>&1 &
    echo $! >"$XAPI_PIDFILE"
    wait_for 30 "xapi simulator" xapi_up ||
        { log "xapi: $(tail -n 3 "$STATE/log/xapi.log" 2>/dev/null)"; return 1; }
    xapi_export
}

xapi_export() {
    setenv VIRTKIT_TEST_XENAPI_URL "$(cat "$XAPI_URLFILE")"
    setenv VIRTKIT_TEST_XENAPI_USER root
    setenv VIRTKIT_TEST_XENAPI_PASSWORD_FILE "$XAPI_PWFILE"
    setenv VIRTKIT_TEST_XENAPI_CA_FILE "$XAPI_CA"
}

stop_xapi_process() {
    if xapi_pid_alive; then
        local pid deadline=$((SECONDS + 10))
        pid="$(cat "$XAPI_PIDFILE")"
        kill "$pid" 2>/dev/null || true
        while xapi_pid_alive && ((SECONDS < deadline)); do sleep 0.2; done
        ! xapi_pid_alive || kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$XAPI_PIDFILE" "$XAPI_URLFILE" "$XAPI_STOREFILE"
}

stop_xapi() {
    stop_xapi_process
    # Its variables go too: tests then skip instead of failing on a dead URL.
    if [[ -f $ENV_FILE ]]; then
        grep -v -e '^export VIRTKIT_TEST_XENAPI_' "$ENV_FILE" >"$ENV_FILE.tmp" || true
        mv "$ENV_FILE.tmp" "$ENV_FILE"
    fi
}

status_xapi() { xapi_up; }

SERVICES+=(xapi)

# Shared by benches/compare_etcd.sh and benches/scale.sh (sourced, not run).
# The caller defines log() and die() and sets $repo (the repository root).

# ensure_etcd [HINT]: installs Debian's etcd-server and etcd-client when etcd
# or etcdctl is missing (apt-get, through sudo when not root); HINT is added
# to the error when that cannot be done. Prints nothing on success.
ensure_etcd() {
    command -v etcd >/dev/null && command -v etcdctl >/dev/null && return 0
    log "installing etcd (apt-get install etcd-server etcd-client)"
    local sudo=""
    if [[ "$(id -u)" != 0 ]]; then
        command -v sudo >/dev/null || die "etcd is not installed and this is not root (no sudo)${1:+; $1}"
        sudo="sudo"
    fi
    # On a machine with systemd the package also starts its own etcd service
    # on 2379/2380; it is not ours, and the scripts leave it alone.
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq etcd-server etcd-client >/dev/null
}

# etcd_version: the installed etcd's version, e.g. 3.4.23.
etcd_version() {
    etcd --version 2>/dev/null | sed -n 1p | sed 's/^etcd Version: //'
}

# resolve_raftkv: sets RAFTKV_BIN (a release build of this repository unless
# it is set already), raftkv_version, and git_rev (+changes when the tree has
# uncommitted changes to tracked files).
resolve_raftkv() {
    if [[ -z "${RAFTKV_BIN:-}" ]]; then
        log "building raftkv (cargo build --release)"
        (cd "$repo" && cargo build --release --quiet)
        RAFTKV_BIN="${CARGO_TARGET_DIR:-$repo/target}/release/raftkv"
    fi
    [[ -x "$RAFTKV_BIN" ]] || die "no raftkv binary at $RAFTKV_BIN"
    raftkv_version="$("$RAFTKV_BIN" --version 2>/dev/null || echo raftkv)"
    git_rev="$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    if [[ -n "$(git -C "$repo" status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
        git_rev="$git_rev+changes"
    fi
}

# port_busy PORT: true when something listens on 127.0.0.1:PORT.
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# cluster_ports RAFTKV_BASE ETCD_BASE: sets raft_ports (base..+2),
# etcd_client (base..+2) and etcd_peer (base+10..+12), and dies when one of
# them is in use.
cluster_ports() {
    raft_ports=() etcd_client=() etcd_peer=()
    local i p
    for i in 0 1 2; do
        raft_ports+=($(($1 + i)))
        etcd_client+=($(($2 + i)))
        etcd_peer+=($(($2 + 10 + i)))
    done
    for p in "${raft_ports[@]}" "${etcd_client[@]}" "${etcd_peer[@]}"; do
        port_busy "$p" && die "port $p is in use (set RAFTKV_PORT / ETCD_PORT)"
    done
    return 0
}

# start_etcd_member I DIR STATE TOKEN LOG: starts member I (0..2) of a
# 3-member etcd on the etcd_client/etcd_peer ports, its data in DIR/etcd-N,
# in the background, appending to LOG; the caller takes its PID from $!.
start_etcd_member() {
    local i="$1" dir="$2" state="$3" token="$4" logfile="$5" n=$(($1 + 1)) initial="" j
    for j in 0 1 2; do
        initial+="${initial:+,}etcd-$((j + 1))=http://127.0.0.1:${etcd_peer[j]}"
    done
    etcd --name "etcd-$n" --data-dir "$dir/etcd-$n" \
        --listen-client-urls "http://127.0.0.1:${etcd_client[i]}" \
        --advertise-client-urls "http://127.0.0.1:${etcd_client[i]}" \
        --listen-peer-urls "http://127.0.0.1:${etcd_peer[i]}" \
        --initial-advertise-peer-urls "http://127.0.0.1:${etcd_peer[i]}" \
        --initial-cluster "$initial" --initial-cluster-state "$state" \
        --initial-cluster-token "$token" --logger zap --log-level warn \
        >>"$logfile" 2>&1 &
}

# stop_pid PID: SIGTERM, up to 10 s to exit, then SIGKILL; reaps it.
stop_pid() {
    local pid="$1"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# --- added for benches/watch_load.sh (used by no other script) --------------

# raftkv_ports BASE: sets raft_ports (BASE..BASE+2) and dies when one of them
# is in use.
raftkv_ports() {
    raft_ports=()
    local i
    for i in 0 1 2; do
        raft_ports+=($(($1 + i)))
        port_busy "$(($1 + i))" && die "port $(($1 + i)) is in use (set RAFTKV_PORT)"
    done
    return 0
}

# start_raftkv_node I DIR [FLAGS...]: starts node I (0..2) of a 3-node
# cluster on the raft_ports, its data in DIR/raftkv-N and its log in
# DIR/raftkv-N.log, in the background; the caller takes its PID from $!.
start_raftkv_node() {
    local i="$1" dir="$2" n=$(($1 + 1)) peers="" j
    shift 2
    for j in 0 1 2; do
        ((j == i)) && continue
        peers+="${peers:+,}node-$((j + 1))=127.0.0.1:${raft_ports[j]}"
    done
    RUST_LOG=warn "$RAFTKV_BIN" start --node-id "node-$n" --port "${raft_ports[i]}" \
        --peers "$peers" --data-dir "$dir/raftkv-$n" "$@" \
        >"$dir/raftkv-$n.log" 2>&1 &
}

# vm_rss_kib PID: the process's resident memory in KiB (VmRSS), or "-".
vm_rss_kib() {
    awk '/^VmRSS:/ {print $2; found = 1} END {if (!found) print "-"}' "/proc/$1/status" 2>/dev/null || echo -
}

# settle_disk: writes back what earlier loads left dirty in the page cache
# and waits (at most 5 s) for the kernel's write-back, then 1 s more, so no
# load pays for the write-back of the one before.
settle_disk() {
    sync
    local tries=0
    while ((tries < 50)) &&
        (($(awk '/^(Dirty|Writeback):/ {s += $2} END {print s + 0}' /proc/meminfo) > 4096)); do
        sleep 0.1
        tries=$((tries + 1))
    done
    sleep 1
}

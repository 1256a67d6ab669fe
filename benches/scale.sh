#!/usr/bin/env bash
# How RaftKV's costs grow with its data, next to etcd's (issue 8).
#
# For each size in SIZES: starts a 3-node RaftKV cluster (release build,
# default flags: fsync on, default snapshot threshold and cache) on
# 127.0.0.1, writes N keys of VALUE_SIZE-byte values once each through the
# HTTP API (`raftkv bench -w get`, whose pre-population writes every key
# exactly once), sampling every node's VmRSS meanwhile, and measures:
#   - peak (VmHWM) and steady (VmRSS after the load settled) RSS per node;
#   - data dir size per node against the raw size (keys + values);
#   - kill -9 of a follower + restart → serving (GET /health, then a stale
#     read of a loaded key answering from that node);
#   - a follower whose data dir was wiped → caught up through InstallSnapshot
#     (its applied index reaches the leader's), with the leader's "snapshot
#     delivered" time from its log;
#   - client p99 of a short put load without and while that snapshot is sent.
# Then the same for a 3-member etcd (same disk, loaded with
# `raftkv bench --target etcd`): RSS, data dir size and restart time.
# Prints one Markdown table and writes it to benches/results/scale-latest.md.
#
#   benches/scale.sh                   # SIZES="100000 1000000"
#   QUICK=1 benches/scale.sh           # SIZES=20000, a smoke test (~2 min)
#   SIZES="100000 1000000 5000000" benches/scale.sh
#
# Environment:
#   SIZES="100000 1000000"  key counts (QUICK=1: 20000)
#   VALUE_SIZE=100  KEY_SIZE=16
#   ETCD=1               0 skips etcd
#   RAFTKV_BIN=path      use this binary instead of `cargo build --release`
#   RAFTKV_EXTRA="..."   extra `raftkv start` flags (e.g. "--cache-mb 32")
#   BENCH_DIR=dir        where the temporary data dir goes (default: $TMPDIR or /tmp)
#   OUT=file             default benches/results/scale-latest.md
#   RAFTKV_PORT=28101    raftkv uses RAFTKV_PORT..+2 (compare_etcd.sh uses 28001..)
#   ETCD_PORT=23890      etcd uses ETCD_PORT..+2 and +10..+12 (compare_etcd.sh: 23790..)
#   LOAD_TIMEOUT=3600    seconds allowed to load one size
#   KEEP=1               keep the temporary dir (data and logs)
#
# Needs: Linux (/proc), bash, curl, du, cargo (unless RAFTKV_BIN), root or
# sudo for apt-get when etcd is not installed and ETCD=1.

set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"

if [[ "${QUICK:-0}" == 1 ]]; then
    SIZES="${SIZES:-20000}"
else
    SIZES="${SIZES:-100000 1000000}"
fi
VALUE_SIZE="${VALUE_SIZE:-100}"
KEY_SIZE="${KEY_SIZE:-16}"
ETCD="${ETCD:-1}"
OUT="${OUT:-$repo/benches/results/scale-latest.md}"
RAFTKV_PORT="${RAFTKV_PORT:-28101}"
ETCD_PORT="${ETCD_PORT:-23890}"
LOAD_TIMEOUT="${LOAD_TIMEOUT:-3600}"
read -r -a RAFTKV_EXTRA_ARGS <<<"${RAFTKV_EXTRA:-}"
# `raftkv bench` pre-populates at most this many keys per run.
CHUNK=1000000

log() { printf '[scale %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ -r /proc/self/status ]] || die "needs Linux (/proc) to measure memory"
command -v curl >/dev/null || die "needs curl"

# shellcheck source=benches/lib.sh
source "$here/lib.sh"

# --- etcd and raftkv ----------------------------------------------------------
etcd_version=""
if [[ "$ETCD" == 1 ]]; then
    ensure_etcd "ETCD=0 skips it"
    etcd_version="$(etcd_version)"
fi
resolve_raftkv

# --- ports ------------------------------------------------------------------
cluster_ports "$RAFTKV_PORT" "$ETCD_PORT"
raft_nodes="$(printf 'http://127.0.0.1:%s,' "${raft_ports[@]}")"
raft_nodes="${raft_nodes%,}"
etcd_endpoints="$(printf 'http://127.0.0.1:%s,' "${etcd_client[@]}")"
etcd_endpoints="${etcd_endpoints%,}"

# --- everything we start is stopped on exit, by PID -------------------------
work="$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/raftkv-scale.XXXXXX")"
declare -A server_pid=() # name -> PID of a running server we started
sampler_pid=""
bench_pid=""
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    [[ -n "$sampler_pid" ]] && stop_pid "$sampler_pid"
    [[ -n "$bench_pid" ]] && stop_pid "$bench_pid"
    if ((${#server_pid[@]})); then
        log "stopping ${#server_pid[@]} server processes"
        for name in "${!server_pid[@]}"; do stop_pid "${server_pid[$name]}"; done
    fi
    if [[ "${KEEP:-0}" == 1 ]]; then
        log "kept $work"
    else
        rm -rf "$work"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- measuring helpers ------------------------------------------------------
now_ms() { echo $(($(date +%s%N) / 1000000)); }
kb_of() { awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
mb() { awk -v k="$1" 'BEGIN {printf "%.0f", k / 1024}'; }
mb1() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }
dir_bytes() { du -sb "$1" 2>/dev/null | cut -f1; }
secs() { awk -v ms="$1" 'BEGIN {printf "%.2f", ms / 1000}'; }
http_get() { curl -s --max-time "${2:-2}" "$1"; }
json_num() { grep -o "\"$1\":[0-9]*" | sed -n 1p | cut -d: -f2; }

# Samples VmRSS of the given PIDs every 0.5 s into FILE ("pid kb" lines),
# for at most LOAD_TIMEOUT + 600 s.
start_sampler() { # file pid...
    local file="$1"
    shift
    (
        for _ in $(seq 1 $((2 * (LOAD_TIMEOUT + 600)))); do
            for pid in "$@"; do
                echo "$pid $(kb_of "$pid" VmRSS)"
            done
            sleep 0.5
        done
    ) >>"$file" 2>/dev/null &
    sampler_pid=$!
}
# Fills the caller's `peak`, `steady` and `disk` arrays (MB, MB, bytes) for
# the three processes in the caller's `pids`, whose data dirs are
# $dir/$1-1..3; peak is the larger of VmHWM and the sampler's maximum (in the
# caller's `samples`).
measure_usage() {
    local name=$1 i hwm sampled
    for i in 0 1 2; do
        hwm="$(kb_of "${pids[i]}" VmHWM)"
        sampled="$(sampled_max_kb "$samples" "${pids[i]}")"
        if ((sampled > hwm)); then hwm=$sampled; fi
        peak+=("$(mb "$hwm")")
        steady+=("$(mb "$(kb_of "${pids[i]}" VmRSS)")")
        disk+=("$(dir_bytes "$dir/$name-$((i + 1))")")
    done
}

stop_sampler() {
    [[ -n "$sampler_pid" ]] && stop_pid "$sampler_pid"
    sampler_pid=""
}
sampled_max_kb() { awk -v p="$2" '$1 == p && $2 > m {m = $2} END {print m + 0}' "$1"; }

# Waits until COMMAND succeeds; fails after SECS. Checks that our servers live.
wait_until() { # what secs command...
    local what="$1" secs="$2"
    shift 2
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || {
            tail -n 20 "$work"/*.log >&2 || true
            die "$what: not within ${secs}s"
        }
        for name in "${!server_pid[@]}"; do
            kill -0 "${server_pid[$name]}" 2>/dev/null || {
                tail -n 30 "$work/$name.log" >&2 || true
                die "server $name (PID ${server_pid[$name]}) exited"
            }
        done
        sleep 0.2
    done
}

# Loads N keys (each written once) into SYSTEM with `raftkv bench`.
load_keys() { # system n
    local system="$1" n="$2" done_keys=0 part=0 target
    if [[ $system == etcd ]]; then
        target=(--target etcd --endpoints "$etcd_endpoints")
    else
        target=(--target raftkv --nodes "$raft_nodes")
    fi
    while ((done_keys < n)); do
        local count=$((n - done_keys))
        if ((count > CHUNK)); then count=$CHUNK; fi
        "$RAFTKV_BIN" bench "${target[@]}" -w get --keys "$count" --ops 1 --duration 10 \
            --key-prefix "s$part-" --key-size "$KEY_SIZE" --value-size "$VALUE_SIZE" \
            --connections 64 --populate-timeout "$LOAD_TIMEOUT" --json \
            >>"$work/load-$system.jsonl" 2>>"$work/load-$system.err" ||
            die "loading $system failed: $(tail -n 3 "$work/load-$system.err")"
        done_keys=$((done_keys + count))
        part=$((part + 1))
    done
}
# The first key of the load, as `raftkv bench` names it (prefix, zero-padded).
first_key() { local p="s0-"; printf '%s%0*d' "$p" $((KEY_SIZE - ${#p})) 0; }

# p99 (ms) of a short put load on the RaftKV leader.
put_p99() { # seconds
    "$RAFTKV_BIN" bench --nodes "$raft_nodes" -w put --connections 16 --duration "$1" \
        --keys 10000 --key-prefix "p99/" --value-size "$VALUE_SIZE" --json 2>/dev/null |
        grep -o '"p99":[0-9.]*' | sed -n 1p | cut -d: -f2
}

# --- RaftKV -----------------------------------------------------------------
start_raftkv() { # i (0-based) dir
    local i="$1" dir="$2" n=$(($1 + 1)) peers=""
    for j in 0 1 2; do
        ((j == i)) && continue
        peers+="${peers:+,}node-$((j + 1))=127.0.0.1:${raft_ports[j]}"
    done
    RUST_LOG="${RUST_LOG:-info}" "$RAFTKV_BIN" start --node-id "node-$n" --port "${raft_ports[i]}" \
        --peers "$peers" --data-dir "$dir/node-$n" "${RAFTKV_EXTRA_ARGS[@]}" \
        >>"$work/raftkv-$n.log" 2>&1 &
    server_pid[raftkv-$n]=$!
}
status_of() { http_get "http://127.0.0.1:${raft_ports[$1]}/cluster/status"; }
applied_of() { status_of "$1" | json_num applied_index; }
leader_index() { # prints the 0-based index of the leader, per node 0's view
    local id
    for i in 0 1 2; do
        id="$(status_of "$i" | grep -o '"leader_id":"[^"]*"' | cut -d'"' -f4)" || true
        [[ -n "$id" ]] && { echo $((${id#node-} - 1)); return 0; }
    done
    return 1
}
serving_stale() { # i key
    local code
    code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 \
        "http://127.0.0.1:${raft_ports[$1]}/kv/$2?consistency=stale")"
    [[ "$code" == 200 ]]
}
healthy() { [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$1")" == 200 ]]; }
all_applied() { # target
    local a
    for i in 0 1 2; do
        a="$(applied_of "$i")" || return 1
        [[ -n "$a" ]] && ((a >= $1)) || return 1
    done
}

rows=()
measure_raftkv() { # n
    local n="$1" dir="$work/raftkv-$1" samples="$work/rss-raftkv-$1"
    mkdir -p "$dir"
    for i in 0 1 2; do start_raftkv "$i" "$dir"; done
    wait_until "raftkv leader" 60 "$RAFTKV_BIN" leader --nodes "$raft_nodes" --timeout-ms 2000
    local pids=("${server_pid[raftkv-1]}" "${server_pid[raftkv-2]}" "${server_pid[raftkv-3]}")
    start_sampler "$samples" "${pids[@]}"
    log "raftkv: loading $n keys"
    local t0
    t0=$(now_ms)
    load_keys raftkv "$n"
    local load_ms=$(($(now_ms) - t0))
    local leader
    leader="$(leader_index)" || die "no leader after the load"
    local target
    target="$(applied_of "$leader")"
    wait_until "followers applying" 120 all_applied "$target"
    sleep 5 # let sled's flusher and GC settle
    stop_sampler
    local peak=() steady=() disk=()
    measure_usage node
    local raw=$((n * (KEY_SIZE + VALUE_SIZE)))
    local compactions
    compactions="$(grep -c 'snapshot taken, log compacted' "$work/raftkv-$((leader + 1)).log" || true)"
    # Longest compaction on the leader (the loop is busy for that long).
    local compact_max_ms
    compact_max_ms="$(grep 'snapshot taken, log compacted' "$work/raftkv-$((leader + 1)).log" \
        | sed -n 's/.* ms=\([0-9]*\).*/\1/p' | sort -n | tail -1)"
    log "raftkv $n: loaded in $(secs "$load_ms") s; peak RSS ${peak[*]} MB; steady ${steady[*]} MB; dirs ${disk[*]} B"

    # kill -9 a follower, restart it: time to /health and to a stale read.
    local f=$(((leader + 1) % 3)) key
    key="$(first_key)"
    serving_stale "$f" "$key" || die "key $key not readable on node-$((f + 1)) before the restart"
    kill -KILL "${server_pid[raftkv-$((f + 1))]}"
    wait "${server_pid[raftkv-$((f + 1))]}" 2>/dev/null || true
    t0=$(now_ms)
    start_raftkv "$f" "$dir"
    wait_until "restart: /health" 120 healthy "http://127.0.0.1:${raft_ports[f]}/health"
    local health_ms=$(($(now_ms) - t0))
    wait_until "restart: stale read" 120 serving_stale "$f" "$key"
    local serve_ms=$(($(now_ms) - t0))
    log "raftkv $n: restart → /health $(secs "$health_ms") s, → stale read $(secs "$serve_ms") s"

    # p99 of a short put load, without a snapshot transfer...
    local p99_base p99_snap
    p99_base="$(put_p99 5)"
    # ...then a wiped follower catching up through InstallSnapshot, with the
    # same load running meanwhile.
    f=$(((leader + 2) % 3))
    kill -KILL "${server_pid[raftkv-$((f + 1))]}"
    wait "${server_pid[raftkv-$((f + 1))]}" 2>/dev/null || true
    rm -rf "$dir/node-$((f + 1))"
    target="$(applied_of "$leader")"
    local before_sent
    before_sent="$(grep -c 'snapshot delivered' "$work/raftkv-$((leader + 1)).log" || true)"
    t0=$(now_ms)
    start_raftkv "$f" "$dir"
    put_p99 5 >"$work/p99-snap" &
    bench_pid=$!
    wait_until "wiped follower catching up" 600 all_applied "$target"
    local catchup_ms=$(($(now_ms) - t0))
    wait "$bench_pid" || true
    bench_pid=""
    p99_snap="$(cat "$work/p99-snap")"
    local sent_ms
    sent_ms="$(grep 'snapshot delivered' "$work/raftkv-$((leader + 1)).log" | tail -n +$((before_sent + 1)) |
        grep -o 'ms=[0-9]*' | sed -n 1p | cut -d= -f2)"
    log "raftkv $n: wiped follower caught up in $(secs "$catchup_ms") s (snapshot sent in ${sent_ms:-?} ms); put p99 ${p99_base} ms → ${p99_snap} ms"

    rows+=("| raftkv | $n | $(mb1 $((raw / 1024))) | ${peak[*]} | ${steady[*]} | $(printf '%s ' "${disk[@]}" | awk -v r="$raw" '{for (i = 1; i <= NF; i++) printf "%s%.0f (%.1f×)", (i > 1 ? " / " : ""), $i / 1048576, $i / r}') | $(secs "$load_ms") | $(secs "$serve_ms") ($(secs "$health_ms")) | $(secs "$catchup_ms") (sent ${sent_ms:-?} ms) | ${compactions} (max ${compact_max_ms:-?} ms) | ${p99_base:-?} → ${p99_snap:-?} |")
    for i in 1 2 3; do
        stop_pid "${server_pid[raftkv-$i]}"
        unset "server_pid[raftkv-$i]"
    done
    rm -rf "$dir"
}

# --- etcd -------------------------------------------------------------------
start_etcd() { # i dir state
    start_etcd_member "$1" "$2" "$3" "scale-$$" "$work/etcd-$(($1 + 1)).log"
    server_pid[etcd-$(($1 + 1))]=$!
}
measure_etcd() { # n
    local n="$1" dir="$work/etcd-$1" samples="$work/rss-etcd-$1"
    mkdir -p "$dir"
    for i in 0 1 2; do start_etcd "$i" "$dir" new; done
    wait_until "etcd" 60 env ETCDCTL_API=3 etcdctl --endpoints "$etcd_endpoints" \
        --command-timeout=2s endpoint health
    local pids=("${server_pid[etcd-1]}" "${server_pid[etcd-2]}" "${server_pid[etcd-3]}")
    start_sampler "$samples" "${pids[@]}"
    log "etcd: loading $n keys"
    local t0
    t0=$(now_ms)
    load_keys etcd "$n"
    local load_ms=$(($(now_ms) - t0))
    sleep 5
    stop_sampler
    local peak=() steady=() disk=()
    measure_usage etcd
    local raw=$((n * (KEY_SIZE + VALUE_SIZE)))
    # kill -9 member 3 and restart it: time to its /health answering 200.
    kill -KILL "${server_pid[etcd-3]}"
    wait "${server_pid[etcd-3]}" 2>/dev/null || true
    t0=$(now_ms)
    start_etcd 2 "$dir" existing
    wait_until "etcd restart" 120 healthy "http://127.0.0.1:${etcd_client[2]}/health"
    local restart_ms=$(($(now_ms) - t0))
    log "etcd $n: loaded in $(secs "$load_ms") s; peak RSS ${peak[*]} MB; steady ${steady[*]} MB; restart $(secs "$restart_ms") s"
    rows+=("| etcd | $n | $(mb1 $((raw / 1024))) | ${peak[*]} | ${steady[*]} | $(printf '%s ' "${disk[@]}" | awk -v r="$raw" '{for (i = 1; i <= NF; i++) printf "%s%.0f (%.1f×)", (i > 1 ? " / " : ""), $i / 1048576, $i / r}') | $(secs "$load_ms") | $(secs "$restart_ms") | – | – | – |")
    for i in 1 2 3; do
        stop_pid "${server_pid[etcd-$i]}"
        unset "server_pid[etcd-$i]"
    done
    rm -rf "$dir"
}

for n in $SIZES; do
    [[ "$n" =~ ^[0-9]+$ ]] && ((n > 0)) || die "bad size $n in SIZES"
    measure_raftkv "$n"
    if [[ "$ETCD" == 1 ]]; then measure_etcd "$n"; fi
done

# --- the table --------------------------------------------------------------
cpu_model="$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//' || true)"
mem="$(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo 2>/dev/null || true)"
fs="$(df -PT "$work" 2>/dev/null | awk 'NR == 2 {print $2 " on " $1}' || true)"
report="$(
    cat <<EOF
## Scale: $(date -u '+%Y-%m-%d %H:%M UTC')

- Machine: ${cpu_model:-unknown CPU}, $(nproc) cores, ${mem:-? RAM}, Linux $(uname -r); every data dir on ${fs:-the same disk}.
- ${raftkv_version} @ ${git_rev} (3 nodes, release build, default flags${RAFTKV_EXTRA:+ + $RAFTKV_EXTRA})${etcd_version:+ vs etcd $etcd_version (3 members, defaults)}, all on 127.0.0.1.
- Each key written once through the HTTP API by \`raftkv bench\` (64 connections, to the leader); ${KEY_SIZE}-byte keys, ${VALUE_SIZE}-byte values; raw = keys + values.
- RSS per node (MB, node 1 / 2 / 3): peak = max(VmHWM, VmRSS sampled every 0.5 s) during the load; steady = VmRSS 5 s after every node applied everything.
- Restart: kill -9 of a follower, then time from its start to a stale read of a loaded key answering 200 on it (in brackets: to GET /health = 200). etcd: to its /health = 200.
- Wiped follower: data dir deleted, node restarted; time until its applied index reaches the leader's (InstallSnapshot); "sent" is the leader's own transfer time from its log.
- Snapshots: compactions (snapshot taken, log compacted) on the leader during the load, with the longest one's duration; put p99 (16 connections, 5 s) without → while the wiped follower receives its snapshot.

| system | keys | raw MB | peak RSS MB | steady RSS MB | data dir MB (× raw) | load s | restart s | wiped catch-up s | compactions | put p99 ms |
|---|---:|---:|---|---|---|---:|---:|---|---:|---|
$(printf '%s\n' "${rows[@]}")
EOF
)"
mkdir -p "$(dirname "$OUT")"
printf '%s\n' "$report" >"$OUT"
printf '%s\n' "$report"
log "written to $OUT"

#!/usr/bin/env bash
# RaftKV vs etcd, side by side, on this machine.
#
# Starts a 3-member etcd (Debian's etcd-server, installed if missing) and a
# 3-node RaftKV (release build), both on 127.0.0.1, both with their data in
# one temporary directory (so on the same disk) and both with their default
# fsync-before-acknowledge durability. Then runs identical `raftkv bench`
# loads against each -- puts and linearizable gets of 100-byte values at 1,
# 16, 64 and 256 connections, sent to the leader -- measuring the servers'
# CPU time with --pids, stops everything it started (by PID), and prints a
# side-by-side table with raftkv/etcd ratios, also written to
# benches/results/latest.md.
#
#   benches/compare_etcd.sh             # 10 s per load (about 4 minutes)
#   QUICK=1 benches/compare_etcd.sh     # 2 s per load, a smoke test
#
# Environment:
#   DURATION=10          seconds measured per load (QUICK=1: 2)
#   WARMUP=1             seconds of unmeasured load before each (QUICK=1: 0.5)
#   CONNECTIONS="1 16 64 256"
#   WORKLOADS="put get"  any of put get mixed cas
#   PACED="put:16"       WORKLOAD:CONNS loads run once more at a fixed offered
#                        rate (--rate), PACED_FRACTION (0.8) of the ops/s etcd
#                        reached on that load, so both carry the same work;
#                        "" for none
#   STALL_PROBE=1        run every load with --stall-probe (0: without)
#   ORDER="etcd raftkv"  which system takes each load first ("raftkv etcd")
#   VALUE_SIZE=100  KEYS=1000
#   RAFTKV_BIN=path      use this binary instead of `cargo build --release`
#   BENCH_DIR=dir        where the temporary data dir goes (default: $TMPDIR or /tmp)
#   OUT=file             default benches/results/latest.md
#   ETCD_PORT=23790      etcd uses ETCD_PORT..+2 (clients) and +10..+12 (peers)
#   RAFTKV_PORT=28001    raftkv uses RAFTKV_PORT..+2
#   KEEP=1               keep the temporary dir (data and logs)
#
# Needs: Linux (/proc), bash, cargo (unless RAFTKV_BIN), root or sudo for
# apt-get when etcd is not installed.

set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"

if [[ "${QUICK:-0}" == 1 ]]; then
    DURATION="${DURATION:-2}"
    WARMUP="${WARMUP:-0.5}"
else
    DURATION="${DURATION:-10}"
    WARMUP="${WARMUP:-1}"
fi
CONNECTIONS="${CONNECTIONS:-1 16 64 256}"
PACED="${PACED-put:16}"
PACED_FRACTION="${PACED_FRACTION:-0.8}"
STALL_PROBE="${STALL_PROBE:-1}"
ORDER="${ORDER:-etcd raftkv}"
[[ "$ORDER" == "etcd raftkv" || "$ORDER" == "raftkv etcd" ]] ||
    { echo "ORDER must be \"etcd raftkv\" or \"raftkv etcd\"" >&2; exit 2; }
WORKLOADS="${WORKLOADS:-put get}"
VALUE_SIZE="${VALUE_SIZE:-100}"
KEYS="${KEYS:-1000}"
OUT="${OUT:-$repo/benches/results/latest.md}"
ETCD_PORT="${ETCD_PORT:-23790}"
RAFTKV_PORT="${RAFTKV_PORT:-28001}"

log() { printf '[compare] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ -r /proc/self/stat ]] || die "needs Linux (/proc) to measure CPU time"

# shellcheck source=benches/lib.sh
source "$here/lib.sh"

# --- etcd and raftkv ----------------------------------------------------------
ensure_etcd
etcd_version="$(etcd_version)"
resolve_raftkv
"$RAFTKV_BIN" bench --help >/dev/null 2>&1 ||
    die "$RAFTKV_BIN has no 'bench' subcommand"

# --- ports ------------------------------------------------------------------
cluster_ports "$RAFTKV_PORT" "$ETCD_PORT"

# --- everything we start is stopped on exit, by PID -------------------------
work="$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/raftkv-vs-etcd.XXXXXX")"
pids=()
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if ((${#pids[@]})); then
        log "stopping ${#pids[@]} server processes"
        for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
        for pid in "${pids[@]}"; do stop_pid "$pid"; done
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

# --- start the clusters -----------------------------------------------------
etcd_pids=()
for i in 0 1 2; do
    start_etcd_member "$i" "$work" new "bench-$$" "$work/etcd-$((i + 1)).log"
    pids+=($!)
    etcd_pids+=($!)
done
etcd_endpoints="$(printf 'http://127.0.0.1:%s,' "${etcd_client[@]}")"
etcd_endpoints="${etcd_endpoints%,}"

raft_pids=()
for i in 0 1 2; do
    n=$((i + 1))
    peers=""
    for j in 0 1 2; do
        ((j == i)) && continue
        peers+="${peers:+,}node-$((j + 1))=127.0.0.1:${raft_ports[j]}"
    done
    RUST_LOG=warn "$RAFTKV_BIN" start --node-id "node-$n" --port "${raft_ports[i]}" \
        --peers "$peers" --data-dir "$work/raftkv-$n" \
        >"$work/raftkv-$n.log" 2>&1 &
    pids+=($!)
    raft_pids+=($!)
done
raft_nodes="$(printf 'http://127.0.0.1:%s,' "${raft_ports[@]}")"
raft_nodes="${raft_nodes%,}"

wait_until() { # what, seconds, command...
    local what="$1" secs="$2"
    shift 2
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || {
            log "$what: not ready within ${secs}s; logs:"
            tail -n 20 "$work"/*.log >&2 || true
            die "$what did not start"
        }
        for pid in "${pids[@]}"; do
            kill -0 "$pid" 2>/dev/null || {
                tail -n 20 "$work"/*.log >&2 || true
                die "server process $pid exited"
            }
        done
        sleep 0.2
    done
}
wait_until "etcd" 60 env ETCDCTL_API=3 etcdctl --endpoints "$etcd_endpoints" \
    --command-timeout=2s endpoint health
wait_until "raftkv" 60 "$RAFTKV_BIN" leader --nodes "$raft_nodes" --timeout-ms 2000
log "etcd $etcd_version: PIDs ${etcd_pids[*]}; raftkv: PIDs ${raft_pids[*]}; data in $work"

# --- the loads --------------------------------------------------------------
results="$work/results.jsonl"
: >"$results"
join() { local IFS=,; echo "$*"; }
probe=()
[[ "$STALL_PROBE" == 1 ]] && probe=(--stall-probe)
# settle: before each load, write back what earlier loads left dirty in the
# page cache and wait until the kernel's write-back is done (at most 5 s),
# then 1 s more, so no load pays for the write-back of the one before.
settle() {
    sync
    local tries=0
    while (( tries < 50 )) &&
        (( $(awk '/^(Dirty|Writeback):/ {s += $2} END {print s + 0}' /proc/meminfo) > 4096 )); do
        sleep 0.1
        tries=$((tries + 1))
    done
    sleep 1
}
# run_load WORKLOAD CONNS [RATE]: the load against each system in $ORDER,
# one right after the other (so slow drifts of the machine's other load hit
# both alike); appends both reports to $results.
run_load() {
    local workload="$1" conns="$2" rate="${3:-}" system line ops
    local paced=()
    [[ -n "$rate" ]] && paced=(--rate "$rate")
    for system in $ORDER; do
        settle
        if [[ $system == etcd ]]; then
            target=(--target etcd --endpoints "$etcd_endpoints" --pids "$(join "${etcd_pids[@]}")")
        else
            target=(--target raftkv --nodes "$raft_nodes" --pids "$(join "${raft_pids[@]}")")
        fi
        if line="$("$RAFTKV_BIN" bench "${target[@]}" --workload "$workload" \
            --connections "$conns" --duration "$DURATION" --warmup "$WARMUP" \
            --value-size "$VALUE_SIZE" --keys "$KEYS" --key-prefix "cmp-$workload/" \
            --consistency linearizable --target-nodes leader "${probe[@]}" "${paced[@]}" \
            --json 2>"$work/bench.err")"; then
            echo "$line" >>"$results"
            ops="$(grep -o '"throughput_ops_s":[0-9.]*' <<<"$line" | cut -d: -f2)"
            log "$(printf '%-6s %-4s %3s conns%s: %8.0f ops/s' "$system" "$workload" "$conns" \
                "${rate:+ at $rate ops/s offered}" "$ops")"
        else
            log "$system $workload $conns conns: FAILED: $(tail -n 3 "$work/bench.err")"
            [[ -n "$line" ]] && echo "$line" >>"$results"
        fi
    done
}
for workload in $WORKLOADS; do
    for conns in $CONNECTIONS; do
        run_load "$workload" "$conns"
    done
done
# Paced loads: the same load offered at a fixed rate, a fraction of what
# etcd managed with as many connections, so both systems carry the same
# work and their latencies compare at equal load.
for spec in $PACED; do
    workload="${spec%%:*}"
    conns="${spec##*:}"
    etcd_ops="$(grep '"target":"etcd"' "$results" | grep "\"workload\":\"$workload\"" |
        grep "\"connections\":$conns," | grep -v '"offered_rate_ops_s":[0-9]' |
        grep -o '"throughput_ops_s":[0-9.]*' | cut -d: -f2 | head -n 1 || true)"
    if [[ -z "$etcd_ops" ]]; then
        log "paced $spec skipped: no closed-loop etcd run of $workload at $conns connections"
        continue
    fi
    rate="$(awk -v o="$etcd_ops" -v f="$PACED_FRACTION" 'BEGIN {printf "%.0f", o * f}')"
    run_load "$workload" "$conns" "$rate"
done

# --- the table --------------------------------------------------------------
table="$("$RAFTKV_BIN" bench --summarize "$results")"
cpu_model="$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//' || true)"
mem="$(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo 2>/dev/null || true)"
fs="$(df -PT "$work" 2>/dev/null | awk 'NR == 2 {print $2 " on " $1}' || true)"
report="$(
    cat <<EOF
## RaftKV vs etcd: $(date -u '+%Y-%m-%d %H:%M UTC')

- Machine: ${cpu_model:-unknown CPU}, $(nproc) cores, ${mem:-? RAM}, Linux $(uname -r); data of both clusters on ${fs:-the same disk}.
- etcd ${etcd_version:-?} (3 members, JSON gateway, default fsync) vs ${raftkv_version} @ ${git_rev} (3 nodes, release build, default fsync).
- Each load: ${DURATION} s measured after ${WARMUP} s warm-up; ${VALUE_SIZE}-byte values, ${KEYS} keys, all connections to the leader; gets are linearizable.
- Load generator: \`raftkv bench\` on the same machine. CPU-ms/op = user + system CPU time of the 3 server processes during the run / operations.
- "at N ops/s offered" rows: the load paced to N ops/s in total (${PACED_FRACTION} of etcd's closed-loop ops/s on that load), latency counted from when each request was due.
- steal %: CPU time the hypervisor took from this VM during the load (\`/proc/stat\`); stalls/s: times a probe thread sleeping 1 ms woke more than 2 ms late (\`--stall-probe\`), i.e. the whole machine stopped.
- Ratios are raftkv/etcd: above 1 is better for ops/s, below 1 is better for latency and CPU.

$table
EOF
)"
mkdir -p "$(dirname "$OUT")"
printf '%s\n' "$report" >"$OUT"
printf '%s\n' "$report"
# The raw reports, one JSON object per line, beside the table.
cp "$results" "${OUT%.md}.jsonl"
log "written to $OUT and ${OUT%.md}.jsonl"

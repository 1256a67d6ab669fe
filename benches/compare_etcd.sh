#!/usr/bin/env bash
# RaftKV vs etcd, side by side, on this machine.
#
# Starts a 3-member etcd (Debian's etcd-server, installed if missing) and a
# 3-node RaftKV (release build), both on 127.0.0.1, both with their data in
# one temporary directory (so on the same disk) and both with their default
# fsync-before-acknowledge durability. Then runs identical `raftkv bench`
# loads against each -- puts, linearizable gets and two-key transactions of
# 100-byte values at 1, 16, 64 and 256 connections, sent to the leader --
# in two protocols:
#   gRPC: etcd v3's gRPC API on both (RaftKV's client port serves it too),
#         the like-for-like comparison: one client stack, one wire format;
#   JSON: RaftKV's HTTP/1.1 JSON API vs etcd's v3 JSON gateway (grpc-gateway
#         in front of the same gRPC server), as before;
# plus a watch fan-out line per protocol (puts at a paced rate while
# watchers receive them) and `etcdctl check perf --load=s` against both.
# It measures the servers' CPU time with --pids, stops everything it
# started (by PID), and prints side-by-side tables with raftkv/etcd ratios,
# also written to benches/results/latest.md. A RaftKV build without the
# gRPC API is detected: its gRPC rows and check perf are left out, and the
# output says so.
#
#   benches/compare_etcd.sh             # 10 s per load (about 15 minutes)
#   QUICK=1 benches/compare_etcd.sh     # 2 s per load, a smoke test (about 5 minutes)
#
# Environment:
#   DURATION=10          seconds measured per load (QUICK=1: 2)
#   WARMUP=1             seconds of unmeasured load before each (QUICK=1: 0.5)
#   CONNECTIONS="1 16 64 256"
#   PROTOCOLS="grpc json"
#   WORKLOADS="put get txn"  any of put get mixed cas txn
#   GRPC_CONNS=          --grpc-conns of the gRPC loads (default: the
#                        bench's, min(connections, 8))
#   WATCH="16:100"       CONNS:WATCHERS of the fan-out line ("" for none):
#                        puts paced at FANOUT_RATE (1000) ops/s, WATCHERS
#                        watchers of the written prefix (gRPC: over
#                        WATCH_STREAMS (10) Watch streams; JSON: one SSE
#                        stream each, RaftKV only -- the bench has no
#                        watcher for etcd's gateway)
#   CHECK_PERF=1         run `etcdctl check perf --load=s` (60 s) on both
#   SETTLE_PAUSE=1       seconds of quiet after the disk write-back, before
#                        each load (QUICK=1: 0.3)
#   PACED="put:16"       WORKLOAD:CONNS loads run once more (per protocol) at a
#                        fixed offered rate (--rate), PACED_FRACTION (0.8) of
#                        the ops/s etcd reached on that load, so both carry
#                        the same work; "" for none
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
    SETTLE_PAUSE="${SETTLE_PAUSE:-0.3}"
else
    DURATION="${DURATION:-10}"
    WARMUP="${WARMUP:-1}"
    SETTLE_PAUSE="${SETTLE_PAUSE:-1}"
fi
CONNECTIONS="${CONNECTIONS:-1 16 64 256}"
PROTOCOLS="${PROTOCOLS:-grpc json}"
GRPC_CONNS="${GRPC_CONNS:-}"
WATCH="${WATCH-16:100}"
FANOUT_RATE="${FANOUT_RATE:-1000}"
WATCH_STREAMS="${WATCH_STREAMS:-10}"
CHECK_PERF="${CHECK_PERF:-1}"
PACED="${PACED-put:16}"
PACED_FRACTION="${PACED_FRACTION:-0.8}"
STALL_PROBE="${STALL_PROBE:-1}"
ORDER="${ORDER:-etcd raftkv}"
[[ "$ORDER" == "etcd raftkv" || "$ORDER" == "raftkv etcd" ]] ||
    { echo "ORDER must be \"etcd raftkv\" or \"raftkv etcd\"" >&2; exit 2; }
WORKLOADS="${WORKLOADS:-put get txn}"
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

# Does this RaftKV build serve etcd's gRPC API on its client port? (A KV
# range through etcdctl, which speaks nothing else.)
raft_grpc=1
raft_grpc_note=""
if ! ETCDCTL_API=3 etcdctl --endpoints "$raft_nodes" --dial-timeout=2s \
    --command-timeout=3s get compare-probe >/dev/null 2>&1; then
    raft_grpc=0
    raft_grpc_note="RaftKV at ${git_rev} serves no etcd gRPC API on its client port (not in this build yet): the gRPC rows and check perf have etcd only."
    log "$raft_grpc_note"
fi

# --- the loads --------------------------------------------------------------
results="$work/results.jsonl"
: >"$results"
join() { local IFS=,; echo "$*"; }
probe=()
[[ "$STALL_PROBE" == 1 ]] && probe=(--stall-probe)
# settle: before each load, write back what earlier loads left dirty in the
# page cache and wait until the kernel's write-back is done (at most 5 s),
# then SETTLE_PAUSE s more, so no load pays for the write-back of the one
# before.
settle() {
    sync
    local tries=0
    while (( tries < 50 )) &&
        (( $(awk '/^(Dirty|Writeback):/ {s += $2} END {print s + 0}' /proc/meminfo) > 4096 )); do
        sleep 0.1
        tries=$((tries + 1))
    done
    sleep "$SETTLE_PAUSE"
}
# run_load PROTOCOL WORKLOAD CONNS [RATE]: the load against each system in
# $ORDER, one right after the other (so slow drifts of the machine's other
# load hit both alike); appends both reports to $results. Extra bench
# options come from the array $extra (reset after each call).
extra=()
run_load() {
    local protocol="$1" workload="$2" conns="$3" rate="${4:-}" system line ops label tag
    local paced=() proto=(--protocol "$protocol")
    [[ -n "$rate" ]] && paced=(--rate "$rate")
    [[ "$protocol" == grpc && -n "$GRPC_CONNS" ]] && proto+=(--grpc-conns "$GRPC_CONNS")
    for system in $ORDER; do
        if [[ $system == raftkv && $protocol == grpc && $raft_grpc == 0 ]]; then
            continue
        fi
        if [[ $system == etcd && $protocol == json ]] && ((${#extra[@]})) &&
            [[ " ${extra[*]} " == *" --watchers "* ]]; then
            continue # the bench watches etcd over gRPC only
        fi
        settle
        if [[ $system == etcd ]]; then
            target=(--target etcd --endpoints "$etcd_endpoints" --pids "$(join "${etcd_pids[@]}")")
        else
            target=(--target raftkv --nodes "$raft_nodes" --pids "$(join "${raft_pids[@]}")")
        fi
        # Fresh keys for every load (a txn's first touch of a key written
        # by an earlier load would fail its compare), short enough for the
        # 16-byte keys: g|j, the workload, the connections, r(ate), w(atch).
        tag="${protocol:0:1}${workload:0:2}${conns}${rate:+r}"
        ((${#extra[@]})) && tag+=w
        label="$(printf '%-6s %-4s %-4s %3s conns%s%s' "$system" "$protocol" "$workload" "$conns" \
            "${rate:+ at $rate ops/s offered}" "${extra[*]:+ ${extra[*]}}")"
        if line="$("$RAFTKV_BIN" bench "${target[@]}" "${proto[@]}" --workload "$workload" \
            --connections "$conns" --duration "$DURATION" --warmup "$WARMUP" \
            --value-size "$VALUE_SIZE" --keys "$KEYS" \
            --key-prefix "$tag/" \
            --consistency linearizable --target-nodes leader "${probe[@]}" "${paced[@]}" \
            "${extra[@]}" --json 2>"$work/bench.err")"; then
            echo "$line" >>"$results"
            ops="$(grep -o '"throughput_ops_s":[0-9.]*' <<<"$line" | cut -d: -f2)"
            log "$(printf '%s: %8.0f ops/s' "$label" "$ops")"
        else
            log "$label: FAILED: $(tail -n 3 "$work/bench.err")"
            [[ -n "$line" ]] && echo "$line" >>"$results"
        fi
    done
    extra=()
}
for protocol in $PROTOCOLS; do
    for workload in $WORKLOADS; do
        for conns in $CONNECTIONS; do
            run_load "$protocol" "$workload" "$conns"
        done
    done
done
# Paced loads: the same load offered at a fixed rate, a fraction of what
# etcd managed with as many connections in the same protocol, so both
# systems carry the same work and their latencies compare at equal load.
for protocol in $PROTOCOLS; do
    for spec in $PACED; do
        workload="${spec%%:*}"
        conns="${spec##*:}"
        etcd_ops="$(grep '"target":"etcd"' "$results" | grep "\"protocol\":\"$protocol\"" |
            grep "\"workload\":\"$workload\"" | grep "\"connections\":$conns," |
            grep -v '"offered_rate_ops_s":[0-9]' | grep -v '"watch":{' |
            grep -o '"throughput_ops_s":[0-9.]*' | cut -d: -f2 | head -n 1 || true)"
        if [[ -z "$etcd_ops" ]]; then
            log "paced $protocol $spec skipped: no closed-loop etcd run of $workload at $conns connections"
            continue
        fi
        rate="$(awk -v o="$etcd_ops" -v f="$PACED_FRACTION" 'BEGIN {printf "%.0f", o * f}')"
        run_load "$protocol" "$workload" "$conns" "$rate"
    done
done
# Watch fan-out: puts paced at FANOUT_RATE (the same work for both) while
# WATCHERS watchers of the written prefix receive every one; the table
# gives the delivery latency and the exactly-once check.
if [[ -n "$WATCH" ]]; then
    for protocol in $PROTOCOLS; do
        extra=(--watchers "${WATCH##*:}" --watch-drain 10)
        [[ $protocol == grpc ]] && extra+=(--watch-streams "$WATCH_STREAMS")
        run_load "$protocol" put "${WATCH%%:*}" "$FANOUT_RATE"
    done
fi

# --- etcdctl check perf ---------------------------------------------------------
# etcd's own health check of write performance (load s: 50 clients, 150
# puts/s of 1 KiB values for 60 s), run against both through their gRPC API.
perf_table=""
check_perf() { # NAME ENDPOINTS
    local out verdict tput slowest stddev
    local try
    for try in 1 2; do
        settle
        out="$(ETCDCTL_API=3 timeout 150 etcdctl --endpoints "$2" --dial-timeout=2s \
            check perf --load=s --prefix "/check-perf-$1/" 2>&1)" || true
        printf '%s\n' "$out" | tr '\r' '\n' >"$work/check-perf-$1-$try.log"
        # An error before the load started (no throughput line): once more.
        grep -q 'Throughput' <<<"$out" && break
        log "check perf $1 did not start ($(tail -n 1 <<<"$out" | tr -d '\r' | cut -c1-100))$( ((try == 1)) && echo '; once more')"
    done
    verdict="$(grep -Eo '^(PASS|FAIL)$' <<<"$out" | tail -n 1 || true)"
    tput="$(grep -Eo 'Throughput[^0-9]*[0-9]+ writes/s' <<<"$out" | grep -Eo '[0-9]+' | tail -n 1 || true)"
    slowest="$(grep -Eo 'Slowest request took[^0-9]*[0-9.]+s' <<<"$out" | grep -Eo '[0-9.]+' | tail -n 1 || true)"
    stddev="$(grep -Eo 'Stddev[^0-9]*[0-9.]+s' <<<"$out" | grep -Eo '[0-9.]+' | tail -n 1 || true)"
    if [[ -z "$verdict" ]]; then
        verdict="did not run: $(tail -n 1 <<<"$out" | tr -d '\r' | cut -c1-120)"
    fi
    log "check perf $1: ${tput:--} writes/s, slowest ${slowest:--} s, stddev ${stddev:--} s: $verdict"
    perf_table+="| $1 | ${tput:--} | ${slowest:--} | ${stddev:--} | $verdict |"$'\n'
}
if [[ "$CHECK_PERF" == 1 ]]; then
    check_perf etcd "$etcd_endpoints"
    if [[ $raft_grpc == 1 ]]; then
        check_perf raftkv "$raft_nodes"
    else
        perf_table+="| raftkv | - | - | - | not run: no gRPC API in this build |"$'\n'
    fi
fi

# --- the table --------------------------------------------------------------
table="$("$RAFTKV_BIN" bench --summarize "$results")"
cpu_model="$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//' || true)"
mem="$(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo 2>/dev/null || true)"
fs="$(df -PT "$work" 2>/dev/null | awk 'NR == 2 {print $2 " on " $1}' || true)"
report="$(
    cat <<EOF
## RaftKV vs etcd: $(date -u '+%Y-%m-%d %H:%M UTC')

- Machine: ${cpu_model:-unknown CPU}, $(nproc) cores, ${mem:-? RAM}, Linux $(uname -r); data of both clusters on ${fs:-the same disk}.
- etcd ${etcd_version:-?} (3 members, default fsync) vs ${raftkv_version} @ ${git_rev} (3 nodes, release build, default fsync).
- Each load: ${DURATION} s measured after ${WARMUP} s warm-up; ${VALUE_SIZE}-byte values, ${KEYS} keys, all connections to the leader; gets are linearizable; txn = two keys compared on mod_revision, both put on success, both read on failure (counted as conflicts).
- gRPC tables: etcd v3's gRPC API on both systems; "conns" are concurrent clients, sharing ${GRPC_CONNS:-min(conns, 8)} HTTP/2 connection(s). JSON tables: RaftKV's HTTP/1.1 JSON API vs etcd's JSON gateway, one HTTP/1.1 connection per client.${raft_grpc_note:+
- $raft_grpc_note}
- Load generator: \`raftkv bench\` on the same machine. CPU-ms/op = user + system CPU time of the 3 server processes during the run / operations.
- "at N ops/s offered" rows: the load paced to N ops/s in total (${PACED_FRACTION} of etcd's closed-loop ops/s on that load), latency counted from when each request was due.
- steal %: CPU time the hypervisor took from this VM during the load (\`/proc/stat\`); stalls/s: times a probe thread sleeping 1 ms woke more than 2 ms late (\`--stall-probe\`), i.e. the whole machine stopped.
- Watch fan-out: puts paced at ${FANOUT_RATE} ops/s while the watchers (gRPC: over ${WATCH_STREAMS} Watch streams; JSON: one SSE stream each, RaftKV only) receive every one; delivery latency from the put being sent; "exactly once": watchers that got every acknowledged put once, in order.
- Ratios are raftkv/etcd: above 1 is better for ops/s, below 1 is better for latency and CPU.

$table
EOF
)"
if [[ -n "$perf_table" ]]; then
    report+="$(
        cat <<EOF


### etcdctl check perf --load=s (50 clients, 150 puts/s of 1 KiB values, 60 s; gRPC)

| system | writes/s | slowest s | stddev s | verdict |
|---|---:|---:|---:|---|
${perf_table%$'
'}
EOF
    )"
fi
mkdir -p "$(dirname "$OUT")"
printf '%s\n' "$report" >"$OUT"
printf '%s\n' "$report"
# The raw reports, one JSON object per line, beside the table.
cp "$results" "${OUT%.md}.jsonl"
log "written to $OUT and ${OUT%.md}.jsonl"

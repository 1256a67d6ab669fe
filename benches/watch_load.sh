#!/usr/bin/env bash
# Does holding watches slow writes down, and what do they cost in memory?
#
# Starts a local 3-node RaftKV (release build) on 127.0.0.1, then for each
# connection count runs the put benchmark (`raftkv bench -w put`, to the
# leader) twice: once with no watcher, once with IDLE_WATCHERS idle watchers
# (SSE watches of single keys nobody writes) and ACTIVE_WATCHERS active ones
# (SSE watches of the written prefix) held by the bench on one node
# (WATCH_NODE). It reports the write throughput with/without, the resident
# memory (VmRSS) of the node holding the watchers before the run, with the
# watchers open and at the end of the load, and the active watchers'
# delivery latency and exactly-once check. Then (FANOUT_RATE) the same
# watchers under a paced, unsaturated put load, and (TXN_CONNECTIONS) the
# txn workload. Everything it starts is stopped on exit, by PID. The
# Markdown table goes to benches/results/watch-latest.md (OUT), the raw
# `--json` reports beside it (.jsonl).
#
#   benches/watch_load.sh              # 10 s per load (about 3 minutes)
#   QUICK=1 benches/watch_load.sh      # 3 s per load, a smoke test
#
# Environment:
#   DURATION=10  WARMUP=1      seconds per load (QUICK=1: 3 and 0.5)
#   CONNECTIONS="16 64"        put connection counts
#   REPEAT=1                   runs of each with/without pair (alternating
#                              which goes first)
#   IDLE_WATCHERS=1000  ACTIVE_WATCHERS=100
#   WATCH_NODE=leader          leader or follower: the node holding them all
#   FANOUT_RATE=1000           paced put rate (ops/s, 16 connections) of the
#                              fan-out run; "" skips it
#   TXN_CONNECTIONS="16 64"    txn workload runs; "" skips them
#   VALUE_SIZE=100  KEYS=1000  DRAIN=10 (s for watchers to catch up)
#   RAFTKV_BIN=path            use this binary instead of cargo build --release
#   BENCH_DIR=dir              where the temporary data dir goes
#   OUT=file                   default benches/results/watch-latest.md
#   RAFTKV_PORT=28101          the nodes use RAFTKV_PORT..+2
#   KEEP=1                     keep the temporary dir (data and logs)
#
# Needs: Linux (/proc), bash, python3 (the table), cargo (unless RAFTKV_BIN).

set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"

if [[ "${QUICK:-0}" == 1 ]]; then
    DURATION="${DURATION:-3}"
    WARMUP="${WARMUP:-0.5}"
else
    DURATION="${DURATION:-10}"
    WARMUP="${WARMUP:-1}"
fi
CONNECTIONS="${CONNECTIONS:-16 64}"
REPEAT="${REPEAT:-1}"
IDLE_WATCHERS="${IDLE_WATCHERS:-1000}"
ACTIVE_WATCHERS="${ACTIVE_WATCHERS:-100}"
WATCH_NODE="${WATCH_NODE:-leader}"
FANOUT_RATE="${FANOUT_RATE-1000}"
TXN_CONNECTIONS="${TXN_CONNECTIONS-16 64}"
VALUE_SIZE="${VALUE_SIZE:-100}"
KEYS="${KEYS:-1000}"
DRAIN="${DRAIN:-10}"
OUT="${OUT:-$repo/benches/results/watch-latest.md}"
RAFTKV_PORT="${RAFTKV_PORT:-28101}"

log() { printf '[watch-load] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ -r /proc/self/status ]] || die "needs Linux (/proc) to read VmRSS"
[[ "$WATCH_NODE" == leader || "$WATCH_NODE" == follower ]] ||
    die "WATCH_NODE must be leader or follower"
((REPEAT >= 1 && REPEAT <= 20)) || die "REPEAT must be 1..20"
command -v python3 >/dev/null || die "needs python3 for the table"

# shellcheck source=benches/lib.sh
source "$here/lib.sh"

resolve_raftkv
"$RAFTKV_BIN" bench --help 2>/dev/null | grep -q -- '--watchers' ||
    die "$RAFTKV_BIN bench has no --watchers option"

# Every watcher is a socket in the bench and in the node holding it.
need_fds=$((IDLE_WATCHERS + ACTIVE_WATCHERS + 512))
if (($(ulimit -n) < need_fds)); then
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    (($(ulimit -n) >= need_fds)) || die "open files limit $(ulimit -n) < $need_fds (ulimit -n)"
fi

raftkv_ports "$RAFTKV_PORT"

work="$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/raftkv-watch-load.XXXXXX")"
pids=()
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if ((${#pids[@]})); then
        log "stopping ${#pids[@]} server processes"
        for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
        for pid in "${pids[@]}"; do stop_pid "$pid"; done
    fi
    if [[ "${KEEP:-0}" == 1 ]]; then log "kept $work"; else rm -rf "$work"; fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for i in 0 1 2; do
    start_raftkv_node "$i" "$work"
    pids+=($!)
done
nodes="$(printf 'http://127.0.0.1:%s,' "${raft_ports[@]}")"
nodes="${nodes%,}"
pid_list="$(IFS=,; echo "${pids[*]}")"

deadline=$((SECONDS + 60))
until leader_line="$("$RAFTKV_BIN" leader --nodes "$nodes" --timeout-ms 2000 2>/dev/null)"; do
    for pid in "${pids[@]}"; do
        kill -0 "$pid" 2>/dev/null || { tail -n 20 "$work"/*.log >&2; die "node $pid exited"; }
    done
    ((SECONDS < deadline)) || { tail -n 20 "$work"/*.log >&2; die "no leader within 60 s"; }
    sleep 0.2
done
log "raftkv PIDs ${pids[*]} on ports ${raft_ports[*]}; data in $work"

# watch_target: sets watch_url and watch_pid to the node WATCH_NODE names now.
watch_target() {
    local line url port i
    line="$("$RAFTKV_BIN" leader --nodes "$nodes" --timeout-ms 5000)" || die "no leader"
    url="$(awk '{print $2}' <<<"$line")"
    port="${url##*:}"
    port="${port%%/*}"
    for i in 0 1 2; do
        if [[ "$WATCH_NODE" == leader && "${raft_ports[i]}" == "$port" ]] ||
            [[ "$WATCH_NODE" == follower && "${raft_ports[i]}" != "$port" ]]; then
            watch_url="http://127.0.0.1:${raft_ports[i]}"
            watch_pid="${pids[i]}"
            return 0
        fi
    done
    die "leader $url is not one of ours"
}

results="$work/results.jsonl"
: >"$results"
# run LABEL ARGS...: one bench run; its --json report, tagged with LABEL,
# is appended to $results.
run() {
    local label="$1" line ops
    shift
    settle_disk
    watch_target
    if line="$("$RAFTKV_BIN" bench --nodes "$nodes" --target-nodes leader \
        --duration "$DURATION" --warmup "$WARMUP" --value-size "$VALUE_SIZE" \
        --keys "$KEYS" --pids "$pid_list" --rss-pids "$watch_pid" \
        --watch-node "$watch_url" --watch-drain "$DRAIN" "$@" --json 2>"$work/bench.err")"; then
        ops="$(grep -o '"throughput_ops_s":[0-9.]*' <<<"$line" | cut -d: -f2)"
        log "$(printf '%-34s %8.0f ops/s' "$label" "$ops")"
    else
        log "$label: FAILED: $(tail -n 3 "$work/bench.err")"
        [[ -n "$line" ]] || return 0
    fi
    printf '{"label":"%s","watch_pid":%s,"report":%s}\n' "$label" "$watch_pid" "$line" >>"$results"
}

watching=(--watchers "$ACTIVE_WATCHERS" --idle-watchers "$IDLE_WATCHERS")
for conns in $CONNECTIONS; do
    for ((rep = 1; rep <= REPEAT; rep++)); do
        # Alternate which goes first, so a drift of the machine hits both.
        if ((rep % 2)); then order="without with"; else order="with without"; fi
        for which in $order; do
            if [[ $which == without ]]; then
                run "put c=$conns without" -w put -c "$conns" --key-prefix wl-put/
            else
                run "put c=$conns with" -w put -c "$conns" --key-prefix wl-put/ "${watching[@]}"
            fi
        done
    done
done
if [[ -n "$FANOUT_RATE" ]]; then
    run "fanout rate=$FANOUT_RATE" -w put -c 16 --rate "$FANOUT_RATE" \
        --key-prefix wl-fan/ "${watching[@]}"
fi
for conns in $TXN_CONNECTIONS; do
    run "txn c=$conns" -w txn -c "$conns" --key-prefix wl-txn/
done

table="$(python3 - "$results" <<'PY'
import json, sys

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]

def mb(k):
    return "-" if k is None else f"{k / 1024:.0f}"

def rss(r):
    for x in r.get("rss", []):
        return x
    return {}

out = []
puts = [x for x in rows if x["label"].startswith("put ")]
if puts:
    out.append("| workload | conns | watchers (idle+active) | ops/s | ratio with/without | p50 ms | p99 ms | watch node RSS MB before → watching → end | fan-out from ack p50/p99 ms | from send p50/p99 ms | events expected / received / mismatches |")
    out.append("|---|---:|---|---:|---:|---:|---:|---|---|---|---|")
    base = {}
    for x in puts:
        r = x["report"]
        if x["label"].endswith("without"):
            base.setdefault(r["connections"], []).append(r["throughput_ops_s"])
    for x in puts:
        r = x["report"]
        w = r.get("watch")
        b = base.get(r["connections"])
        ratio = "-"
        if w and b:
            ratio = f"**{r['throughput_ops_s'] / (sum(b) / len(b)):.2f}×**"
        s = rss(r)
        mem = f"{mb(s.get('before_kib'))} → {mb(s.get('watching_kib'))} → {mb(s.get('end_kib'))}"
        if w:
            f = w["fanout"]
            who = f"{w['idle_open']}/{w['idle']} + {w['active_open']}/{w['active']}"
            fa = f"{f['latency_from_ack_ms']['p50']:.2f} / {f['latency_from_ack_ms']['p99']:.2f}"
            fs = f"{f['latency_from_send_ms']['p50']:.2f} / {f['latency_from_send_ms']['p99']:.2f}"
            mism = f["missing"] + f["duplicates"] + f["out_of_order"] + f["wrong_batch_size"]
            ev = f"{f['expected_events']} / {f['received_events']} / {mism}"
        else:
            who, fa, fs, ev = "none", "-", "-", "-"
        lat = r["latency_ms"]
        out.append(f"| put | {r['connections']} | {who} | {r['throughput_ops_s']:.0f} | {ratio} | {lat['p50']:.2f} | {lat['p99']:.2f} | {mem} | {fa} | {fs} | {ev} |")
fan = [x for x in rows if x["label"].startswith("fanout")]
for x in fan:
    r = x["report"]; w = r["watch"]; f = w["fanout"]
    a, s = f["latency_from_ack_ms"], f["latency_from_send_ms"]
    mism = f["missing"] + f["duplicates"] + f["out_of_order"] + f["wrong_batch_size"]
    out.append("")
    out.append(f"Fan-out at a paced {r.get('offered_rate_ops_s') or 0:.0f} puts/s ({r['throughput_ops_s']:.0f} done), "
               f"{w['active_open']} active + {w['idle_open']} idle watchers on one node: "
               f"put acknowledged → delivered p50 {a['p50']:.2f} ms, p99 {a['p99']:.2f} ms; "
               f"put sent → delivered p50 {s['p50']:.2f} ms, p99 {s['p99']:.2f} ms; "
               f"{f['expected_events']} events expected, {f['received_events']} received, {mism} mismatches, "
               f"{f['complete_watchers']}/{f['watchers']} watchers got every event exactly once; "
               f"{f['delivered_before_ack']} deliveries came before the put's answer.")
txn = [x for x in rows if x["label"].startswith("txn")]
if txn:
    out.append("")
    out.append("| workload | conns | txn/s | p50 ms | p99 ms | failure branch |")
    out.append("|---|---:|---:|---:|---:|---:|")
    for x in txn:
        r = x["report"]; lat = r["latency_ms"]
        done = max(r["successes"] + r["conflicts"], 1)
        out.append(f"| txn (2 compares, 2 puts) | {r['connections']} | {r['throughput_ops_s']:.0f} | {lat['p50']:.2f} | {lat['p99']:.2f} | {r['conflicts']} ({100 * r['conflicts'] / done:.1f}%) |")
print("\n".join(out))
PY
)"
cpu_model="$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//' || true)"
report="$(
    cat <<EOF
## Watch load: $(date -u '+%Y-%m-%d %H:%M UTC')

- Machine: ${cpu_model:-unknown CPU}, $(nproc) cores, Linux $(uname -r); ${raftkv_version} @ ${git_rev}, 3 nodes on 127.0.0.1, release build, default fsync.
- Each load: ${DURATION} s measured after ${WARMUP} s warm-up, puts of ${VALUE_SIZE}-byte values over ${KEYS} keys, all connections to the leader; \`raftkv bench\` on the same machine, holding the watchers too.
- "with": ${IDLE_WATCHERS} idle watchers (SSE \`GET /watch?key=\` on keys nobody writes) + ${ACTIVE_WATCHERS} active watchers (SSE \`GET /watch?prefix=\` on the written prefix), all on the ${WATCH_NODE}; RSS is that node's VmRSS.
- Fan-out latency: from the put's answer reaching the bench (ack) or from the put being sent, to the bench reading the event on each watcher; every event at every watcher.

$table
EOF
)"
mkdir -p "$(dirname "$OUT")"
printf '%s\n' "$report" >"$OUT"
printf '%s\n' "$report"
cp "$results" "${OUT%.md}.jsonl"
log "written to $OUT and ${OUT%.md}.jsonl"

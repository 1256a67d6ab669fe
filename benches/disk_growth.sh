#!/usr/bin/env bash
# Disk growth of a 3-node cluster under a sustained overwrite load of a
# fixed key set: does the data dir stop growing once snapshots compact the
# log and sled reuses its segments?
#
# Starts three release `raftkv start` processes on free loopback ports,
# runs `raftkv bench -w put` over KEYS keys for DURATION seconds, keeps
# sampling for IDLE seconds after the load, and prints one line per sample:
#
#   t_s  node-1_bytes  node-2_bytes  node-3_bytes  applied  snapshot_index
#
# then the space amplification (data dir size / raw live key+value bytes).
# Everything it starts is stopped on exit; the data lives in a temp dir
# that is removed (KEEP=1 keeps it).
#
# Knobs (environment): DURATION (s, default 120), IDLE (s, default 20),
# KEYS (1000), VALUE (bytes, 1024), KEY_SIZE (bytes, 16), CONNS (16),
# THRESHOLD (--snapshot-threshold, default 10000), SAMPLE (s, default 5).
set -euo pipefail

DURATION=${DURATION:-120}
IDLE=${IDLE:-20}
KEYS=${KEYS:-1000}
VALUE=${VALUE:-1024}
KEY_SIZE=${KEY_SIZE:-16}
CONNS=${CONNS:-16}
THRESHOLD=${THRESHOLD:-10000}
SAMPLE=${SAMPLE:-5}

cd "$(dirname "$0")/.."
cargo build --release --quiet
BIN=$PWD/target/release/raftkv
DIR=$(mktemp -d -t raftkv-disk-XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    if [[ "${KEEP:-0}" == 1 ]]; then echo "data kept in $DIR" >&2; else rm -rf "$DIR"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Three consecutive free ports below Linux's ephemeral range (32768+), so
# that no outgoing connection can take one between the check and the bind.
read -r P1 P2 P3 < <(python3 -c '
import random, socket
while True:
    base = random.randrange(20000, 32000)
    try:
        ss = [socket.socket() for _ in range(3)]
        for i, s in enumerate(ss): s.bind(("127.0.0.1", base + i))
    except OSError:
        continue
    finally:
        for s in ss: s.close()
    print(base, base + 1, base + 2)
    break')
PORTS=("$P1" "$P2" "$P3")
NODES=""
for i in 0 1 2; do
    peers=""
    for j in 0 1 2; do
        [[ $i == "$j" ]] && continue
        peers+="${peers:+,}node-$((j + 1))=127.0.0.1:${PORTS[$j]}"
    done
    RUST_LOG=warn "$BIN" start --node-id "node-$((i + 1))" --port "${PORTS[$i]}" \
        --peers "$peers" --data-dir "$DIR/node-$((i + 1))" \
        --snapshot-threshold "$THRESHOLD" 2>"$DIR/node-$((i + 1)).log" &
    PIDS+=("$!")
    NODES+="${NODES:+,}http://127.0.0.1:${PORTS[$i]}"
done

for _ in $(seq 1 200); do
    curl -sf "http://127.0.0.1:$P1/cluster/leader" >/dev/null && break
    sleep 0.1
done

size() { du -sb "$1" | cut -f1; }
status_field() {
    curl -sf "http://127.0.0.1:$P1/cluster/status" |
        python3 -c "import json,sys; print(json.load(sys.stdin).get('$1', '?'))" 2>/dev/null ||
        echo '?'
}

echo "# keys=$KEYS value=$VALUE key=$KEY_SIZE threshold=$THRESHOLD duration=${DURATION}s"
echo "# t_s node-1_bytes node-2_bytes node-3_bytes applied snapshot_index"
"$BIN" bench -w put --keys "$KEYS" --value-size "$VALUE" --key-size "$KEY_SIZE" \
    -c "$CONNS" --duration "$DURATION" --nodes "$NODES" --json >"$DIR/bench.json" 2>"$DIR/bench.err" &
BENCH=$!
START=$(date +%s)
END=$((START + DURATION + IDLE))
while (($(date +%s) < END)); do
    t=$(($(date +%s) - START))
    echo "$t $(size "$DIR/node-1") $(size "$DIR/node-2") $(size "$DIR/node-3")" \
        "$(status_field applied_index) $(status_field snapshot_index)"
    sleep "$SAMPLE"
done
wait "$BENCH" || { echo "bench failed:"; cat "$DIR/bench.err"; exit 1; }

RAW=$((KEYS * (KEY_SIZE + VALUE)))
echo "# raw live data: $RAW bytes"
for n in 1 2 3; do
    s=$(size "$DIR/node-$n")
    python3 -c "print('# node-$n: %d bytes, space amplification %.1fx' % ($s, $s / $RAW))"
done
python3 -c "
import json
b = json.load(open('$DIR/bench.json'))
print('# bench:', {k: b[k] for k in b if k in ('ops', 'ops_per_sec', 'errors', 'throughput')})
" 2>/dev/null || head -c 400 "$DIR/bench.json"

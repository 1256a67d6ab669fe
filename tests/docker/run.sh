#!/usr/bin/env bash
# Runs the repository's docker-compose cluster for real and tests it.
#
#   sudo bash tests/docker/run.sh        (CI runs it as root from .ci/run)
#
# What it does, in order (each step is timed):
#   1. installs docker.io, docker-compose, debootstrap and jq from Debian's
#      packages if they are missing (apt-get, non-interactive);
#   2. starts its OWN dockerd, private to this run: its data, exec root,
#      socket and pid file live in a temporary directory, it leaves the
#      host's firewall, IP forwarding and default bridge alone
#      (--iptables=false --ip-forward=false --bridge=none), and its
#      networks come from a /24 that no host route uses;
#   3. makes a Debian bookworm base image with debootstrap (minbase) and
#      `docker import`, because no image can be pulled here; the root file
#      system tarball is cached in $RAFTKV_DOCKER_CACHE
#      (default /var/tmp/raftkv-docker-cache) for the next run;
#   4. builds the raftkv release binary on the host with cargo and an image
#      from it: the Dockerfile's runtime-base stage plus
#      docker/Dockerfile.prebuilt (the same runtime stage that the normal
#      multi-stage build ends in, without the Rust builder stage, for which
#      no Rust image can be had);
#   5. brings docker-compose.yml up under a unique project name, with host
#      ports from RAFTKV_PORT_1..3 (8001-8003, or free ones if those are
#      taken) and tests the cluster through 127.0.0.1 with the raftkv CLI:
#      health, a write on node 1 read on node 3, killing the leader's
#      container, a crash handled by the restart policy, down/up with the
#      volumes kept, and network partitions of a follower and of the leader;
#   6. removes everything it made - containers, networks, volumes, images,
#      the dockerd (by PID) and its directories - even when a step fails or
#      the run is interrupted, and checks that nothing is left. The tests run
#      in a child process (`run.sh --body`) in its own process group; this
#      script only waits for it, so that on SIGINT/SIGTERM it can stop the
#      child's group and still clean up (see supervise()).
# It prints "N passed, M failed" last and exits non-zero if anything failed.
#
# Environment (all optional):
#   RAFTKV_PORT_1..3            host ports of node-1..3 (default 8001..8003,
#                               or free ones when those are busy)
#   RAFTKV_DOCKER_CACHE         where the base rootfs tarball is kept
#   RAFTKV_DOCKER_FRESH_BASE=1  debootstrap again even if a tarball is cached
#   RAFTKV_DOCKER_MIRROR        Debian mirror for debootstrap (default: the
#                               one apt uses, else debootstrap's own default)
#   RAFTKV_DOCKER_FAILOVER_MAX  seconds a leader failover may take before the
#                               check fails (default 10)
#   RAFTKV_DOCKER_NO_INSTALL=1  never run apt-get (fail if a tool is missing)
#
# Every wait is a bounded poll; nothing sleeps as the check itself.

set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SELF="$ROOT/tests/docker/run.sh"
CACHE=${RAFTKV_DOCKER_CACHE:-/var/tmp/raftkv-docker-cache}
FAILOVER_MAX=${RAFTKV_DOCKER_FAILOVER_MAX:-10}
# The supervisor makes these and hands them to the body (see the end).
RUN_ID=${RAFTKV_DOCKER_RUN_ID:-"$$-$RANDOM"}
WORK=${RAFTKV_DOCKER_WORK:-}
PROJECT="raftkv-test-$RUN_ID"
BASE_IMAGE="raftkv-test/debian:bookworm-minbase"
RUNTIME_BASE_IMAGE="raftkv-test/runtime-base:$RUN_ID"
IMAGE="raftkv-test/raftkv:$RUN_ID"
SERVICES=(node-1 node-2 node-3)

DOCKERD_PID=""
NETWORK=""
ACKED_KEYS=()
declare -A ACKED=()
declare -A PORT=()

# ---------------------------------------------------------------- helpers

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
log() { printf '%s\n' "$*"; }
# Results and step times go to files in the work directory, where the
# supervisor counts them.
pass() {
    echo pass >>"$WORK/tally"
    log "  PASS  $*"
}
fail() {
    echo fail >>"$WORK/tally"
    log "  FAIL  $*"
}
# A setup step that failed: nothing after it can run.
fatal() {
    fail "$*"
    step_end
    exit 1
}

CURRENT_STEP=""
STEP_START=""
step() {
    step_end
    CURRENT_STEP=$1
    STEP_START=$(now)
    printf '\n---- %s ----\n' "$1"
}
step_end() {
    if [ -n "$CURRENT_STEP" ]; then
        local t
        t=$(since "$STEP_START")
        printf '%s\t%s\n' "$t" "$CURRENT_STEP" >>"$WORK/steps"
        log "  ($CURRENT_STEP: ${t} s)"
        CURRENT_STEP=""
    fi
}

# poll TIMEOUT_S INTERVAL_S CMD...: runs CMD until it succeeds or the
# deadline passes; returns CMD's success.
poll() {
    local timeout=$1 interval=$2
    shift 2
    local deadline
    deadline=$(awk -v n="$(now)" -v t="$timeout" 'BEGIN { printf "%.3f", n + t }')
    while :; do
        "$@" && return 0
        if awk -v n="$(now)" -v d="$deadline" 'BEGIN { exit !(n >= d) }'; then
            return 1
        fi
        sleep "$interval"
    done
}

# Runs a command with its output in a log file; shows the log's tail if it
# fails.
quiet() {
    local logfile=$1
    shift
    if "$@" >"$logfile" 2>&1; then
        return 0
    fi
    local rc=$?
    log "  command failed (exit $rc): $*"
    tail -n 30 "$logfile" | sed 's/^/  | /'
    return "$rc"
}

# ---------------------------------------------------------------- docker

docker_() { "$DOCKER" "$@"; }

compose() {
    RAFTKV_IMAGE="$IMAGE" RAFTKV_PUBLISH_HOST=127.0.0.1 \
        RAFTKV_PORT_1="${PORT[node-1]:-}" RAFTKV_PORT_2="${PORT[node-2]:-}" \
        RAFTKV_PORT_3="${PORT[node-3]:-}" \
        "${COMPOSE[@]}" --project-name "$PROJECT" --file "$ROOT/docker-compose.yml" \
        --project-directory "$ROOT" "$@"
}

container_of() { compose ps -q "$1" 2>/dev/null | sed -n 1p; }

health_of() {
    local cid
    cid=$(container_of "$1")
    [ -n "$cid" ] || { echo missing; return; }
    docker_ inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' \
        "$cid" 2>/dev/null || echo missing
}

node_healthy() { [ "$(health_of "$1")" = healthy ]; }

all_healthy() {
    local s
    for s in "${SERVICES[@]}"; do
        [ "$(health_of "$s")" = healthy ] || return 1
    done
}

# ---------------------------------------------------------------- raftkv CLI

url_of() { printf 'http://127.0.0.1:%s' "${PORT[$1]}"; }

# Comma-separated URLs of the given services (all three by default).
urls() {
    local s out=""
    [ $# -gt 0 ] || set -- "${SERVICES[@]}"
    for s in "$@"; do out="${out:+$out,}$(url_of "$s")"; done
    printf '%s' "$out"
}

rkv() { "$RAFTKV" "$@"; }

# put_acked NODES KEY VALUE: a write that must be acknowledged; remembered
# so that later checks can insist it survived.
put_acked() {
    local nodes=$1 key=$2 value=$3 out
    out=$(rkv put --nodes "$nodes" --timeout-ms 10000 "$key" "$value" 2>&1)
    if [[ $out =~ ^OK\ \(index\ [0-9]+\)$ ]]; then
        [ -n "${ACKED[$key]+x}" ] || ACKED_KEYS+=("$key")
        ACKED[$key]=$value
        return 0
    fi
    log "  put $key via $nodes: $out"
    return 1
}

# Reads back every acknowledged write (linearizable, through any node);
# prints the ones that differ on stderr and the number of them on stdout.
count_lost() {
    local k out bad=0
    for k in "${ACKED_KEYS[@]}"; do
        out=$(rkv get --nodes "$NODES" --timeout-ms 15000 "$k" 2>&1)
        if [ "$out" != "$k = ${ACKED[$k]}" ]; then
            bad=$((bad + 1))
            log "  $k: want '${ACKED[$k]}', got '$out'" >&2
        fi
    done
    echo "$bad"
}

# Prints the leader's node id as the cluster reports it (empty if none).
leader_id() {
    local out
    out=$(rkv leader --nodes "${1:-$(urls)}" --timeout-ms "${2:-3000}" 2>/dev/null) || return 1
    out=${out%% *}
    [ -n "$out" ] || return 1
    printf '%s' "$out"
}

# A field of one node's /cluster/status, asked through its host port.
status_field() {
    rkv status --json --node "$(url_of "$1")" --timeout-ms 2000 2>/dev/null | jq -r ".$2 // empty"
}

# caught_up NODE LEADER: NODE has applied everything LEADER has applied.
caught_up() {
    local mine theirs
    theirs=$(status_field "$2" applied_index) || return 1
    mine=$(status_field "$1" applied_index) || return 1
    [ -n "$mine" ] && [ -n "$theirs" ] && [ "$mine" -ge "$theirs" ]
}

stale_value_is() {
    local node=$1 key=$2 want=$3 got
    got=$(rkv get --stale --nodes "$(url_of "$node")" --timeout-ms 2000 "$key" 2>/dev/null) || return 1
    [ "$got" = "$key = $want" ]
}

# ---------------------------------------------------------------- cleanup

port_busy() {
    if command -v ss >/dev/null 2>&1 && ss -Hltn "sport = :$1" 2>/dev/null | grep . >/dev/null; then
        return 0
    fi
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

pick_ports() {
    local i base v
    for i in 1 2 3; do
        v="RAFTKV_PORT_$i"
        PORT[node-$i]=${!v:-$((8000 + i))}
    done
    if ! port_busy "${PORT[node-1]}" && ! port_busy "${PORT[node-2]}" && ! port_busy "${PORT[node-3]}" \
        && [ "${1:-}" != again ]; then
        return 0
    fi
    for _ in $(seq 1 50); do
        base=$((20000 + (RANDOM % 2000) * 10))
        if ! port_busy "$base" && ! port_busy $((base + 1)) && ! port_busy $((base + 2)); then
            PORT[node-1]=$base
            PORT[node-2]=$((base + 1))
            PORT[node-3]=$((base + 2))
            log "  host ports 8001-8003 (or RAFTKV_PORT_*) are taken; using $base-$((base + 2))"
            return 0
        fi
    done
    return 1
}

dump_logs() {
    [ -n "$DOCKERD_PID" ] || return 0
    if ! kill -0 "$DOCKERD_PID" 2>/dev/null; then
        log "---- dockerd log (last 30 lines) ----"
        tail -n 30 "$WORK/dockerd.log" 2>/dev/null | sed 's/^/  | /'
        return 0
    fi
    log ""
    log "---- container logs (last 40 lines each) ----"
    compose logs --no-color --tail 40 2>&1 | sed 's/^/  | /'
}

# Processes whose command line names our work directory: the dockerd's
# containerd and shims, should any outlive it.
our_pids() {
    local p cmd
    [ -n "$WORK" ] || return 0
    for p in /proc/[0-9]*; do
        # Matched in bash: a grep here would find its own command line.
        cmd=$( { tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null) || continue
        [[ $cmd == *"$WORK/"* ]] && echo "${p#/proc/}"
    done
}

our_mounts() {
    [ -n "$WORK" ] || return 0
    awk -v w="$WORK/" 'index($2, w) == 1 { print $2 }' /proc/mounts | sort -r
}

# The docker and compose clients, once the body has installed them.
find_clients() {
    if [ -x /usr/bin/docker ]; then DOCKER=/usr/bin/docker; else DOCKER=$(command -v docker); fi
    if command -v docker-compose >/dev/null 2>&1; then
        COMPOSE=(docker-compose)
    elif [ -n "$DOCKER" ] && "$DOCKER" compose version >/dev/null 2>&1; then
        COMPOSE=("$DOCKER" compose)
    else
        COMPOSE=()
    fi
}

# Removes everything the body made. Runs in the supervisor, after the body
# has exited (or been killed).
cleanup() {
    local t0 leftovers=0 ids p m
    t0=$(now)
    printf '\n---- cleanup ----\n'
    # An apt-get interrupted before it could remove its policy-rc.d.
    if [ -e "$WORK/made-policy-rc.d" ]; then
        rm -f /usr/sbin/policy-rc.d
        log "  removed the /usr/sbin/policy-rc.d it had made"
    fi
    DOCKERD_PID=$(cat "$WORK/dockerd.launched" 2>/dev/null)
    if [ -n "$DOCKERD_PID" ] && ! [[ $( { tr '\0' ' ' <"/proc/$DOCKERD_PID/cmdline"; } 2>/dev/null) == *"$WORK/"* ]]; then
        DOCKERD_PID="" # gone, or the PID now belongs to someone else
    fi
    find_clients
    export DOCKER_HOST="unix://$WORK/docker.sock" DOCKER_CONFIG="$WORK/config"
    grep -q '^fail' "$WORK/tally" 2>/dev/null && dump_logs
    if [ -n "$DOCKERD_PID" ]; then
        if [ ${#COMPOSE[@]} -gt 0 ]; then
            compose down --volumes --remove-orphans --timeout 10 >"$WORK/down.log" 2>&1 \
                || log "  docker-compose down failed; removing by hand"
        fi
        # Everything in this private daemon is ours.
        ids=$(docker_ ps -aq 2>/dev/null)
        [ -z "$ids" ] || docker_ rm -f $ids >/dev/null 2>&1
        ids=$(docker_ volume ls -q 2>/dev/null)
        [ -z "$ids" ] || docker_ volume rm -f $ids >/dev/null 2>&1
        docker_ network prune -f >/dev/null 2>&1
        for ids in "$IMAGE" "$RUNTIME_BASE_IMAGE" "$BASE_IMAGE"; do
            docker_ rmi -f "$ids" >/dev/null 2>&1
        done
        docker_ image prune -af >/dev/null 2>&1
        log "  containers: $(docker_ ps -aq 2>/dev/null | wc -l), volumes: $(docker_ volume ls -q 2>/dev/null | wc -l)," \
            "images: $(docker_ images -aq 2>/dev/null | wc -l) left in the private dockerd"
        kill -TERM "$DOCKERD_PID" 2>/dev/null
        if ! poll 30 0.2 bash -c "! kill -0 $DOCKERD_PID 2>/dev/null"; then
            log "  dockerd $DOCKERD_PID did not stop in 30 s: SIGKILL"
            kill -KILL "$DOCKERD_PID" 2>/dev/null
        fi
        log "  dockerd (pid $DOCKERD_PID) stopped"
    fi
    for p in $(our_pids); do
        log "  left-over process $p: $( { tr '\0' ' ' <"/proc/$p/cmdline"; } 2>/dev/null | cut -c1-120)"
        kill -KILL "$p" 2>/dev/null
        leftovers=1
    done
    for m in $(our_mounts); do
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
    done
    if [ -n "$(our_mounts)" ]; then
        log "  mounts still under $WORK: $(our_mounts | tr '\n' ' ')"
        leftovers=1
    fi
    NETWORK_IF=$(cat "$WORK/bridge" 2>/dev/null)
    if [ -n "$NETWORK_IF" ] && ip link show "$NETWORK_IF" >/dev/null 2>&1; then
        log "  bridge $NETWORK_IF still exists"
        leftovers=1
    fi
    CLEANUP_OK=""
    [ "$leftovers" -eq 0 ] && [ -z "$(our_pids)" ] && CLEANUP_OK=1
    log "  (cleanup: $(since "$t0") s)"
}

# The supervisor: runs the body in its own process group and waits for it.
# A signal here only interrupts `wait` and stops the body's group; the
# cleanup then runs here, outside any command substitution. (bash 5.2 can
# fail to run a trap that fires while it expands a command substitution,
# so a trap in the body itself is not reliable.)
supervise() {
    local body rc=0 interrupted="" killed="" deadline=0 passed failed t name
    local script_start
    script_start=$(now)
    [ "$(id -u)" -eq 0 ] || {
        log "tests/docker/run.sh must run as root: it starts its own dockerd and runs debootstrap"
        echo "docker: 0 passed, 1 failed"
        exit 1
    }
    # A short path: containerd's sockets live under the exec root.
    WORK=$(mktemp -d /tmp/rkvd.XXXXXX) || exit 1
    : >"$WORK/tally"
    : >"$WORK/steps"
    trap 'interrupted=TERM' TERM
    trap 'interrupted=INT' INT
    RAFTKV_DOCKER_RUN_ID=$RUN_ID RAFTKV_DOCKER_WORK=$WORK setsid bash "$SELF" --body &
    body=$!
    while kill -0 "$body" 2>/dev/null; do
        if [ -n "$interrupted" ] && [ "$deadline" -eq 0 ]; then
            log ""
            log "---- $interrupted received: stopping the test run ----"
            kill -TERM -- "-$body" 2>/dev/null
            deadline=$((SECONDS + 15))
        fi
        if [ "$deadline" -gt 0 ] && [ "$SECONDS" -ge "$deadline" ] && [ -z "$killed" ]; then
            kill -KILL -- "-$body" 2>/dev/null
            killed=1
        fi
        sleep 0.5 &
        wait $! 2>/dev/null
    done
    wait "$body" 2>/dev/null
    rc=$?
    trap '' TERM INT # the cleanup runs to its end
    cleanup
    passed=$(grep -c '^pass' "$WORK/tally")
    failed=$(grep -c '^fail' "$WORK/tally")
    if [ -n "$CLEANUP_OK" ]; then
        passed=$((passed + 1))
        log "  PASS  cleanup: no container, network, volume, image, dockerd, process or mount left"
    else
        failed=$((failed + 1))
        log "  FAIL  cleanup left something behind (see above)"
    fi
    if [ -n "$interrupted" ]; then
        failed=$((failed + 1))
        log "  FAIL  interrupted by SIG$interrupted"
    elif [ "$rc" -ne 0 ] && [ "$(grep -c '^fail' "$WORK/tally")" -eq 0 ]; then
        failed=$((failed + 1))
        log "  FAIL  the test body stopped with exit code $rc"
    fi
    printf '\n---- step times ----\n'
    while IFS=$'\t' read -r t name; do
        printf '  %8s s  %s\n' "$t" "$name"
    done <"$WORK/steps"
    printf '  %8s s  total\n' "$(since "$script_start")"
    [ -z "$(our_mounts)" ] && rm -rf --one-file-system "$WORK"
    echo
    echo "docker: $passed passed, $failed failed"
    [ "$failed" -eq 0 ]
    exit
}

# ---------------------------------------------------------------- the body

# The tests proper, run by the supervisor as `run.sh --body` in a process
# group of its own, with RAFTKV_DOCKER_WORK and RAFTKV_DOCKER_RUN_ID set.
body() {
    # ---------------------------------------------------------------- 1. tools

    step "install tools"
    # Cargo may live in ~/.cargo/bin when this runs outside CI.
    if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
    command -v cargo >/dev/null 2>&1 || fatal "cargo not found"
    need=()
    command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
    command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
    command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
    command -v jq >/dev/null 2>&1 || need+=(jq)
    if [ ${#need[@]} -gt 0 ]; then
        [ "${RAFTKV_DOCKER_NO_INSTALL:-}" != 1 ] || fatal "missing: ${need[*]} (RAFTKV_DOCKER_NO_INSTALL=1)"
        log "  installing ${need[*]}"
        export DEBIAN_FRONTEND=noninteractive
        # The packages' maintainer scripts would start a system dockerd; this
        # run starts its own, so tell invoke-rc.d not to (unless a policy is
        # already in place).
        made_policy=""
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            : >"$WORK/made-policy-rc.d"
            printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
            made_policy=1
        fi
        apt_opts=(-q -o DPkg::Lock::Timeout=300 -o Dpkg::Options::=--force-confdef
            -o Dpkg::Options::=--force-confold)
        quiet "$WORK/apt.log" apt-get "${apt_opts[@]}" update \
            && quiet "$WORK/apt.log" apt-get "${apt_opts[@]}" install -y \
                --no-install-recommends "${need[@]}"
        apt_rc=$?
        rm -f "$WORK/apt.log"
        [ -n "$made_policy" ] && rm -f /usr/sbin/policy-rc.d "$WORK/made-policy-rc.d"
        [ "$apt_rc" -eq 0 ] || fatal "apt-get install ${need[*]} failed"
    fi
    # The docker CLI of the docker.io package matches its daemon; another one
    # earlier in PATH (a newer static client, say) may not.
    find_clients
    [ -n "$DOCKER" ] || fatal "no docker client"
    [ ${#COMPOSE[@]} -gt 0 ] || fatal "neither docker-compose nor the docker compose plugin is installed"
    log "  $("$DOCKER" --version | sed -n 1p); $("${COMPOSE[@]}" version 2>/dev/null | sed -n 1p)"
    log "  $(dockerd --version); debootstrap $(dpkg-query -W -f '${Version}' debootstrap 2>/dev/null)"

    # ---------------------------------------------------------------- 2. dockerd

    step "start a private dockerd"
    mkdir -p "$WORK/data" "$WORK/exec" "$WORK/config" "$WORK/ctx" "$WORK/ctx-empty"
    echo '{}' >"$WORK/daemon.json"
    # A /24 for this daemon's networks that no host route (another engineer's
    # dockerd, a VPN) uses.
    subnet=""
    routes=$(ip -4 route show 2>/dev/null)
    for _ in $(seq 1 100); do
        cand="10.$((200 + RANDOM % 50)).$((RANDOM % 256))"
        if ! grep -qF "$cand." <<<"$routes"; then
            subnet="$cand.0/24"
            break
        fi
    done
    [ -n "$subnet" ] || fatal "no free /24 for the docker network"
    export DOCKER_HOST="unix://$WORK/docker.sock"
    export DOCKER_CONFIG="$WORK/config"
    unset DOCKER_CONTEXT DOCKER_TLS_VERIFY DOCKER_CERT_PATH
    # The classic builder: what the docker.io CLI uses by default, and it needs
    # no BuildKit session. The Dockerfile works with both.
    export DOCKER_BUILDKIT=0 COMPOSE_DOCKER_CLI_BUILD=0
    # Its own session: stopping the body's process group must not kill it
    # before the supervisor has removed the containers through it.
    setsid dockerd --config-file "$WORK/daemon.json" \
        --iptables=false --ip-forward=false --bridge=none \
        --data-root "$WORK/data" --exec-root "$WORK/exec" \
        -H "$DOCKER_HOST" --pidfile "$WORK/dockerd.pid" \
        --containerd-namespace "raftkv-test-$RUN_ID" \
        --containerd-plugins-namespace "raftkv-test-$RUN_ID-plugins" \
        --default-address-pool "base=$subnet,size=24" \
        >"$WORK/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    echo "$DOCKERD_PID" >"$WORK/dockerd.launched"
    dockerd_ready() {
        kill -0 "$DOCKERD_PID" 2>/dev/null || return 2
        docker_ info >/dev/null 2>&1
    }
    if ! poll 60 0.25 dockerd_ready; then
        tail -n 30 "$WORK/dockerd.log" | sed 's/^/  | /'
        fatal "dockerd did not come up within 60 s"
    fi
    log "  dockerd pid $DOCKERD_PID, socket $WORK/docker.sock, networks from $subnet"
    log "  storage driver $(docker_ info -f '{{.Driver}}' 2>/dev/null)"

    # ---------------------------------------------------------------- 3. base image

    step "base image (debootstrap minbase bookworm, or the cached rootfs)"
    tarball="$CACHE/debian-bookworm-minbase-rootfs.tar"
    if [ -s "$tarball" ] && [ "${RAFTKV_DOCKER_FRESH_BASE:-}" != 1 ]; then
        log "  using the cached rootfs $tarball ($(du -h "$tarball" | cut -f1))"
    else
        mirror=${RAFTKV_DOCKER_MIRROR:-}
        if [ -z "$mirror" ]; then
            # The mirror apt uses (deb822 or one-line sources), else debootstrap's default.
            mirror=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null \
                | awk '/^URIs:/ { print $2 }' | grep -v -- '-security' | grep '/debian/\?$' | sed -n 1p)
            [ -n "$mirror" ] || mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
                | awk '$1 == "deb" && $3 ~ /^bookworm$/ { print $2 }' | sed -n 1p)
        fi
        log "  debootstrap --variant=minbase bookworm ${mirror:-(its default mirror)}"
        rootfs="$WORK/rootfs"
        ok=""
        for attempt in 1 2; do
            rm -rf --one-file-system "$rootfs"
            if quiet "$WORK/debootstrap.log" debootstrap --variant=minbase bookworm "$rootfs" ${mirror:+"$mirror"}; then
                ok=1
                break
            fi
            log "  debootstrap attempt $attempt failed"
            for m in $(our_mounts); do umount "$m" 2>/dev/null || umount -l "$m"; done
        done
        [ -n "$ok" ] || fatal "debootstrap failed"
        # What a slim image leaves out: package caches and lists, docs, locales.
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
            "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
            "$rootfs"/usr/share/locale/*
        mkdir -p "$CACHE"
        tar --numeric-owner -C "$rootfs" -cf "$tarball.$RUN_ID.tmp" . \
            && mv -f "$tarball.$RUN_ID.tmp" "$tarball" || fatal "cannot write $tarball"
        rm -rf --one-file-system "$rootfs"
        log "  cached $tarball ($(du -h "$tarball" | cut -f1))"
    fi
    quiet "$WORK/import.log" docker_ import "$tarball" "$BASE_IMAGE" || fatal "docker import failed"
    log "  imported $BASE_IMAGE ($(docker_ image inspect -f '{{.Size}}' "$BASE_IMAGE" | awk '{ printf "%.0f MB", $1 / 1e6 }'))"

    # ---------------------------------------------------------------- 4. binary, image

    step "cargo build --release (host)"
    (cd "$ROOT" && cargo build --release --locked --bin raftkv) || fatal "cargo build --release failed"
    target_dir=${CARGO_TARGET_DIR:-$ROOT/target}
    [[ $target_dir = /* ]] || target_dir="$ROOT/$target_dir"
    RAFTKV="$target_dir/release/raftkv"
    [ -x "$RAFTKV" ] || fatal "no binary at $RAFTKV"
    # The image gets a copy without debug info (Cargo.toml keeps line tables
    # for profiling); the tests use the host binary as the CLI.
    if command -v strip >/dev/null 2>&1; then
        strip --strip-debug -o "$WORK/ctx/raftkv" "$RAFTKV" || fatal "strip failed"
    else
        cp "$RAFTKV" "$WORK/ctx/raftkv"
    fi
    chmod 755 "$WORK/ctx/raftkv"
    log "  $RAFTKV ($("$RAFTKV" --version)); image copy $(du -h "$WORK/ctx/raftkv" | cut -f1)"

    step "docker build (runtime-base stage + prebuilt binary)"
    quiet "$WORK/build-base.log" docker_ build --target runtime-base \
        --build-arg RUNTIME_IMAGE="$BASE_IMAGE" -t "$RUNTIME_BASE_IMAGE" \
        -f "$ROOT/Dockerfile" "$WORK/ctx-empty" || fatal "docker build --target runtime-base failed"
    quiet "$WORK/build.log" docker_ build --build-arg BASE_IMAGE="$RUNTIME_BASE_IMAGE" \
        -t "$IMAGE" -f "$ROOT/docker/Dockerfile.prebuilt" "$WORK/ctx" \
        || fatal "docker build -f docker/Dockerfile.prebuilt failed"
    out=$(docker_ run --rm --network none "$IMAGE" --version 2>&1)
    if [ "$out" = "$("$RAFTKV" --version)" ]; then
        pass "the image runs the binary ($out) as user $(docker_ run --rm --network none --entrypoint id "$IMAGE" -un 2>&1)"
    else
        fatal "the image does not run raftkv: $out"
    fi
    log "  image $IMAGE: $(docker_ image inspect -f '{{.Size}}' "$IMAGE" | awk '{ printf "%.0f MB", $1 / 1e6 }')"

    # ---------------------------------------------------------------- 5. tests

    step "docker-compose up"
    pick_ports || fatal "no free host ports"
    up_ok=""
    for attempt in 1 2 3; do
        if quiet "$WORK/up.log" compose up -d --no-build; then
            up_ok=1
            break
        fi
        # Another test may have taken a port between the check and the bind.
        compose down --volumes --timeout 5 >/dev/null 2>&1
        pick_ports again || break
    done
    [ -n "$up_ok" ] || fatal "docker-compose up failed"
    NETWORK="${PROJECT}_default"
    net_id=$(docker_ network inspect -f '{{.Id}}' "$NETWORK" 2>/dev/null)
    [ -n "$net_id" ] && echo "br-${net_id:0:12}" >"$WORK/bridge"
    log "  project $PROJECT: node-1..3 on 127.0.0.1:${PORT[node-1]},${PORT[node-2]},${PORT[node-3]}; network $NETWORK"
    NODES=$(urls)

    step "all three nodes healthy"
    t0=$(now)
    if poll 90 0.5 all_healthy; then
        pass "docker reports node-1, node-2, node-3 healthy after $(since "$t0") s (HEALTHCHECK: raftkv health)"
    else
        fail "not all healthy within 90 s: node-1 $(health_of node-1), node-2 $(health_of node-2), node-3 $(health_of node-3)"
    fi
    ok=1
    for s in "${SERVICES[@]}"; do
        out=$(rkv health --node "$(url_of "$s")" 2>&1) || ok=""
        [[ $out == "ok $s "* ]] || ok=""
        log "  $s via 127.0.0.1:${PORT[$s]}: $out"
    done
    [ -n "$ok" ] && pass "GET /health answers on every published port with the right node id" \
        || fail "GET /health through the published ports"
    if poll 30 0.5 leader_id "$NODES" >/dev/null; then
        rkv status --nodes "$NODES" | sed 's/^/  | /'
        pass "a leader is elected: $(rkv leader --nodes "$NODES")"
    else
        fail "no leader within 30 s"
    fi

    step "write on node 1, read on node 3"
    if put_acked "$(url_of node-1)" docker/greeting "hello from node-1" \
        && out=$(rkv get --nodes "$(url_of node-3)" docker/greeting 2>&1) \
        && [ "$out" = "docker/greeting = hello from node-1" ]; then
        pass "put via 127.0.0.1:${PORT[node-1]} only, linearizable get via 127.0.0.1:${PORT[node-3]} only: $out"
    else
        fail "write on node 1, read on node 3: ${out:-put failed}"
    fi
    # The nodes advertise node-N:800N, which the host cannot resolve: the CLI
    # must fall back to sending through the node it reached, which forwards.
    leader=$(leader_id "$NODES")
    follower=""
    for s in "${SERVICES[@]}"; do [ "$s" != "$leader" ] && { follower=$s; break; }; done
    leader_url=$(rkv leader --nodes "$NODES" 2>/dev/null | awk '{ print $2 }')
    if getent hosts "$leader" >/dev/null 2>&1; then
        log "  note: this host resolves $leader; the fallback path is not exercised"
    fi
    if put_acked "$(url_of "$follower")" docker/via-follower "forwarded" \
        && out=$(rkv get --nodes "$(url_of "$follower")" docker/via-follower 2>&1) \
        && [ "$out" = "docker/via-follower = forwarded" ]; then
        pass "leader advertises $leader_url (not resolvable here); put and get through follower $follower's port are forwarded"
    else
        fail "put/get through follower $follower (leader advertises $leader_url): ${out:-put failed}"
    fi
    # Informational: what one CLI call costs through the published ports
    # (process start included), 20 calls each.
    per_call() {
        local t0 i times=""
        for i in $(seq 1 20); do
            t0=$(now)
            "$@" >/dev/null 2>&1
            times="$times $(since "$t0")"
        done
        awk -v t="$times" 'BEGIN {
            n = split(t, a, " "); for (i = 1; i <= n; i++) { s += a[i]; if (a[i] > m) m = a[i] }
            printf "%.0f ms (max %.0f)", s * 1000 / n, m * 1000 }'
    }
    log "  per CLI call: put via leader $(per_call put_acked "$(url_of "$leader")" docker/latency x)," \
        "get via leader $(per_call rkv get --nodes "$(url_of "$leader")" docker/latency)," \
        "get via follower $(per_call rkv get --nodes "$(url_of "$follower")" docker/latency)," \
        "get --stale $(per_call rkv get --stale --nodes "$(url_of "$follower")" docker/latency)," \
        "health $(per_call rkv health --node "$(url_of "$follower")")"
    ok=1
    for i in $(seq 1 30); do
        s=${SERVICES[$((i % 3))]}
        put_acked "$(url_of "$s")" "docker/batch/$(printf '%03d' "$i")" "value-$i" || ok=""
    done
    [ -n "$ok" ] && pass "30 writes round-robin over the three ports, all acknowledged" \
        || fail "some of 30 round-robin writes were not acknowledged"

    step "docker kill the leader"
    old=$(leader_id "$NODES")
    cid=$(container_of "$old")
    t0=$(now)
    docker_ kill "$cid" >/dev/null || fail "docker kill $old"
    others=()
    for s in "${SERVICES[@]}"; do [ "$s" != "$old" ] && others+=("$s"); done
    new_leader() {
        local l
        l=$(leader_id "$(urls "${others[@]}")" 1000) && [ "$l" != "$old" ] && echo "$l"
    }
    if new=$(poll 30 0.1 new_leader); then
        t_leader=$(since "$t0")
        if poll 30 0.1 put_acked "$NODES" docker/after-leader-kill "written after $old was killed"; then
            t_write=$(since "$t0")
            msg="killed $old (leader); $new leads after ${t_leader} s; first write acknowledged after ${t_write} s"
            if awk -v t="$t_write" -v m="$FAILOVER_MAX" 'BEGIN { exit !(t <= m) }'; then
                pass "$msg"
            else
                fail "$msg (more than $FAILOVER_MAX s)"
            fi
        else
            fail "killed $old; $new leads after ${t_leader} s, but no write was acknowledged within 30 s"
        fi
    else
        fail "killed $old; no new leader within 30 s"
    fi
    log "  $old's container: $(docker_ inspect -f '{{.State.Status}} (exit {{.State.ExitCode}}), restarts {{.RestartCount}}' "$cid")"
    t0=$(now)
    quiet "$WORK/start.log" compose start "$old"
    if poll 60 0.5 node_healthy "$old" && new=$(leader_id "$NODES") && poll 30 0.25 caught_up "$old" "$new" \
        && stale_value_is "$old" docker/after-leader-kill "written after $old was killed"; then
        pass "docker-compose start $old: healthy again and caught up (stale read has the write made while it was dead) in $(since "$t0") s"
    else
        fail "$old did not come back healthy and caught up within the deadline"
    fi

    step "restart policy after a crash"
    # A process that dies on its own (unlike `docker kill`, which Docker counts
    # as a manual stop) is restarted by the unless-stopped policy. SIGKILL to
    # the node's host PID stands in for a crash.
    victim=${others[0]}
    cid=$(container_of "$victim")
    pid=$(docker_ inspect -f '{{.State.Pid}}' "$cid")
    restarts_before=$(docker_ inspect -f '{{.RestartCount}}' "$cid")
    t0=$(now)
    if [ -n "$pid" ] && [ "$pid" -gt 1 ] && kill -KILL "$pid"; then
        restarted() {
            [ "$(docker_ inspect -f '{{.RestartCount}} {{.State.Running}}' "$cid")" = "$((restarts_before + 1)) true" ]
        }
        if poll 30 0.2 restarted && poll 60 0.5 node_healthy "$victim"; then
            l=$(leader_id "$NODES") && put_acked "$NODES" docker/after-crash "written after $victim crashed" \
                && poll 30 0.25 caught_up "$victim" "$l" \
                && stale_value_is "$victim" docker/after-crash "written after $victim crashed" \
                && pass "$victim's process killed (pid $pid): Docker restarted it, healthy and caught up after $(since "$t0") s" \
                || fail "$victim restarted but did not catch up"
        else
            fail "$victim was not restarted by its restart policy within the deadline"
        fi
    else
        fail "could not find or kill $victim's process (pid '$pid')"
    fi

    step "docker-compose down, then up (volumes kept)"
    t0=$(now)
    quiet "$WORK/down1.log" compose down --timeout 20 || fail "docker-compose down"
    t_down=$(since "$t0")
    vols=$(docker_ volume ls -q --filter "label=com.docker.compose.project=$PROJECT" | wc -l)
    running=$(docker_ ps -q | wc -l)
    log "  down in ${t_down} s: $running containers running, $vols volumes kept"
    [ "$running" -eq 0 ] && [ "$vols" -eq 3 ] && pass "down stops and removes the three containers, keeps the three named volumes" \
        || fail "after down: $running containers running, $vols volumes (want 0 and 3)"
    t0=$(now)
    quiet "$WORK/up2.log" compose up -d --no-build || fail "docker-compose up (second time)"
    poll 90 0.5 all_healthy || fail "not all healthy after up within 90 s"
    log "  up and healthy again in $(since "$t0") s"
    bad=$(count_lost)
    [ "$bad" -eq 0 ] && pass "all ${#ACKED_KEYS[@]} acknowledged writes read back (linearizable) after down/up, $(since "$t0") s after up" \
        || fail "$bad of ${#ACKED_KEYS[@]} acknowledged writes missing or wrong after down/up"

    # partition NODE DESCRIPTION: cuts NODE off the compose network, checks the
    # other two keep serving writes and the isolated node serves no
    # linearizable read, then reconnects it and waits for it to catch up.
    partition() {
        local victim=$1 what=$2 s cid t0 lead ok out rest=()
        for s in "${SERVICES[@]}"; do [ "$s" != "$victim" ] && rest+=("$s"); done
        local majority
        majority=$(urls "${rest[@]}")
        cid=$(container_of "$victim")
        t0=$(now)
        docker_ network disconnect "$NETWORK" "$cid" || { fail "network disconnect $victim"; return; }
        local t_leader="" t_first
        if [ "$what" = leader ]; then
            other_leader() {
                local l
                l=$(leader_id "$majority" 1000) && [ "$l" != "$victim" ]
            }
            poll 30 0.1 other_leader && t_leader=$(since "$t0")
            log "  ${rest[*]} elected $(leader_id "$majority") ${t_leader:+after $t_leader s}"
        fi
        # The majority (after electing a new leader if need be) keeps taking writes.
        if poll 30 0.1 put_acked "$majority" "docker/partition/$victim/first" "majority write 1"; then
            t_first=$(since "$t0")
            ok=1
            for i in $(seq 2 10); do
                put_acked "$majority" "docker/partition/$victim/w$i" "majority write $i" || ok=""
            done
            put_acked "$majority" docker/latest "while $victim was cut off" || ok=""
            lead=$(leader_id "$majority")
            [ -n "$ok" ] && pass "$what $victim cut off: ${rest[*]} keep serving (leader $lead); first write after ${t_first} s, 11 more acknowledged within $(since "$t0") s" \
                || fail "$what $victim cut off: some writes to ${rest[*]} were not acknowledged"
        else
            fail "$what $victim cut off: no write acknowledged by ${rest[*]} within 30 s"
            lead=$(leader_id "$majority")
        fi
        # Inside the isolated container (its published port goes with its
        # network): a linearizable read must not be served, nor a write acked.
        # Inside the compose network node-N listens on 800N.
        local inner="http://127.0.0.1:800${victim#node-}"
        if out=$(docker_ exec "$cid" raftkv get --nodes "$inner" --timeout-ms 4000 docker/latest 2>&1); then
            fail "isolated $victim served a linearizable read: $out"
        else
            pass "isolated $victim serves no linearizable read ($(head -n 1 <<<"$out" | cut -c1-100))"
        fi
        if [ "$what" = leader ]; then
            if out=$(docker_ exec "$cid" raftkv put --nodes "$inner" --timeout-ms 4000 docker/isolated "never acknowledged" 2>&1); then
                fail "isolated old leader $victim acknowledged a write: $out"
            else
                pass "isolated old leader $victim acknowledges no write ($(head -n 1 <<<"$out" | cut -c1-100))"
            fi
        fi
        t0=$(now)
        docker_ network connect --alias "$victim" "$NETWORK" "$cid" || { fail "network connect $victim"; return; }
        lead=$(leader_id "$NODES" 5000)
        if poll 30 0.25 caught_up "$victim" "$lead" \
            && poll 10 0.25 stale_value_is "$victim" docker/latest "while $victim was cut off"; then
            pass "$victim reconnected: applied index $(status_field "$victim" applied_index) = leader $lead's $(status_field "$lead" applied_index), stale read has the latest value, after $(since "$t0") s"
        else
            fail "$victim did not catch up within 30 s of reconnecting (applied $(status_field "$victim" applied_index), leader $lead $(status_field "$lead" applied_index))"
        fi
    }

    step "network partition: a follower"
    leader=$(leader_id "$NODES")
    for s in node-3 node-2 node-1; do [ "$s" != "$leader" ] && { victim=$s; break; }; done
    partition "$victim" follower

    step "network partition: the leader"
    leader=$(leader_id "$NODES")
    partition "$leader" leader

    step "every acknowledged write, at the end"
    bad=$(count_lost)
    [ "$bad" -eq 0 ] && pass "all ${#ACKED_KEYS[@]} acknowledged writes read back (linearizable)" \
        || fail "$bad of ${#ACKED_KEYS[@]} acknowledged writes missing or wrong"
    rkv status --nodes "$NODES" | sed 's/^/  | /'

    step_end
}

if [ "${1:-}" = --body ]; then
    [ -n "$WORK" ] && [ -d "$WORK" ] || { echo "--body is for the supervisor" >&2; exit 2; }
    body
    exit 0
fi
supervise

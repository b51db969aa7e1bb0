#!/usr/bin/env bash
# End-to-end test of the container testnet (deploy/docker/):
#
#  1. builds the image (deploy/docker/build.sh: no registry needed) and
#     generates fresh keys and configs (loopmix-testnet-gen, 20 s epochs);
#  2. starts 3 authorities, 3 layers x 2 mixes, 2 providers, an exit, a
#     SOCKS5 client and a file server with docker-compose; waits until every
#     node is listed in the signed topology, every /metrics answers and both
#     clients' loop cover packets come back;
#  3. downloads a random file from the file server container through the
#     published SOCKS5 port (curl --socks5-hostname) and compares SHA-256;
#  4. docker kills one mix, waits for the first topology without it, and
#     downloads a second file intact;
#  5. provider disconnect: a receiver client registers at provider1 and goes
#     offline; a sender at provider0 sends 3 messages (stored in provider1's
#     inbox); provider1 is disconnected from the network (docker network
#     disconnect), 3 more messages are sent while it is away (the sender
#     retransmits), provider1 is reconnected; the receiver comes back and
#     must get all 6 messages from the inbox;
#  6. tears everything down (also on failure or Ctrl-C) and prints timings.
#
# Skips (exit 0) with a message when no Docker engine is reachable.
# Environment: LOOPMIX_SUBNET (default 10.77.0, a free /24 for the testnet),
# LOOPMIX_SKIP_CARGO=1 (reuse target/release), LOOPMIX_KEEP_IMAGE=1 (keep
# the image afterwards), LOOPMIX_KEEP=1 (keep the generated directory).
# shellcheck disable=SC2317  # functions run through trap and wait_until
set -euo pipefail
# The whole script is one compound command, read before it runs: editing
# this file during a run cannot change what the run does.
{
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# cargo honours CARGO_TARGET_DIR; so must we.
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
# LOOPMIX_PROFILE=dev reuses what `cargo test` built (CI); default release.
case "${LOOPMIX_PROFILE:-release}" in
    dev) PROFILE_DIR=debug ;;
    *) PROFILE_DIR=release ;;
esac
PROJECT=loopmix-testnet
IMAGE=${LOOPMIX_IMAGE:-loopmix-testnet:latest}
SUBNET=${LOOPMIX_SUBNET:-10.77.0}
NETWORK="${PROJECT}_mixnet"
READY_TIMEOUT=240
T_START=$(date +%s)
declare -a TIMINGS=()

log() { printf '[test.sh %4ds] %s\n' "$(($(date +%s) - T_START))" "$*" >&2; }
fail() {
    log "FAIL: $*"
    exit 1
}
# timing NAME START: records how long a phase took.
timing() { TIMINGS+=("$(printf '%-34s %4d s' "$1" "$(($(date +%s) - $2))")"); }

if ! docker info >/dev/null 2>&1; then
    echo "deploy/test.sh: SKIPPED: no Docker engine reachable (docker info failed); the container testnet was not tested." >&2
    exit 0
fi
if docker-compose version >/dev/null 2>&1; then
    COMPOSE_BIN=(docker-compose)
elif docker compose version >/dev/null 2>&1; then
    COMPOSE_BIN=(docker compose)
else
    echo "deploy/test.sh: SKIPPED: Docker is running but neither docker-compose nor 'docker compose' is installed." >&2
    exit 0
fi
for tool in curl sha256sum base64 cargo; do
    command -v "$tool" >/dev/null 2>&1 || fail "$tool is required"
done

WORK=$(mktemp -d /tmp/loopmix-testnet.XXXXXX)
TN="$WORK/testnet"
compose() { "${COMPOSE_BIN[@]}" -p "$PROJECT" --env-file "$TN/testnet.env" -f "$ROOT/deploy/docker/docker-compose.yml" "$@"; }
# Extra containers started by this script (docker run), removed at the end.
SPARE=(loopmix-testnet-sender loopmix-testnet-receiver)

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    if [ "$rc" -ne 0 ] && [ -f "$TN/testnet.env" ]; then
        mkdir -p "$WORK/logs"
        for c in $(compose ps -q 2>/dev/null); do
            name=$(docker inspect --format '{{.Name}}' "$c" | tr -d /)
            docker logs "$c" >"$WORK/logs/$name.log" 2>&1
        done
        log "container logs kept in $WORK/logs"
        LOOPMIX_KEEP=1
    fi
    log "tearing down"
    for c in "${SPARE[@]}"; do docker rm -f "$c" >/dev/null 2>&1; done
    if [ -f "$TN/testnet.env" ]; then
        compose down --volumes --remove-orphans --timeout 5 >/dev/null 2>&1
    fi
    docker network rm "$NETWORK" >/dev/null 2>&1
    if [ -z "${LOOPMIX_KEEP_IMAGE:-}" ]; then
        docker image rm "$IMAGE" >/dev/null 2>&1
    fi
    if [ -z "${LOOPMIX_KEEP:-}" ]; then
        rm -rf "$WORK"
    else
        log "generated files kept in $WORK"
    fi
    echo >&2
    echo "deploy/test.sh timings:" >&2
    for t in "${TIMINGS[@]}"; do echo "  $t" >&2; done
    echo "  total                              $(($(date +%s) - T_START)) s" >&2
    if [ "$rc" -eq 0 ]; then echo "deploy/test.sh: PASS" >&2; else echo "deploy/test.sh: FAIL (exit $rc)" >&2; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A previous run that was killed before its teardown.
for c in "${SPARE[@]}"; do docker rm -f "$c" >/dev/null 2>&1 || true; done
if [ -n "$(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT")" ]; then
    log "removing containers of an earlier run"
    docker ps -aq --filter "label=com.docker.compose.project=$PROJECT" | xargs docker rm -f >/dev/null
fi
docker network rm "$NETWORK" >/dev/null 2>&1 || true

# ---- 1. image and configs ------------------------------------------------
t=$(date +%s)
log "building the image (deploy/docker/build.sh)"
"$ROOT/deploy/docker/build.sh"
timing "image build (cargo + import)" "$t"

t=$(date +%s)
"$TARGET/$PROFILE_DIR/loopmix-testnet-gen" --out "$TN" --subnet "$SUBNET" --epoch-length 20s >/dev/null
EXIT_ADDRESS=$(sed -n 's/^LOOPMIX_EXIT_ADDRESS=//p' "$TN/testnet.env")
RECEIVER_ADDRESS=$(sed -n 's/.*"receiver_address": "\([^"]*\)".*/\1/p' "$TN/testnet.json")
if [ -z "$EXIT_ADDRESS" ] || [ -z "$RECEIVER_ADDRESS" ]; then fail "generated testnet lacks addresses"; fi
head -c 262144 /dev/urandom >"$TN/www/file1.bin"
head -c 262144 /dev/urandom >"$TN/www/file2.bin"
timing "config generation" "$t"

# ---- 2. start and wait until ready ---------------------------------------
t=$(date +%s)
log "starting the testnet (project $PROJECT, network $SUBNET.0/24)"
compose up -d >/dev/null 2>"$WORK/compose-up.log" || {
    cat "$WORK/compose-up.log" >&2
    fail "docker-compose up failed"
}
SOCKS=$(compose port socks5 1080 | tail -n1)
[ -n "$SOCKS" ] || fail "no published SOCKS5 port"
log "SOCKS5 proxy published on $SOCKS"

AUTHS=("$SUBNET.10:8700" "$SUBNET.11:8700" "$SUBNET.12:8700")
NODES=()
for i in 20 21 22 23 24 25 30 31; do NODES+=("$SUBNET.$i:9189"); done
CLIENTS=("$SUBNET.40:9190" "$SUBNET.41:9190")

# metric ADDR NAME: the sum of NAME's samples at http://ADDR/metrics (empty
# when unreachable).
metric() {
    curl -fsS --max-time 3 "http://$1/metrics" 2>/dev/null |
        awk -v m="$2" '$1 == m || index($1, m "{") == 1 { s += $NF; n++ } END { if (n) print s }'
}
wait_until() { # wait_until TIMEOUT WHAT COMMAND...
    local secs=$1 what=$2 limit
    limit=$(($(date +%s) + secs))
    shift 2
    until "$@"; do
        [ "$(date +%s)" -lt "$limit" ] || fail "timed out after ${secs} s waiting for $what"
        sleep 1
    done
}
all_listed() {
    local a
    for a in "${NODES[@]}"; do [ "$(metric "$a" loopmix_node_listed)" = 1 ] || return 1; done
}
loops_back() {
    local a v
    for a in "${CLIENTS[@]}"; do
        v=$(metric "$a" loopmix_client_loop_rtt_seconds_count)
        [ -n "$v" ] && [ "${v%.*}" -gt 0 ] || return 1
    done
}
wait_until "$READY_TIMEOUT" "every mix and provider to be listed" all_listed
wait_until 60 "the clients' loop cover packets to return" loops_back
for a in "${AUTHS[@]}" "${NODES[@]}" "${CLIENTS[@]}"; do
    curl -fsS --max-time 3 "http://$a/metrics" >/dev/null || fail "http://$a/metrics does not answer"
done
log "ready: 8 nodes listed, 13 /metrics endpoints answer, loops return"
timing "compose up to ready" "$t"

# fetch NAME: downloads www/NAME through the SOCKS5 port and checks it.
fetch() {
    local name=$1 t0 want got
    t0=$(date +%s)
    curl -fsS --max-time 180 --retry 0 --socks5-hostname "$SOCKS" \
        "http://fileserver:8000/$name" -o "$WORK/$name" || fail "download of $name failed"
    want=$(sha256sum <"$TN/www/$name" | cut -d' ' -f1)
    got=$(sha256sum <"$WORK/$name" | cut -d' ' -f1)
    [ "$want" = "$got" ] || fail "$name: SHA-256 $got, expected $want"
    log "$name: $(stat -c %s "$WORK/$name") bytes in $(($(date +%s) - t0)) s through the mixnet, SHA-256 $got matches"
}

# ---- 3. first download ---------------------------------------------------
t=$(date +%s)
fetch file1.bin
timing "download 1 (256 KiB)" "$t"

# ---- 4. kill a mix -------------------------------------------------------
t=$(date +%s)
VICTIM=mix2
VICTIM_ADDR="$SUBNET.22:1789"
docker kill "$(compose ps -q "$VICTIM")" >/dev/null
log "killed $VICTIM ($VICTIM_ADDR); waiting for a topology without it"
# The topology document auth0 serves now (JSON; the API wraps it in
# unpadded base64).
current_topology() {
    local b64
    b64=$(curl -fsS --max-time 3 "http://${AUTHS[0]}/v1/topology/current" |
        sed -n 's/.*"document":"\([^"]*\)".*/\1/p') || return 1
    while [ $((${#b64} % 4)) -ne 0 ]; do b64="$b64="; done
    base64 -d <<<"$b64"
}
topology_without_victim() {
    local doc
    doc=$(current_topology) || return 1
    grep -q "\"$SUBNET.20:1789\"" <<<"$doc" && ! grep -q "\"$VICTIM_ADDR\"" <<<"$doc"
}
wait_until 120 "a topology without $VICTIM" topology_without_victim
epoch=$(current_topology | grep -o '"epoch":[0-9]*' | head -n1 | cut -d: -f2)
log "topology of epoch $epoch (in force) lists no $VICTIM, $(($(date +%s) - t)) s after the kill"
timing "kill mix -> topology without it" "$t"
t=$(date +%s)
fetch file2.bin
timing "download 2 (256 KiB, mix dead)" "$t"

# ---- 5. provider disconnect ----------------------------------------------
t=$(date +%s)
client() { # client NAME ARGS...: loopmix-client with NAME's config, in a container
    local name=$1
    shift
    docker run --rm --name "loopmix-testnet-$name" --network "$NETWORK" \
        --user "$(stat -c %u:%g "$TN/$name")" -e NO_COLOR=1 -e RUST_LOG=warn \
        -v "$TN/$name:/loopmix" "$IMAGE" loopmix-client "$@" --config /loopmix/client.toml
}
send() {
    client sender send --to "$RECEIVER_ADDRESS" --message "$1" >>"$WORK/send.log" 2>&1 ||
        fail "sending $1 failed: $(tail -n3 "$WORK/send.log")"
}
RUN=$$
log "registering the receiver at provider1"
client receiver receive --timeout 5 >/dev/null 2>&1 || true
for i in 1 2 3; do send "before-$RUN-$i"; done
log "3 messages acknowledged by provider1 (stored, fsync'd); disconnecting provider1"
P1=$(compose ps -q provider1)
docker network disconnect "$NETWORK" "$P1"
t_disc=$(date +%s)
(for i in 1 2 3; do send "during-$RUN-$i"; done) &
SENDER_PID=$!
sleep 12
docker network connect --ip "$SUBNET.31" "$NETWORK" "$P1"
log "provider1 reconnected after $(($(date +%s) - t_disc)) s"
wait "$SENDER_PID" || fail "messages sent while provider1 was away were not delivered"
log "the 3 messages sent during the partition reached provider1 $(($(date +%s) - t_disc)) s after it left"
wait_until 60 "provider1 to be listed again" \
    bash -c "[ \"\$(curl -fsS --max-time 3 http://$SUBNET.31:9189/metrics | awk '\$1==\"loopmix_node_listed\"{print \$2}')\" = 1 ]"
client receiver receive --count 6 --timeout 90 >"$WORK/received.txt" 2>"$WORK/receive.log" ||
    fail "receiver failed: $(tail -n3 "$WORK/receive.log")"
expected=$(for p in before during; do for i in 1 2 3; do echo "$p-$RUN-$i"; done; done | sort)
got=$(sort "$WORK/received.txt")
if [ "$expected" != "$got" ]; then
    printf 'expected:\n%s\ngot:\n%s\n' "$expected" "$got" >&2
    fail "the receiver did not get exactly the 6 messages"
fi
log "receiver got all 6 messages from provider1's inbox: $(tr '\n' ' ' <"$WORK/received.txt")"
timing "provider disconnect/reconnect" "$t"
log "all checks passed"
exit 0
}

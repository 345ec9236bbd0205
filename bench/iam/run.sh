#!/usr/bin/env bash
# iam: access-token verification throughput offline (no network), then `ultracloud up` populated
# with PRINCIPALS principals and BINDINGS role bindings through iam's REST API, and
# POST /v1/authorize and POST /v1/tokens over loopback at fixed concurrencies.
# See bench/iam/README.md.
#
# Environment (all optional):
#   DURATION=10          seconds measured per row (after WARMUP)
#   WARMUP=1             seconds of load before measuring
#   VERIFY_THREADS="1 N" thread counts of the offline rows (N = nproc)
#   VERIFY_KINDS=verify,verify-distinct,authenticate,authenticate-distinct,sign,ed25519
#   PERMS=40             permission patterns in the offline bench's token
#   ORGS=1  PROJECTS=1000  ROLES=10  PRINCIPALS=10000  BINDINGS=100000
#   USERS_EVERY=10       every Nth principal is a user (the rest service accounts)
#   SAMPLE=64            service accounts given an API key; their tokens drive the load
#   POPULATE_CONCURRENCY=32
#   AUTHORIZE_CONCURRENCY="1 16"   operator asks about a token, allowed
#   SELF_CONCURRENCY="1 16"        principal asks about itself (no token in the body), allowed
#   DENY_CONCURRENCY="1 16"        operator asks, denied (iam audits every denial)
#   TOKEN_CONCURRENCY="1 16"       POST /v1/tokens, api_key grant
#                        (empty or 0: skip that row set)
#   SKIP_VERIFY=0        1: skip the offline rows      SKIP_SERVER=0  1: offline rows only
#   IAM_LOG=info         the node's [log] level (info logs one line per request)
#   BENCH_TMPDIR=/var/tmp  where the data directory goes (must be a real disk, not tmpfs)
#   SKIP_BUILD=0         1: use the existing target/release binaries
#   KEEP_DATA=0          1: keep the data directory after the run
set -euo pipefail

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-1}
VERIFY_THREADS=${VERIFY_THREADS-"1 $(nproc)"}
VERIFY_KINDS=${VERIFY_KINDS:-verify,verify-distinct,authenticate,authenticate-distinct,sign,ed25519}
PERMS=${PERMS:-40}
ORGS=${ORGS:-1}
PROJECTS=${PROJECTS:-1000}
ROLES=${ROLES:-10}
PRINCIPALS=${PRINCIPALS:-10000}
BINDINGS=${BINDINGS:-100000}
USERS_EVERY=${USERS_EVERY:-10}
SAMPLE=${SAMPLE:-64}
POPULATE_CONCURRENCY=${POPULATE_CONCURRENCY:-32}
AUTHORIZE_CONCURRENCY=${AUTHORIZE_CONCURRENCY-"1 16"}
SELF_CONCURRENCY=${SELF_CONCURRENCY-"1 16"}
DENY_CONCURRENCY=${DENY_CONCURRENCY-"1 16"}
TOKEN_CONCURRENCY=${TOKEN_CONCURRENCY-"1 16"}
SKIP_VERIFY=${SKIP_VERIFY:-0}
SKIP_SERVER=${SKIP_SERVER:-0}
IAM_LOG=${IAM_LOG:-info}
BENCH_TMPDIR=${BENCH_TMPDIR:-/var/tmp}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_DATA=${KEEP_DATA:-0}

# `ultracloud up` on 127.0.0.240 (uc-testkit uses 127.0.0.10+, bench/chainfire 127.0.0.200–213,
# bench/flaredb 127.0.0.230+), ports 26790–26860.
IP=127.0.0.240
NODE_PORT=26820
CF_CLIENT_PORT=26790
CF_PEER_PORT=26800
CF_ADMIN_PORT=26810
FDB_REST_PORT=26830
FDB_PG_PORT=26840
FDB_PEER_PORT=26850
IAM_PORT=26860

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"

die() { echo "run.sh: $*" >&2; exit 1; }
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

command -v curl >/dev/null || die "curl not found (apt-get install curl)"

if [[ $SKIP_BUILD != 1 ]]; then
    log "building (release)"
    cargo build --release -p ultracloud -p uc-bench-loadgen
fi
# What was built (read right after the build: the tree may change during the run).
source_desc="$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$repo" status --porcelain -- crates 2>/dev/null | grep -q . && echo " + uncommitted changes in crates/" || true)"
ultracloud=$repo/target/release/ultracloud
loadgen=$repo/target/release/uc-bench-loadgen
[[ -x $ultracloud && -x $loadgen ]] || die "release binaries missing (run without SKIP_BUILD=1)"

stamp=$(date +%Y%m%d-%H%M%S)
results_dir=$repo/bench/results
mkdir -p "$results_dir"
results=$results_dir/iam-$stamp.jsonl
summary=$results_dir/iam-$stamp.txt
logs_dir=$results_dir/iam-$stamp-logs
: >"$results"

mkdir -p "$BENCH_TMPDIR"
work=$(mktemp -d "$BENCH_TMPDIR/uc-bench-iam.XXXXXX")
fstype=$(df --output=fstype "$work" | tail -n 1)
if [[ $fstype == tmpfs || $fstype == ramfs ]]; then
    log "WARNING: $work is on $fstype: fsync costs nothing there; set BENCH_TMPDIR to a real disk"
fi

pid=""            # ultracloud up
data=$work/data

stop_server() {
    [[ -n $pid ]] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "ultracloud up (pid $pid) did not stop after SIGTERM; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    pid=""
    mkdir -p "$logs_dir"
    # At info, the request log is ~1 line per iam request and per flaredb statement (~150 MB).
    gzip -c "$work/up.log" >"$logs_dir/up.log.gz" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_server
    if [[ $KEEP_DATA == 1 ]]; then
        log "data kept in $work"
    else
        rm -rf "$work"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

check_alive() {
    if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
        log "ultracloud up (pid $pid) exited; log:"
        tail -n 30 "$work/up.log" >&2 || true
        pid=""
        die "server exited"
    fi
}

wait_ready() {
    local url deadline=$((SECONDS + 120))
    for url in "$@"; do
        until curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; do
            if ((SECONDS > deadline)); then
                log "not ready: $url"
                tail -n 30 "$work/up.log" >&2 || true
                die "ultracloud up did not become ready"
            fi
            check_alive
            sleep 0.2
        done
    done
}

# CPU ticks (1/100 s) of the server, and busy ticks of the whole machine.
server_ticks() {
    [[ -n $pid ]] || { echo 0; return; }
    sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{print $12 + $13}' || echo 0
}
busy_ticks() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8}' /proc/stat; }
steal_ticks() { awk '/^cpu /{print $9}' /proc/stat; }

# Runs one `uc-bench-loadgen iam …` call and appends its JSON lines to the results, each with
# the call's wall time, the server's CPU and everybody else's CPU during it.
measure() {
    local what=$1
    shift
    local out t0 s0 b0 st0 t1 s1 b1 st1 line lg extra
    log "$what"
    t0=$(date +%s%N) s0=$(server_ticks) b0=$(busy_ticks) st0=$(steal_ticks)
    if out=$("$loadgen" iam "$@" 2>"$work/loadgen.err"); then
        t1=$(date +%s%N) s1=$(server_ticks) b1=$(busy_ticks) st1=$(steal_ticks)
        lg=$(tail -n 1 <<<"$out" | grep -o '"loadgen_cpu_s":[0-9.e+-]*' | cut -d: -f2)
        extra=$(awk -v t0="$t0" -v t1="$t1" -v s0="$s0" -v s1="$s1" -v b0="$b0" -v b1="$b1" -v st="$((st1 - st0))" -v lg="${lg:-0}" \
            'BEGIN { srv = (s1 - s0) / 100; other = (b1 - b0) / 100 - srv - lg; if (other < 0) other = 0;
                     printf "\"wall_s\":%.3f,\"server_cpu_s\":%.2f,\"other_cpu_s\":%.2f,\"steal_cpu_s\":%.2f,", (t1 - t0) / 1e9, srv, other, st / 100 }')
        while IFS= read -r line; do
            [[ -n $line ]] || continue
            if [[ $line == *'"wall_s"'* ]]; then
                echo "$line" >>"$results"   # verify: per-row wall and CPU are in the line itself
            else
                echo "{$extra${line#\{}" >>"$results"
            fi
            echo "  ${line:0:400}" >&2
        done <<<"$out"
        cat "$work/loadgen.err" >&2
    else
        log "loadgen FAILED for $what:"
        cat "$work/loadgen.err" >&2
    fi
    check_alive
}

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
log "results: $results"

if [[ $SKIP_VERIFY != 1 ]]; then
    threads=$(tr ' ' ',' <<<"$VERIFY_THREADS" | sed 's/^,*//; s/,*$//; s/,,*/,/g')
    measure "offline: $VERIFY_KINDS, threads $threads" verify --kinds "$VERIFY_KINDS" \
        --threads "$threads" --perms "$PERMS" --duration "$DURATION" --warmup "$WARMUP"
fi

populate_line=""
if [[ $SKIP_SERVER != 1 ]]; then
    mkdir -p "$data"
    cat >"$work/node.toml" <<EOF
[node]
name = "bench-iam"
bind = "$IP"
port = $NODE_PORT

[log]
level = "$IAM_LOG"

[http]
shutdown_grace_secs = 1

[chainfire]
client_port = $CF_CLIENT_PORT
peer_port = $CF_PEER_PORT
admin_port = $CF_ADMIN_PORT

[flaredb]
rest_port = $FDB_REST_PORT
pg_port = $FDB_PG_PORT
peer_port = $FDB_PEER_PORT

[iam]
port = $IAM_PORT
EOF
    log "starting ultracloud up in $data"
    "$ultracloud" up --config "$work/node.toml" --data-dir "$data" >"$work/up.log" 2>&1 &
    pid=$!
    wait_ready "http://$IP:$NODE_PORT/readyz" "http://$IP:$IAM_PORT/healthz" "http://$IP:$IAM_PORT/v1/jwks"
    admin_file=$data/secrets/admin-token
    for _ in $(seq 50); do [[ -s $admin_file ]] && break; sleep 0.1; done
    [[ -s $admin_file ]] || die "no admin token at $admin_file"
    iam_url=http://$IP:$IAM_PORT

    measure "populate: $ORGS orgs, $PROJECTS projects, $ROLES roles/org, $PRINCIPALS principals, $BINDINGS bindings, $SAMPLE API keys, $POPULATE_CONCURRENCY in flight" \
        populate --url "$iam_url" --admin-token-file "$admin_file" --orgs "$ORGS" \
        --projects "$PROJECTS" --roles "$ROLES" --principals "$PRINCIPALS" --users-every "$USERS_EVERY" \
        --bindings "$BINDINGS" --sample "$SAMPLE" --concurrency "$POPULATE_CONCURRENCY" \
        --state "$work/state.json"
    [[ -s $work/state.json ]] || die "populate wrote no state"
    data_size=$(du -sh "$data" | cut -f1)
    log "data directory after populate: $data_size"

    common=(--state "$work/state.json" --admin-token-file "$admin_file" --duration "$DURATION" --warmup "$WARMUP")
    for c in $AUTHORIZE_CONCURRENCY; do
        [[ $c == 0 ]] || measure "authorize, operator, allowed, c=$c" load "${common[@]}" --workload authorize --as operator --decision allow --concurrency "$c"
    done
    for c in $SELF_CONCURRENCY; do
        [[ $c == 0 ]] || measure "authorize, principal for itself, allowed, c=$c" load "${common[@]}" --workload authorize --as principal --decision allow --concurrency "$c"
    done
    for c in $DENY_CONCURRENCY; do
        [[ $c == 0 ]] || measure "authorize, operator, denied, c=$c" load "${common[@]}" --workload authorize --as operator --decision deny --concurrency "$c"
    done
    for c in $TOKEN_CONCURRENCY; do
        [[ $c == 0 ]] || measure "tokens (api_key grant), c=$c" load "${common[@]}" --workload token --concurrency "$c"
    done
    populate_line="data directory after populate: $data_size; iam log level $IAM_LOG"
    stop_server
fi

{
    echo "iam — $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(uname -r)"
    echo "ultracloud $("$ultracloud" version 2>/dev/null | awk '$1 == "version" {print $2}') (release build), source: $source_desc"
    echo "measured ${DURATION}s per row after ${WARMUP}s warm-up; data on $fstype ($BENCH_TMPDIR)"
    [[ -z $populate_line ]] || echo "$populate_line"
    echo "load average at start: $load_start; at end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
    "$loadgen" iam report "$results"
} | tee "$summary"
log "results: $results, table: $summary, server log: $logs_dir"

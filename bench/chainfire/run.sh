#!/usr/bin/env bash
# chainfire vs etcd, side by side on this machine: 1-node and 3-node clusters on loopback, fsync
# on, the same load generator (bench/loadgen) against both. See bench/chainfire/README.md.
#
# Environment (all optional):
#   DURATION=10         seconds measured per workload (after WARMUP)
#   WARMUP=1            seconds of load before measuring
#   CLUSTERS="1 3"      cluster sizes to run
#   SYSTEMS="etcd chainfire"
#   PUT_CONCURRENCY="1 16 64"   GET_CONCURRENCY=16   WATCHERS=100   (empty or 0: skip that workload)
#   ETCD_AUTH=0         1: enable etcd auth (root user) so both systems authenticate requests
#   ETCD_BIN=/usr/bin/etcd      ETCDCTL_BIN=/usr/bin/etcdctl
#   CHAINFIRE_LOG=info  chainfire's [log] level
#   BENCH_TMPDIR=/var/tmp  where the data directories go (must be a real disk, not tmpfs)
#   SKIP_BUILD=0        1: use the existing target/release binaries
#   KEEP_DATA=0         1: keep the data directories after the run
set -euo pipefail

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-1}
CLUSTERS=${CLUSTERS:-"1 3"}
SYSTEMS=${SYSTEMS:-"etcd chainfire"}
PUT_CONCURRENCY=${PUT_CONCURRENCY-"1 16 64"}
GET_CONCURRENCY=${GET_CONCURRENCY-16}
WATCHERS=${WATCHERS-100}
ETCD_AUTH=${ETCD_AUTH:-0}
ETCD_BIN=${ETCD_BIN:-/usr/bin/etcd}
ETCDCTL_BIN=${ETCDCTL_BIN:-/usr/bin/etcdctl}
CHAINFIRE_LOG=${CHAINFIRE_LOG:-info}
BENCH_TMPDIR=${BENCH_TMPDIR:-/var/tmp}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_DATA=${KEEP_DATA:-0}

# Addresses and ports: member i of etcd on 127.0.0.(200+i), of chainfire on 127.0.0.(210+i)
# (uc-testkit uses 127.0.0.10+), the same ports on each.
CLIENT_PORT=23790
PEER_PORT=23800
ADMIN_PORT=23810
NODE_PORT=23820

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"

die() { echo "run.sh: $*" >&2; exit 1; }
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

[[ -x $ETCD_BIN ]] || die "$ETCD_BIN not found (apt-get install etcd-server)"
command -v curl >/dev/null || die "curl not found (apt-get install curl)"
if [[ $ETCD_AUTH == 1 ]]; then
    [[ -x $ETCDCTL_BIN ]] || die "$ETCDCTL_BIN not found (apt-get install etcd-client)"
fi

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
results=$results_dir/chainfire-$stamp.jsonl
summary=$results_dir/chainfire-$stamp.txt
logs_dir=$results_dir/chainfire-$stamp-logs
: >"$results"

mkdir -p "$BENCH_TMPDIR"
work=$(mktemp -d "$BENCH_TMPDIR/uc-bench-chainfire.XXXXXX")
fstype=$(df --output=fstype "$work" | tail -n 1)
if [[ $fstype == tmpfs || $fstype == ramfs ]]; then
    log "WARNING: $work is on $fstype: fsync costs nothing there; set BENCH_TMPDIR to a real disk"
fi

pids=()        # servers of the running cluster
current=""     # its directory (logs)

stop_cluster() {
    local pid
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        for _ in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "pid $pid did not stop after SIGTERM; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
    pids=()
    if [[ -n $current ]]; then
        # Keep the server logs with the results.
        local name
        name=$(basename "$current")
        mkdir -p "$logs_dir/$name"
        find "$current" -maxdepth 2 -name '*.log' -exec cp {} "$logs_dir/$name/" \;
        [[ $KEEP_DATA == 1 ]] || rm -rf "$current"
        current=""
    fi
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_cluster
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

# Waits until every URL answers 200, or fails after 60 s (showing the logs).
wait_ready() {
    local url deadline=$((SECONDS + 60))
    for url in "$@"; do
        until curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; do
            if ((SECONDS > deadline)); then
                log "not ready: $url"
                tail -n 30 "$current"/*.log >&2 || true
                die "cluster did not become ready"
            fi
            check_alive
            sleep 0.2
        done
    done
}

check_alive() {
    local pid
    for pid in "${pids[@]}"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "a server (pid $pid) exited; logs:"
            tail -n 30 "$current"/*.log >&2 || true
            die "server exited"
        fi
    done
}

endpoints=""
auth_args=()

start_etcd() {
    local n=$1 i ip initial="" ready=()
    current=$work/etcd-$n
    mkdir -p "$current"
    for i in $(seq "$n"); do
        initial+="e$i=http://127.0.0.$((200 + i)):$PEER_PORT,"
    done
    initial=${initial%,}
    endpoints=""
    for i in $(seq "$n"); do
        ip=127.0.0.$((200 + i))
        "$ETCD_BIN" --name "e$i" --data-dir "$current/e$i" \
            --listen-client-urls "http://$ip:$CLIENT_PORT" --advertise-client-urls "http://$ip:$CLIENT_PORT" \
            --listen-peer-urls "http://$ip:$PEER_PORT" --initial-advertise-peer-urls "http://$ip:$PEER_PORT" \
            --initial-cluster "$initial" --initial-cluster-state new --initial-cluster-token "uc-bench-$n" \
            --logger zap --log-outputs stderr >"$current/e$i.log" 2>&1 &
        pids+=($!)
        endpoints+="http://$ip:$CLIENT_PORT,"
        ready+=("http://$ip:$CLIENT_PORT/health")
    done
    endpoints=${endpoints%,}
    wait_ready "${ready[@]}"
    auth_args=()
    if [[ $ETCD_AUTH == 1 ]]; then
        local token
        token=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
        printf '%s' "$token" >"$current/root-password"
        "$ETCDCTL_BIN" --endpoints="$endpoints" user add root --new-user-password="$token" --interactive=false >/dev/null
        "$ETCDCTL_BIN" --endpoints="$endpoints" auth enable >/dev/null
        auth_args=(--user root --password-file "$current/root-password")
    fi
}

start_chainfire() {
    local n=$1 i ip initial="" ready=()
    current=$work/chainfire-$n
    mkdir -p "$current"
    (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$current/admin-token")
    for i in $(seq "$n"); do
        initial+="\"c$i=http://127.0.0.$((210 + i)):$PEER_PORT\", "
    done
    initial=${initial%, }
    endpoints=""
    for i in $(seq "$n"); do
        ip=127.0.0.$((210 + i))
        cat >"$current/c$i.toml" <<EOF
[node]
name = "c$i"
bind = "$ip"
port = $NODE_PORT
data_dir = "$current/c$i"

[auth]
admin_token_file = "$current/admin-token"

[log]
level = "$CHAINFIRE_LOG"

[http]
shutdown_grace_secs = 1

[chainfire]
client_port = $CLIENT_PORT
peer_port = $PEER_PORT
admin_port = $ADMIN_PORT
initial_cluster = [$initial]
initial_cluster_state = "new"
EOF
        "$ultracloud" serve chainfire --config "$current/c$i.toml" >"$current/c$i.log" 2>&1 &
        pids+=($!)
        endpoints+="http://$ip:$CLIENT_PORT,"
        ready+=("http://$ip:$ADMIN_PORT/readyz")
    done
    endpoints=${endpoints%,}
    wait_ready "${ready[@]}"
    auth_args=(--user root --password-file "$current/admin-token")
}

# CPU ticks (1/100 s) used by the running servers, and by the whole machine (busy, not idle,
# iowait or steal).
server_ticks() {
    local pid t total=0
    for pid in "${pids[@]}"; do
        t=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{print $12 + $13}') || t=0
        total=$((total + ${t:-0}))
    done
    echo "$total"
}
# Bytes the running servers caused to be written to the disk.
server_disk_bytes() {
    local pid b total=0
    for pid in "${pids[@]}"; do
        b=$(awk '/^write_bytes:/{print $2}' "/proc/$pid/io" 2>/dev/null) || b=0
        total=$((total + ${b:-0}))
    done
    echo "$total"
}
busy_ticks() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8}' /proc/stat; }

# Runs one workload against the running cluster and appends its JSON line to the results,
# with the wall time, the servers' CPU and everybody else's CPU during it.
measure() {
    local system=$1 n=$2 what=$3
    shift 3
    local out t0 s0 b0 d0 t1 s1 b1 d1 lg extra
    log "$system $n-node: $what"
    t0=$(date +%s%N) s0=$(server_ticks) b0=$(busy_ticks) d0=$(server_disk_bytes)
    if out=$("$loadgen" run --endpoints "$endpoints" "${auth_args[@]}" \
        --duration "$DURATION" --warmup "$WARMUP" \
        --tag "system=$system" --tag "cluster=$n-node" "$@" 2>"$current/loadgen.err"); then
        t1=$(date +%s%N) s1=$(server_ticks) b1=$(busy_ticks) d1=$(server_disk_bytes)
        lg=$(grep -o '"loadgen_cpu_s":[0-9.e+-]*' <<<"$out" | cut -d: -f2)
        extra=$(awk -v t0="$t0" -v t1="$t1" -v s0="$s0" -v s1="$s1" -v b0="$b0" -v b1="$b1" -v d="$((d1 - d0))" -v lg="${lg:-0}" \
            'BEGIN { srv = (s1 - s0) / 100; other = (b1 - b0) / 100 - srv - lg; if (other < 0) other = 0;
                     printf "\"wall_s\":%.3f,\"server_cpu_s\":%.2f,\"other_cpu_s\":%.2f,\"server_disk_write_bytes\":%d,", (t1 - t0) / 1e9, srv, other, d }')
        out="{$extra${out#\{}"
        echo "$out" >>"$results"
        echo "  $out" >&2
    else
        log "loadgen FAILED for $system $n-node $what:"
        cat "$current/loadgen.err" >&2
    fi
    check_alive
}

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
log "results: $results"
for n in $CLUSTERS; do
    for system in $SYSTEMS; do
        log "starting $system ($n-node)"
        case $system in
            etcd) start_etcd "$n" ;;
            chainfire) start_chainfire "$n" ;;
            *) die "unknown system $system" ;;
        esac
        for c in $PUT_CONCURRENCY; do
            measure "$system" "$n" "put c=$c" --workload put --concurrency "$c"
        done
        for c in $GET_CONCURRENCY; do
            measure "$system" "$n" "get c=$c" --workload get --concurrency "$c"
        done
        if [[ -n $WATCHERS && $WATCHERS != 0 ]]; then
            measure "$system" "$n" "watch $WATCHERS watchers" --workload watch --watchers "$WATCHERS"
        fi
        log "stopping $system"
        stop_cluster
    done
done

{
    echo "chainfire vs etcd — $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, $(uname -r)"
    echo "etcd: $("$ETCD_BIN" --version | head -n 1) (auth $([[ $ETCD_AUTH == 1 ]] && echo on || echo off)); chainfire: ultracloud $("$ultracloud" version 2>/dev/null | awk '$1 == "version" {print $2}') (release build)"
    echo "measured ${DURATION}s per row after ${WARMUP}s warm-up; data on $fstype ($BENCH_TMPDIR); fsync on for both"
    echo "source: $source_desc"
    echo "load average at start: $load_start; at end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
    "$loadgen" report "$results"
} | tee "$summary"
log "results: $results, table: $summary, server logs: $logs_dir"

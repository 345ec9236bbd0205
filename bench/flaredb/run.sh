#!/usr/bin/env bash
# flaredb vs PostgreSQL, side by side on this machine: one PostgreSQL server (Debian's 15, its
# own initdb cluster), then flaredb with 1 and 3 members on loopback, fsync on everywhere, the
# same load generator (bench/loadgen, `uc-bench-loadgen pg`) against all of them over the
# PostgreSQL wire protocol. See bench/flaredb/README.md.
#
# Environment (all optional):
#   DURATION=10          seconds measured per workload (after WARMUP)
#   WARMUP=1             seconds of load before measuring
#   SYSTEMS="postgresql flaredb"
#   CLUSTERS="1 3"       flaredb cluster sizes
#   THREE_NODE_CLIENTS=spread   3-member clusters: `spread` (client i → member i mod 3),
#                        `leader` (every client → the namespace's leader), or "spread leader"
#   INSERT_CONCURRENCY="1 16"  SELECT_CONCURRENCY=16  BATCH_CONCURRENCY=1  (empty or 0: skip)
#   BATCH_SIZE=1000      INSERTs per transaction in the batch workload
#   SELECT_KEYS=10000    rows preloaded for the select workload
#   VALUE_SIZE=100       bytes of the text column
#   PG_BIN=/usr/lib/postgresql/15/bin   (installed with apt-get if missing)
#   FLAREDB_LOG=info     flaredb's and chainfire's [log] level
#   BENCH_TMPDIR=/var/tmp  where the data directories go (must be a real disk, not tmpfs)
#   IDLE_WAIT=0          >0: before each measurement wait up to this many seconds for an idle
#                        machine (less than OTHER_MAX cores busy over 3 s)
#   RETRY_DISTURBED=0    >0: repeat a measurement during which the rest of the machine used more
#                        than OTHER_MAX cores, at most this many times (disturbed attempts go to
#                        bench/results/flaredb-<stamp>-disturbed.jsonl)
#   OTHER_MAX=0.15
#   SKIP_BUILD=0         1: use the existing target/release binaries
#   KEEP_DATA=0          1: keep the data directories after the run
set -euo pipefail

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-1}
SYSTEMS=${SYSTEMS:-"postgresql flaredb"}
CLUSTERS=${CLUSTERS:-"1 3"}
THREE_NODE_CLIENTS=${THREE_NODE_CLIENTS:-spread}
INSERT_CONCURRENCY=${INSERT_CONCURRENCY-"1 16"}
SELECT_CONCURRENCY=${SELECT_CONCURRENCY-16}
BATCH_CONCURRENCY=${BATCH_CONCURRENCY-1}
BATCH_SIZE=${BATCH_SIZE:-1000}
SELECT_KEYS=${SELECT_KEYS:-10000}
VALUE_SIZE=${VALUE_SIZE:-100}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
FLAREDB_LOG=${FLAREDB_LOG:-info}
BENCH_TMPDIR=${BENCH_TMPDIR:-/var/tmp}
IDLE_WAIT=${IDLE_WAIT:-0}
RETRY_DISTURBED=${RETRY_DISTURBED:-0}
OTHER_MAX=${OTHER_MAX:-0.15}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_DATA=${KEEP_DATA:-0}

# Addresses and ports: PostgreSQL on 127.0.0.1:PG_PORT (the first free port from 25432 up);
# chainfire (the namespace catalog) on 127.0.0.230; flaredb member i on 127.0.0.(230+i), the
# same ports on each (uc-testkit uses 127.0.0.10+, bench/chainfire 127.0.0.200–213).
PG_PORT_FROM=25432
CF_IP=127.0.0.230
CF_CLIENT_PORT=24790
CF_PEER_PORT=24800
CF_ADMIN_PORT=24810
CF_NODE_PORT=24820
FDB_REST_PORT=24830
FDB_PG_PORT=24840
FDB_PEER_PORT=24850
FDB_NODE_PORT=24860
NAMESPACE=bench

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"

die() { echo "run.sh: $*" >&2; exit 1; }
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

command -v curl >/dev/null || die "curl not found (apt-get install curl)"
command -v jq >/dev/null || die "jq not found (apt-get install jq)"

want() { [[ " $SYSTEMS " == *" $1 "* ]]; }

# PostgreSQL: Debian's server package. If installing it starts Debian's own cluster (port
# 5432), that cluster is stopped again: this script runs its own.
if want postgresql && [[ ! -x $PG_BIN/postgres ]]; then
    log "installing PostgreSQL ($PG_BIN/postgres missing)"
    clusters_before=$(pg_lsclusters -h 2>/dev/null | awk '$4 == "online" {print $1 "/" $2}' || true)
    export DEBIAN_FRONTEND=noninteractive
    if [[ $(id -u) == 0 ]]; then sudo=(); else sudo=(sudo); fi
    "${sudo[@]}" apt-get install -y postgresql-15 || "${sudo[@]}" apt-get install -y postgresql
    for c in $(pg_lsclusters -h 2>/dev/null | awk '$4 == "online" {print $1 "/" $2}'); do
        if [[ " $clusters_before " != *" $c "* ]]; then
            log "stopping Debian's cluster $c, started by the installation"
            "${sudo[@]}" pg_ctlcluster "${c%/*}" "${c#*/}" stop || true
        fi
    done
    [[ -x $PG_BIN/postgres ]] || die "$PG_BIN/postgres still missing (set PG_BIN)"
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
results=$results_dir/flaredb-$stamp.jsonl
disturbed_results=$results_dir/flaredb-$stamp-disturbed.jsonl
summary=$results_dir/flaredb-$stamp.txt
logs_dir=$results_dir/flaredb-$stamp-logs
: >"$results"

mkdir -p "$BENCH_TMPDIR"
work=$(mktemp -d "$BENCH_TMPDIR/uc-bench-flaredb.XXXXXX")
chmod 755 "$work"
fstype=$(df --output=fstype "$work" | tail -n 1)
disk_dev=$(basename "$(readlink -f "$(df --output=source "$work" | tail -n 1)")")
awk -v d="$disk_dev" '$3 == d {found = 1} END {exit !found}' /proc/diskstats || disk_dev=""
if [[ $fstype == tmpfs || $fstype == ramfs ]]; then
    log "WARNING: $work is on $fstype: fsync costs nothing there; set BENCH_TMPDIR to a real disk"
fi

# PostgreSQL refuses to run as root: as root, its cluster belongs to the `postgres` user.
as_pg=()
if [[ $(id -u) == 0 ]]; then
    id postgres >/dev/null 2>&1 || die "running as root needs a \`postgres\` user (the Debian package creates it)"
    as_pg=(runuser -u postgres --)
fi

pids=()        # flaredb members (or the postmaster) of the running system: CPU and disk
aux_pids=()    # other processes of the running system (chainfire: the catalog only)
current=""     # its directory (logs)
pg_data=""     # the running PostgreSQL's data directory

# SIGTERM to each pid, then waits for them (SIGKILL after 10 s).
stop_pids() {
    local pid
    for pid in "$@"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "$@"; do
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
}

stop_system() {
    if [[ -n $pg_data ]]; then
        "${as_pg[@]}" "$PG_BIN/pg_ctl" stop -D "$pg_data" -m fast -w -t 30 >/dev/null 2>&1 || {
            log "pg_ctl stop failed; killing the postmaster"
            [[ ${#pids[@]} -gt 0 ]] && kill -KILL "${pids[0]}" 2>/dev/null || true
        }
        pg_data=""
        pids=()
    fi
    # flaredb first, then its catalog (chainfire), so that no member logs a lost catalog.
    stop_pids "${pids[@]}"
    stop_pids "${aux_pids[@]}"
    pids=()
    aux_pids=()
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
    stop_system
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
    local pid
    for pid in "${pids[@]}" "${aux_pids[@]}"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "a server (pid $pid) exited; logs:"
            tail -n 30 "$current"/*.log >&2 || true
            die "server exited"
        fi
    done
}

# Waits until every URL answers 200, or fails after 60 s (showing the logs).
wait_ready() {
    local url deadline=$((SECONDS + 60))
    for url in "$@"; do
        until curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; do
            if ((SECONDS > deadline)); then
                log "not ready: $url"
                tail -n 30 "$current"/*.log >&2 || true
                die "not ready"
            fi
            check_alive
            sleep 0.2
        done
    done
}

port_free() { [[ -z $(ss -Hltn "sport = :$1") ]]; }

endpoints=""       # host:port,… for the load generator
auth_args=()
id_type=""

start_postgresql() {
    current=$work/postgresql
    pg_data=$current/data
    mkdir -p "$current"
    local port=$PG_PORT_FROM password
    while ! port_free "$port"; do port=$((port + 1)); done
    password=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
    (umask 077 && printf '%s' "$password" >"$current/password")
    [[ ${#as_pg[@]} -eq 0 ]] || chown -R postgres: "$current"
    # Defaults otherwise: fsync=on, synchronous_commit=on, full_page_writes=on,
    # wal_sync_method=fdatasync, shared_buffers=128MB. Password (SCRAM) auth on TCP.
    "${as_pg[@]}" "$PG_BIN/initdb" -D "$pg_data" -U bench --pwfile="$current/password" \
        --auth-local=scram-sha-256 --auth-host=scram-sha-256 -E UTF8 --no-instructions \
        >"$current/initdb.log" 2>&1 || { cat "$current/initdb.log" >&2; die "initdb failed"; }
    "${as_pg[@]}" "$PG_BIN/pg_ctl" start -D "$pg_data" -w -t 60 -l "$current/postgresql.log" \
        -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories='$current' -c password_encryption=scram-sha-256" \
        >/dev/null || { tail -n 30 "$current/postgresql.log" >&2; die "PostgreSQL did not start"; }
    pids=("$(head -n 1 "$pg_data/postmaster.pid")")
    PGPASSWORD=$password psql -h 127.0.0.1 -p "$port" -U bench -d postgres -X -q -v ON_ERROR_STOP=1 \
        -c "CREATE DATABASE bench" >/dev/null
    pg_settings=$(PGPASSWORD=$password psql -h 127.0.0.1 -p "$port" -U bench -d bench -X -A -t -F= \
        -c "SELECT name, setting FROM pg_settings WHERE name IN ('fsync','synchronous_commit','wal_sync_method','full_page_writes','shared_buffers','password_encryption') ORDER BY name" | tr '\n' ' ')
    pg_version=$(PGPASSWORD=$password psql -h 127.0.0.1 -p "$port" -U bench -d bench -X -A -t -c "SHOW server_version")
    log "PostgreSQL $pg_version on 127.0.0.1:$port ($pg_settings)"
    endpoints=127.0.0.1:$port
    auth_args=(--user bench --dbname bench --password-file "$current/password")
    # The same 64-bit ids as flaredb's INTEGER (PostgreSQL's INTEGER is 32-bit).
    id_type=BIGINT
}

flaredb_leader=""   # member index leading the namespace
flaredb_n=0

start_flaredb() {
    local n=$1 i ip initial="" ready=()
    flaredb_n=$n
    current=$work/flaredb-$n
    mkdir -p "$current"
    (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$current/admin-token")
    local token
    token=$(cat "$current/admin-token")

    # chainfire: the namespace catalog.
    cat >"$current/chainfire.toml" <<EOF
[node]
name = "cf"
bind = "$CF_IP"
port = $CF_NODE_PORT
data_dir = "$current/chainfire"

[auth]
admin_token_file = "$current/admin-token"

[log]
level = "$FLAREDB_LOG"

[http]
shutdown_grace_secs = 1

[chainfire]
client_port = $CF_CLIENT_PORT
peer_port = $CF_PEER_PORT
admin_port = $CF_ADMIN_PORT
EOF
    "$ultracloud" serve chainfire --config "$current/chainfire.toml" >"$current/chainfire.log" 2>&1 &
    aux_pids+=($!)
    wait_ready "http://$CF_IP:$CF_ADMIN_PORT/readyz"

    for i in $(seq "$n"); do
        initial+="\"f$i=http://127.0.0.$((230 + i)):$FDB_PEER_PORT\", "
    done
    initial=${initial%, }
    for i in $(seq "$n"); do
        ip=127.0.0.$((230 + i))
        cat >"$current/f$i.toml" <<EOF
[node]
name = "f$i"
bind = "$ip"
port = $FDB_NODE_PORT
data_dir = "$current/f$i"

[auth]
admin_token_file = "$current/admin-token"

[log]
level = "$FLAREDB_LOG"

[http]
shutdown_grace_secs = 1

[flaredb]
rest_port = $FDB_REST_PORT
pg_port = $FDB_PG_PORT
peer_port = $FDB_PEER_PORT
chainfire_endpoint = "http://$CF_IP:$CF_CLIENT_PORT"
initial_cluster = [$initial]
EOF
        "$ultracloud" serve flaredb --config "$current/f$i.toml" >"$current/f$i.log" 2>&1 &
        pids+=($!)
        ready+=("http://$ip:$FDB_REST_PORT/readyz")
    done
    wait_ready "${ready[@]}"

    # The namespace (strong mode: linearizable reads), its credential shown once.
    local body
    body=$(curl -fsS --max-time 30 -X POST -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
        -d "{\"name\":\"$NAMESPACE\",\"mode\":\"strong\"}" "http://127.0.0.231:$FDB_REST_PORT/api/v1/namespaces") ||
        die "creating namespace $NAMESPACE failed"
    (umask 077 && jq -r .password <<<"$body" >"$current/password")
    [[ -s $current/password && $(cat "$current/password") != null ]] || die "no password in: $body"

    # Every member serves it and one leads it.
    local deadline=$((SECONDS + 60)) state
    flaredb_leader=""
    while :; do
        local served=0
        for i in $(seq "$n"); do
            state=$(curl -fsS --max-time 2 -H "Authorization: Bearer $token" \
                "http://127.0.0.$((230 + i)):$FDB_REST_PORT/api/v1/namespaces/$NAMESPACE/status" 2>/dev/null |
                jq -r '.raft.state // empty' 2>/dev/null) || state=""
            [[ -n $state ]] && served=$((served + 1))
            [[ ${state,,} == leader ]] && flaredb_leader=$i
        done
        ((served == n)) && [[ -n $flaredb_leader ]] && break
        ((SECONDS > deadline)) && { tail -n 30 "$current"/*.log >&2; die "namespace $NAMESPACE not served everywhere with a leader"; }
        check_alive
        sleep 0.2
    done
    log "flaredb $n-node: namespace $NAMESPACE led by member f$flaredb_leader"
    auth_args=(--user "$NAMESPACE" --dbname "$NAMESPACE" --password-file "$current/password")
    # flaredb speaks SQLite's dialect: INTEGER PRIMARY KEY is the 64-bit rowid.
    id_type=INTEGER
}

# The flaredb pg endpoints: every member (spread) or the leader only.
flaredb_endpoints() {
    local target=$1 i
    endpoints=""
    if [[ $target == leader ]]; then
        endpoints=127.0.0.$((230 + flaredb_leader)):$FDB_PG_PORT
        return
    fi
    for i in $(seq "$flaredb_n"); do
        endpoints+="127.0.0.$((230 + i)):$FDB_PG_PORT,"
    done
    endpoints=${endpoints%,}
}

# CPU ticks (1/100 s) used by the measured servers: each process's own time and that of its
# reaped children (PostgreSQL's exited backends), plus its live children (PostgreSQL's
# backends and background workers).
proc_ticks() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | awk -v all="$2" '{print $12 + $13 + (all ? $14 + $15 : 0)}' || echo 0; }
server_ticks() {
    local pid child t total=0
    for pid in "${pids[@]}"; do
        t=$(proc_ticks "$pid" 1)
        total=$((total + ${t:-0}))
        for child in $(ps -o pid= --ppid "$pid" 2>/dev/null); do
            t=$(proc_ticks "$child" 0)
            total=$((total + ${t:-0}))
        done
    done
    echo "$total"
}
# Bytes the measured servers (and their children) caused to be written to the disk.
server_disk_bytes() {
    local pid child b total=0
    for pid in "${pids[@]}"; do
        for child in "$pid" $(ps -o pid= --ppid "$pid" 2>/dev/null); do
            b=$(awk '/^write_bytes:/{print $2}' "/proc/$child/io" 2>/dev/null) || b=0
            total=$((total + ${b:-0}))
        done
    done
    echo "$total"
}
child_count() {
    local pid n=0
    for pid in "${pids[@]}"; do
        n=$((n + $(ps -o pid= --ppid "$pid" 2>/dev/null | wc -l)))
    done
    echo "$n"
}
# After a PostgreSQL run: waits (at most 3 s) until the backends of the load generator's
# connections have exited and been reaped, so that their CPU and disk writes are counted in
# the postmaster's totals (a process exiting between two reads would be missed).
children0=0
settle() {
    local deadline=$((SECONDS + 3))
    while (($(child_count) > children0 && SECONDS < deadline)); do sleep 0.05; done
}
# Bytes written to the block device holding the data directories (/proc/diskstats, whole
# device: every writer on the machine counts). Used instead of /proc/PID/io `write_bytes`,
# which on kernels with large page-cache folios counts a whole folio (up to hundreds of KB) for
# every small rewrite of a page (PostgreSQL's 8 KB WAL writes showed ~30x their size).
device_sectors() {
    [[ -n $disk_dev ]] || { echo 0; return; }
    awk -v d="$disk_dev" '$3 == d {print $10}' /proc/diskstats
}
busy_ticks() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8}' /proc/stat; }

# Runs one workload and appends its JSON line to the results, with the wall time, the servers'
# CPU and everybody else's CPU during it.
measure() {
    local system=$1 cluster=$2 what=$3
    shift 3
    local out t0 s0 b0 d0 t1 s1 b1 d1 lg extra v0 v1 attempt=0 disturbed
    while :; do
        wait_idle
        log "$system $cluster: $what"
        children0=$(child_count)
        t0=$(date +%s%N) s0=$(server_ticks) b0=$(busy_ticks) d0=$(server_disk_bytes) v0=$(device_sectors)
        if ! out=$("$loadgen" pg --endpoints "$endpoints" "${auth_args[@]}" --id-type "$id_type" \
            --duration "$DURATION" --warmup "$WARMUP" --value-size "$VALUE_SIZE" \
            --tag "system=$system" --tag "cluster=$cluster" "$@" 2>"$current/loadgen.err"); then
            log "loadgen FAILED for $system $cluster $what:"
            cat "$current/loadgen.err" >&2
            break
        fi
        t1=$(date +%s%N)
        settle
        s1=$(server_ticks) b1=$(busy_ticks) d1=$(server_disk_bytes) v1=$(device_sectors)
        lg=$(grep -o '"loadgen_cpu_s":[0-9.e+-]*' <<<"$out" | cut -d: -f2)
        extra=$(awk -v t0="$t0" -v t1="$t1" -v s0="$s0" -v s1="$s1" -v b0="$b0" -v b1="$b1" -v d="$((d1 - d0))" -v v="$(((v1 - v0) * 512))" -v lg="${lg:-0}" \
            'BEGIN { srv = (s1 - s0) / 100; other = (b1 - b0) / 100 - srv - lg; if (other < 0) other = 0;
                     if (d < 0) d = 0;
                     printf "\"wall_s\":%.3f,\"server_cpu_s\":%.2f,\"other_cpu_s\":%.2f,\"server_disk_write_bytes\":%.0f,\"device_write_bytes\":%.0f,", (t1 - t0) / 1e9, srv, other, d, v }')
        out="{$extra${out#\{}"
        echo "  $out" >&2
        if [[ -s $current/loadgen.err ]]; then
            log "loadgen stderr:"
            cat "$current/loadgen.err" >&2
        fi
        # Disturbed: the rest of the machine used more than OTHER_MAX cores on average.
        disturbed=$(awk -v o="$(grep -o '"other_cpu_s":[0-9.]*' <<<"$out" | cut -d: -f2)" -v w="$(((t1 - t0) / 1000000))" -v m="$OTHER_MAX" \
            'BEGIN { print (w > 0 && o / (w / 1000) > m) ? 1 : 0 }')
        if [[ $disturbed == 1 && $attempt -lt $RETRY_DISTURBED ]]; then
            attempt=$((attempt + 1))
            log "disturbed (other cores above $OTHER_MAX); kept in $disturbed_results, retry $attempt of $RETRY_DISTURBED"
            echo "$out" >>"$disturbed_results"
            check_alive
            continue
        fi
        echo "$out" >>"$results"
        break
    done
    check_alive
}

# With IDLE_WAIT > 0: waits (at most IDLE_WAIT seconds) until the machine has been idle for 3 s
# (less than OTHER_MAX cores busy, the idle servers included).
wait_idle() {
    ((IDLE_WAIT > 0)) || return 0
    local deadline=$((SECONDS + IDLE_WAIT)) b0 b1 said=0
    while ((SECONDS < deadline)); do
        b0=$(busy_ticks)
        sleep 3
        b1=$(busy_ticks)
        if awk -v b="$((b1 - b0))" -v m="$OTHER_MAX" 'BEGIN { exit !(b / 300 < m) }'; then
            return 0
        fi
        ((said)) || log "waiting for an idle machine (up to ${IDLE_WAIT}s)"
        said=1
    done
    log "machine still busy after ${IDLE_WAIT}s; measuring anyway"
}

workloads() {
    local system=$1 cluster=$2 c
    for c in $INSERT_CONCURRENCY; do
        [[ $c == 0 ]] || measure "$system" "$cluster" "insert c=$c" --workload insert --concurrency "$c"
    done
    for c in $SELECT_CONCURRENCY; do
        [[ $c == 0 ]] || measure "$system" "$cluster" "select c=$c" --workload select --concurrency "$c" --keys "$SELECT_KEYS"
    done
    for c in $BATCH_CONCURRENCY; do
        [[ $c == 0 ]] || measure "$system" "$cluster" "batch c=$c ($BATCH_SIZE rows/txn)" --workload batch --concurrency "$c" --batch-size "$BATCH_SIZE"
    done
}

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
log "results: $results"
pg_version="-" pg_settings="-" pg_wal_stats="-"
if want postgresql; then
    log "starting PostgreSQL"
    start_postgresql
    workloads postgresql server
    # Evidence that commits were flushed: WAL fsyncs (wal_sync) over the whole run.
    pg_wal_stats=$(PGPASSWORD=$(cat "$current/password") psql -h "${endpoints%:*}" -p "${endpoints##*:}" -U bench -d bench -X -A -t -F' ' \
        -c "SELECT 'wal_records=' || wal_records, 'wal_bytes=' || wal_bytes, 'wal_write=' || wal_write, 'wal_sync=' || wal_sync FROM pg_stat_wal" 2>/dev/null || echo unavailable)
    log "PostgreSQL pg_stat_wal: $pg_wal_stats"
    log "stopping PostgreSQL"
    stop_system
fi
if want flaredb; then
    for n in $CLUSTERS; do
        log "starting flaredb ($n-node)"
        start_flaredb "$n"
        if ((n == 1)); then
            flaredb_endpoints spread
            workloads flaredb 1-node
        else
            for target in $THREE_NODE_CLIENTS; do
                case $target in
                    spread | leader) ;;
                    *) die "THREE_NODE_CLIENTS: unknown value $target (spread, leader)" ;;
                esac
                flaredb_endpoints "$target"
                workloads flaredb "$n-node/$target"
            done
        fi
        log "stopping flaredb"
        stop_system
    done
fi

{
    echo "flaredb vs PostgreSQL — $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, $(uname -r)"
    echo "PostgreSQL: $pg_version ($pg_settings); flaredb: ultracloud $("$ultracloud" version 2>/dev/null | awk '$1 == "version" {print $2}') (release build), namespace mode strong, log $FLAREDB_LOG"
    echo "PostgreSQL pg_stat_wal over its whole run (set-up included): $pg_wal_stats"
    echo "measured ${DURATION}s per row after ${WARMUP}s warm-up; ${VALUE_SIZE}-byte values; data on $fstype ($BENCH_TMPDIR); fsync on for both"
    echo "flaredb clusters: N-node/spread = client i connects to member i mod N; N-node/leader = every client to the namespace's leader"
    echo "source: $source_desc$([[ $SKIP_BUILD == 1 ]] && echo " (SKIP_BUILD=1: binaries not rebuilt; ultracloud built $(date -u -r "$ultracloud" +%Y-%m-%dT%H:%M:%SZ))")"
    if [[ -s $disturbed_results ]]; then
        echo "repeated because the machine was busy (other cores > $OTHER_MAX): $(wc -l <"$disturbed_results") measurement(s), kept in $(basename "$disturbed_results")"
    elif ((RETRY_DISTURBED > 0)); then
        echo "no measurement needed repeating (other cores > $OTHER_MAX)"
    fi
    echo "load average at start: $load_start; at end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
    "$loadgen" report "$results" --system flaredb --baseline postgresql --baseline-cluster server
} | tee "$summary"
log "results: $results, table: $summary, server logs: $logs_dir"

#!/usr/bin/env bash
# coronafs: fio through a volume's NBD export (the path a VM's disk takes: `ultracloud up`,
# `volume create`, `volume attach`, fio's libnbd engine against the qemu-nbd export) versus
# fio on a file of the same size in the same directory on the same disk (the physical limit),
# side by side in one run; prints each ratio NBD/local.
#
# Both sides bypass the page cache: the bench's node runs exports with `nbd_cache = "none"`
# and `nbd_aio = "native"` (O_DIRECT, as recommended for VM disks in docs/coronafs.md), and the
# local side uses libaio with direct=1. Otherwise one side would measure RAM.
#
# Environment (all optional):
#   SIZE=1G            volume/file size            RUNTIME=10   seconds per row
#   SEQ_BS=1M SEQ_DEPTH=16   sequential rows       RAND_BS=4k RAND_DEPTH=32   random rows
#   BENCH_TMPDIR=/var/tmp   where the data directory goes (a real disk, not tmpfs)
#   BIND=127.0.0.250   address `up` binds (kept off 127.0.0.1 so a running cloud is untouched)
#   SKIP_BUILD=0       1: use the existing target/release/ultracloud
#   OUT=bench/results/coronafs-<date>.txt
set -euo pipefail
cd "$(dirname "$0")/../.."

SIZE=${SIZE:-1G}
RUNTIME=${RUNTIME:-10}
SEQ_BS=${SEQ_BS:-1M}
SEQ_DEPTH=${SEQ_DEPTH:-16}
RAND_BS=${RAND_BS:-4k}
RAND_DEPTH=${RAND_DEPTH:-32}
BENCH_TMPDIR=${BENCH_TMPDIR:-/var/tmp}
BIND=${BIND:-127.0.0.250}
OUT=${OUT:-bench/results/coronafs-$(date -u +%F).txt}

need=()
command -v fio >/dev/null || need+=(fio)
command -v qemu-nbd >/dev/null || need+=(qemu-utils)
command -v python3 >/dev/null || need+=(python3)
if ((${#need[@]})); then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
fio --enghelp 2>/dev/null | grep -qw nbd || { echo "this fio has no nbd engine (libnbd)" >&2; exit 1; }

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  cargo build --release -p ultracloud --quiet
fi
BIN=$PWD/target/release/ultracloud

WORK=$(mktemp -d "$BENCH_TMPDIR/coronafs-bench.XXXXXX")
UP_PID=""
cleanup() {
  if [ -n "$UP_PID" ]; then kill "$UP_PID" 2>/dev/null || true; wait "$UP_PID" 2>/dev/null || true; fi
  # Exports outlive a crashed node by design; make sure none of ours stays (by pid).
  for p in /proc/[0-9]*; do
    if grep -qaF -- "$WORK/data/coronafs/volumes/" "$p/cmdline" 2>/dev/null; then
      kill "${p#/proc/}" 2>/dev/null || true
    fi
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

cat > "$WORK/config.toml" <<CONF
[node]
name = "bench"
[log]
level = "warn"
[coronafs]
nbd_cache = "none"
nbd_aio = "native"
CONF
"$BIN" up --config "$WORK/config.toml" --data-dir "$WORK/data" --bind "$BIND" >"$WORK/up.log" 2>&1 &
UP_PID=$!
for _ in $(seq 1 600); do
  curl -fs "http://$BIND:8070/readyz" >/dev/null 2>&1 && break
  kill -0 "$UP_PID" 2>/dev/null || { cat "$WORK/up.log"; exit 1; }
  sleep 0.1
done
TOKEN_FILE=$WORK/data/secrets/admin-token
vol() { "$BIN" -o json volume --endpoint "http://$BIND:50088" --token-file "$TOKEN_FILE" "$@"; }
json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }

# The node registers a moment after start.
for _ in $(seq 1 100); do
  ID=$(vol create bench-disk --size "$SIZE" 2>/dev/null | json "['id']") && break
  sleep 0.2
done
ATTACH=$(vol attach "$ID" --worker bench)
URI=$(echo "$ATTACH" | json "['nbd_url']")
VOLFILE=$(echo "$ATTACH" | json "['local_path']")
LOCAL=$(dirname "$VOLFILE")/local-baseline.raw
qemu-img create -q -f raw "$LOCAL" "$SIZE"

# fio row: name, target kind, rw, bs, depth -> "MiB/s IOPS"
row() {
  local rw=$1 bs=$2 depth=$3 kind=$4 target
  if [ "$kind" = nbd ]; then
    target=(--ioengine=nbd "--uri=$URI")
  else
    target=(--ioengine=libaio --direct=1 "--filename=$LOCAL")
  fi
  fio --name=b --rw="$rw" --bs="$bs" --iodepth="$depth" --size="$SIZE" --time_based \
      --runtime="$RUNTIME" --ramp_time=1 --randrepeat=0 --output-format=json "${target[@]}" \
    | python3 -c '
import json, sys
text = sys.stdin.read()  # the nbd engine prints a line before the JSON
j = json.loads(text[text.index("{"):])["jobs"][0]
side = j["write"] if j["write"]["io_bytes"] else j["read"]
print("%.1f %.0f" % (side["bw"] / 1024, side["iops"]))'
}

# Fill both first so reads hit written blocks, not holes.
fio --name=fill --rw=write --bs=1M --iodepth=16 --size="$SIZE" --ioengine=libaio --direct=1 --filename="$LOCAL" >/dev/null
fio --name=fill --rw=write --bs=1M --iodepth=16 --size="$SIZE" --ioengine=nbd "--uri=$URI" >/dev/null

{
  echo "coronafs NBD export vs local file — $(date -u +%FT%TZ)"
  echo "host: $(nproc) CPUs, $(uname -r); disk under $BENCH_TMPDIR: $(df -T "$BENCH_TMPDIR" | awk 'NR==2{print $2, $1}')"
  echo "qemu-nbd: $(qemu-nbd --version | head -1); fio: $(fio --version)"
  echo "export: nbd_cache=none nbd_aio=native; local: libaio direct=1; size=$SIZE runtime=${RUNTIME}s per row"
  # The NBD path costs CPU (TCP copies, qemu-nbd's loop) where local O_DIRECT costs almost none:
  # record how busy the host was, and the loopback TCP ceiling the export cannot exceed.
  echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  if command -v iperf3 >/dev/null; then
    iperf3 -s -B "$BIND" -p 5299 -1 >/dev/null 2>&1 & sleep 0.5
    echo "loopback TCP ceiling (iperf3, 1 stream, 3 s): $(iperf3 -c "$BIND" -p 5299 -t 3 -J 2>/dev/null \
      | python3 -c 'import json,sys; print("%.1f Gbit/s" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 1e9))')"
  fi
  echo
  printf "%-22s %14s %14s %14s %14s %8s\n" row "local MiB/s" "local IOPS" "nbd MiB/s" "nbd IOPS" "nbd/local"
  for spec in "write $SEQ_BS $SEQ_DEPTH seq-write" "read $SEQ_BS $SEQ_DEPTH seq-read" \
              "randwrite $RAND_BS $RAND_DEPTH rand-write-4k" "randread $RAND_BS $RAND_DEPTH rand-read-4k"; do
    set -- $spec
    read -r lbw liops < <(row "$1" "$2" "$3" local)
    read -r nbw niops < <(row "$1" "$2" "$3" nbd)
    ratio=$(python3 -c "print(f'{$nbw / $lbw:.2f}' if $lbw else 'n/a')")
    printf "%-22s %14s %14s %14s %14s %8s\n" "$4 (bs=$2 qd=$3)" "$lbw" "$liops" "$nbw" "$niops" "${ratio}x"
  done
  echo
  echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$OUT"
echo "written to $OUT"

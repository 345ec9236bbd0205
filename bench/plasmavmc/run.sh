#!/usr/bin/env bash
# plasmavmc: time from `ultracloud vm create` to the guest's boot marker (UC-BOOT-OK on the
# serial console, read through the console API), against the floor: the very same QEMU
# command line the worker ran for that VM, exec'd by hand (same kernel, initrd, NoCloud seed,
# memory, accelerator), timed to the same marker in its serial log. The two sides alternate
# boot by boot; p50 over BOOTS boots each, and the difference (the platform's overhead).
# Then CONCURRENT creates at once: time until every guest printed its marker.
#
# The platform side goes through everything a tenant's create does: CLI, API + iam token
# check, placement and the VM record in flaredb, waking the worker, the worker's NoCloud seed,
# Hypervisor::start (QMP), state reports, and the console API proxied to the worker.
# VMs have no volume and no NIC here (a kernel image): the bench measures plasmavmc's
# overhead, not coronafs's or prismnet's.
#
# Environment (all optional):
#   BOOTS=10          boots per side
#   CONCURRENT=10     VMs created at once in the second part (0: skip)
#   MEMORY=96         MiB per VM
#   ACCEL=auto        auto|kvm|tcg for the worker (auto: KVM only if it works here)
#   PROFILE=release   cargo profile of the ultracloud binary (release|debug)
#   SKIP_BUILD=0      1: use the existing binary
#   BENCH_TMPDIR=/var/tmp
#   RESULTS=bench/results/plasmavmc-<date>.txt
set -euo pipefail
cd "$(dirname "$0")/../.."

BOOTS=${BOOTS:-10}
CONCURRENT=${CONCURRENT:-10}
MEMORY=${MEMORY:-96}
ACCEL=${ACCEL:-${UC_ACCEL:-auto}}
# ultracloud reads every UC_* variable as a config override: keep ours out of its way.
unset UC_ACCEL
PROFILE=${PROFILE:-release}
BENCH_TMPDIR=${BENCH_TMPDIR:-/var/tmp}
RESULTS=${RESULTS:-bench/results/plasmavmc-$(date -u +%Y-%m-%d).txt}

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  if [ "$PROFILE" = release ]; then
    cargo build -q --release -p ultracloud
    cargo build -q -p plasmavmc --example hv_floor
  else
    cargo build -q -p ultracloud -p plasmavmc --example hv_floor
  fi
fi
UC=${CARGO_TARGET_DIR:-target}/$PROFILE/ultracloud
HELPER=${CARGO_TARGET_DIR:-target}/debug/examples/hv_floor

WORK=$(mktemp -d "$BENCH_TMPDIR/uc-bench-plasmavmc.XXXXXX")
DATA=$WORK/data
UP_PID=
cleanup() {
  set +e
  # By-hand QEMUs: their command line names this work dir.
  for p in $(pgrep -f "qemu-system.*$WORK" || true); do kill -9 "$p" 2>/dev/null; done
  [ -n "$UP_PID" ] && kill "$UP_PID" 2>/dev/null && wait "$UP_PID" 2>/dev/null
  # VMs the platform started (the agent leaves them running by design).
  for p in $(pgrep -f "qemu-system.*$WORK" || true); do kill -9 "$p" 2>/dev/null; done
  rm -rf "$WORK"
}
trap cleanup EXIT

# Ports of our own, so a cloud already running on the defaults is not disturbed.
BASE=${BASE_PORT:-28000}
cat >"$WORK/config.toml" <<CFG
[node]
name = "bench"
port = $((BASE + 70))
[log]
level = "warn"
[chainfire]
client_port = $((BASE + 79))
peer_port = $((BASE + 80))
admin_port = $((BASE + 81))
[flaredb]
rest_port = $((BASE + 82))
pg_port = $((BASE + 33))
peer_port = $((BASE + 48))
[iam]
port = $((BASE + 83))
[coronafs]
port = $((BASE + 88))
[plasmavmc]
port = $((BASE + 87))
[plasmavmc_worker]
port = $((BASE + 97))
accel = "$ACCEL"
# The default offer (4 vCPUs per host CPU) would refuse part of the concurrent creates on a
# small host; the bench measures boots, not admission.
vcpus = $((CONCURRENT > 16 ? CONCURRENT * 2 : 32))
[prismnet_agent]
enabled = false
CFG
"$UC" up --config "$WORK/config.toml" --data-dir "$DATA" >"$WORK/up.log" 2>&1 &
UP_PID=$!
for _ in $(seq 1 600); do
  curl -fsS "http://127.0.0.1:$((BASE + 70))/readyz" >/dev/null 2>&1 && break
  kill -0 "$UP_PID" 2>/dev/null || { cat "$WORK/up.log"; exit 1; }
  sleep 0.2
done
EP="http://127.0.0.1:$((BASE + 87))"
TOKEN="$DATA/secrets/admin-token"
vm() { "$UC" vm --endpoint "$EP" --token-file "$TOKEN" "$@"; }

# The tiny guest (built by the hypervisor's helper, which also resolves the accelerator).
mapfile -t floor_args < <(UC_ACCEL=$ACCEL "$HELPER" cmdline "$WORK/hv" probe)
accel=$(printf '%s\n' "${floor_args[@]}" | grep -A1 -x -- -accel | tail -n1)
arg_after() { printf '%s\n' "${floor_args[@]}" | grep -A1 -x -- "$1" | tail -n1; }
"$UC" image --endpoint "$EP" --token-file "$TOKEN" create tiny \
  --kernel "$(arg_after -kernel)" --initrd "$(arg_after -initrd)" \
  --cmdline "console=ttyS0 loglevel=4" >/dev/null
worker_accel=$("$UC" worker --endpoint "$EP" --token-file "$TOKEN" -o json list | grep -o '"accel": "[a-z]*"' | head -n1 | cut -d'"' -f4)

now_ms() { date +%s%3N; }
p50() { sort -n | awk '{a[NR]=$1} END {if (NR==0) {print "nan"; exit} m=int((NR+1)/2); print a[m]}'; }

# Execs a saved command line by hand (the VM's run dir and seed moved to $dir), and times it
# to the marker.
floor_boot() {
  local saved=$1 dir=$2 run_dir=$3 seed=$4 seed_copy=$5
  mkdir -p "$dir"
  cp "$seed_copy" "$dir/seed.iso"
  mapfile -d '' -t args <"$saved"
  local a=()
  for x in "${args[@]:1}"; do
    x=${x//$seed/$dir/seed.iso}
    a+=("${x//$run_dir/$dir}")
  done
  local t0 t1
  t0=$(now_ms)
  qemu-system-x86_64 "${a[@]}"
  # Polled like the CLI polls the console API (every 50 ms), with a builtin read: a grep
  # process every 10 ms measurably slowed the TCG guest on a 2-core host.
  local log=
  while :; do
    [ -e "$dir/serial.log" ] && { IFS= read -r -d '' log <"$dir/serial.log" || true; }
    [[ $log == *UC-BOOT-OK* ]] && break
    sleep 0.05
  done
  t1=$(now_ms)
  kill -9 "$(cat "$dir/qemu.pid")" 2>/dev/null || true
  echo $((t1 - t0))
}

echo "==> $BOOTS boots each, alternating: vm create -> UC-BOOT-OK (platform) / same QEMU command line by hand (floor)"
plat=()
floor=()
running=()
for i in $(seq 0 $((BOOTS - 1))); do
  t0=$(now_ms)
  # Table output: the progress lines (stderr) are printed only then.
  id=$(vm create "seq-$i" --image tiny --memory "$MEMORY" --wait-console UC-BOOT-OK --timeout 600 \
        2>"$WORK/progress-$i" | grep -o 'vm-[0-9a-f]\{16\}' | head -n1)
  t1=$(now_ms)
  plat+=($((t1 - t0)))
  # The CLI's progress line "[  0.4s] seq-i is running": create -> QEMU started and reported.
  running+=("$(grep -m1 ' is running' "$WORK/progress-$i" | sed 's/^\[ *\([0-9.]*\)s\].*/\1/' | awk '{printf "%d", $1 * 1000}' || echo nan)")
  pid=$(pgrep -f "guest=$id," | head -n1)
  cp "/proc/$pid/cmdline" "$WORK/cmdline-$i"
  seed="$DATA/plasmavmc-worker/seeds/$id/seed.iso"
  cp "$seed" "$WORK/seed-$i.iso"
  vm delete --force "$id" >/dev/null 2>&1
  f=$(floor_boot "$WORK/cmdline-$i" "$WORK/floor-$i" "$DATA/plasmavmc-worker/run/$id" "$seed" "$WORK/seed-$i.iso")
  floor+=("$f")
  echo "boot $i: platform ${plat[-1]} ms, floor $f ms"
done
plat_p50=$(printf '%s\n' "${plat[@]}" | p50)
running_p50=$(printf '%s\n' "${running[@]}" | p50)
floor_p50=$(printf '%s\n' "${floor[@]}" | p50)

conc_line="skipped"
if [ "$CONCURRENT" -gt 0 ]; then
  echo "==> $CONCURRENT concurrent creates"
  t0=$(now_ms)
  pids=()
  for i in $(seq 0 $((CONCURRENT - 1))); do
    ( s=$(now_ms)
      vm -o json create "conc-$i" --image tiny --memory "$MEMORY" --wait-console UC-BOOT-OK --timeout 900 >"$WORK/conc-$i.json"
      echo $(( $(now_ms) - s )) >"$WORK/conc-$i.ms" ) &
    pids+=($!)
  done
  failed=0
  for p in "${pids[@]}"; do wait "$p" || failed=$((failed + 1)); done
  t1=$(now_ms)
  each=()
  for i in $(seq 0 $((CONCURRENT - 1))); do [ -s "$WORK/conc-$i.ms" ] && each+=("$(cat "$WORK/conc-$i.ms")"); done
  conc_p50=$(printf '%s\n' "${each[@]}" | p50)
  conc_max=$(printf '%s\n' "${each[@]}" | sort -n | tail -n1)
  conc_line="$CONCURRENT at once: all booted in $((t1 - t0)) ms (per VM p50 $conc_p50 ms, max $conc_max ms), failures: $failed"
  echo "$conc_line"
  for i in $(seq 0 $((CONCURRENT - 1))); do
    id=$(grep -o '"id": "vm-[0-9a-f]*"' "$WORK/conc-$i.json" 2>/dev/null | head -n1 | cut -d'"' -f4)
    [ -n "$id" ] && vm delete --force "$id" >/dev/null 2>&1 || true
  done
fi

mkdir -p "$(dirname "$RESULTS")"
{
  echo "plasmavmc bench $(date -u +%Y-%m-%dT%H:%M:%SZ) ($PROFILE build)"
  echo "host: $(nproc) cores, $(uname -r), $(qemu-system-x86_64 --version | head -n1)"
  echo "guest: tiny Debian kernel + busybox initramfs + NoCloud seed, 1 vCPU, $MEMORY MiB, accel=$worker_accel (floor helper resolved: $accel)"
  echo "platform: ultracloud vm create --wait-console UC-BOOT-OK (CLI -> API -> flaredb -> worker -> QEMU -> console API)"
  echo "floor: the same QEMU command line (captured from /proc of the platform's VM) exec'd by hand, serial log polled every 50 ms"
  echo "platform ms: ${plat[*]}"
  echo "floor    ms: ${floor[*]}"
  echo "create -> running ms: ${running[*]} (CLI progress, 50 ms polls: the control plane + worker part alone)"
  echo "p50 create -> running: $running_p50 ms"
  echo "p50 platform: $plat_p50 ms"
  echo "p50 floor:    $floor_p50 ms"
  awk -v p="$plat_p50" -v f="$floor_p50" 'BEGIN {printf "ratio platform/floor: %.3f  (platform overhead %+d ms; target < 1000 ms)\n", p/f, p-f}'
  echo "concurrent: $conc_line"
} | tee "$RESULTS"

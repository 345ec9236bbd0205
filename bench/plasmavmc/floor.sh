#!/usr/bin/env bash
# plasmavmc floor: the time from starting QEMU to the tiny guest's boot marker (UC-BOOT-OK on
# the serial console), with the exact command line the hypervisor layer runs exec'd directly
# (no hypervisor layer: the floor); side by side with the same boots through
# plasmavmc::hypervisor's Hypervisor::start (QMP connect + bookkeeping). p50 over BOOTS boots
# each, and the ratio. Both sides are timed by the same helper (crates/plasmavmc/examples/
# hv_floor.rs) polling the console log every 10 ms, so polling costs the same on both.
# The control plane's bench (vm create → marker) compares against the floor printed here.
#
# Environment (all optional):
#   BOOTS=10        boots per side
#   UC_ACCEL=auto   auto|kvm|tcg (auto: KVM only if a probe guest makes progress under it)
#   SKIP_BUILD=0    1: use the existing target/debug/examples/hv_floor
#   RESULTS=bench/results/plasmavmc-floor-<date>.txt
#
# The helper is a debug build on purpose: QEMU's boot dominates both sides and the bench
# should not need a release build of the whole plasmavmc crate.
set -euo pipefail
cd "$(dirname "$0")/../.."

BOOTS=${BOOTS:-10}
export UC_ACCEL=${UC_ACCEL:-auto}
RESULTS=${RESULTS:-bench/results/plasmavmc-floor-$(date -u +%Y-%m-%d).txt}

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  cargo build -q -p plasmavmc --example hv_floor
fi
HELPER=${CARGO_TARGET_DIR:-target}/debug/examples/hv_floor

WORK=$(mktemp -d /tmp/uc-floor.XXXXXX)
cleanup() {
  for pidfile in "$WORK"/run/*/qemu.pid; do
    [ -e "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    # Only our by-hand QEMUs: their command line carries this work dir's pidfile path.
    if tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -qF -- "$pidfile"; then
      kill -9 "$pid" 2>/dev/null || true
    fi
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

p50() { sort -n | awk '{a[NR]=$1} END {if (NR==0) {print "nan"; exit} m=int((NR+1)/2); print a[m]}'; }

# Resolve the accelerator once (later helper runs then skip the KVM probe) and record the
# command line.
mapfile -t args < <("$HELPER" cmdline "$WORK" floor-cmdline)
export UC_ACCEL=$(printf '%s\n' "${args[@]}" | grep -A1 -x -- -accel | tail -n1)
rm -rf "$WORK/run/floor-cmdline"

# The two sides alternate boot by boot so that load from elsewhere on the machine hits both.
echo "==> $BOOTS boots each, alternating: QEMU command line exec'd directly (floor) / Hypervisor::start"
floor=()
hv=()
for i in $(seq 0 $((BOOTS - 1))); do
  read -r _ _ floor_ms < <("$HELPER" floor "$WORK" 1 2>/dev/null)
  read -r _ _ hv_ms < <("$HELPER" hv "$WORK" 1 2>/dev/null)
  floor+=("$floor_ms")
  hv+=("$hv_ms")
  echo "boot $i: floor $floor_ms ms, hypervisor $hv_ms ms"
done
accel=$UC_ACCEL

floor_p50=$(printf '%s\n' "${floor[@]}" | p50)
hv_p50=$(printf '%s\n' "${hv[@]}" | p50)

mkdir -p "$(dirname "$RESULTS")"
{
  echo "plasmavmc floor bench $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "host: $(nproc) cores, $(uname -r), $(qemu-system-x86_64 --version | head -n1)"
  echo "guest: tiny Debian kernel + busybox initramfs, 1 vCPU, 96 MiB, accel=$accel"
  echo "boots per side: $BOOTS; time = QEMU exec -> UC-BOOT-OK on the serial console"
  echo "command line: qemu-system-x86_64 ${args[*]}"
  echo "floor (by hand)      ms: ${floor[*]}"
  echo "hypervisor (start)   ms: ${hv[*]}"
  echo "p50 floor:      $floor_p50 ms   (min $(printf '%s\n' "${floor[@]}" | sort -n | head -n1) ms)"
  echo "p50 hypervisor: $hv_p50 ms   (min $(printf '%s\n' "${hv[@]}" | sort -n | head -n1) ms)"
  awk -v f="$floor_p50" -v h="$hv_p50" 'BEGIN {printf "ratio hypervisor/floor: %.3f  (overhead %+d ms)\n", h/f, h-f}'
} | tee "$RESULTS"

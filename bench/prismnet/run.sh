#!/usr/bin/env bash
# prismnet port-ready latency: time from a port create (POST /v1/ports) to the first packet
# forwarded (a TCP connection from the new port's workload namespace to a probe port of the
# same subnet), p50/p90/p99 over COUNT ports created one after another, through the whole
# path: API -> flaredb -> long-poll wake-up of the host agent -> converge (veth, bridge,
# nftables sets/chains, dnsmasq lease) -> packet. Side by side with the floor: the same
# veth/bridge attach done directly with `ip` by one process (no control plane at all).
# Also records when the API first shows the port `active` (the agent's status report).
# Then runs bench/prismnet/throughput.sh (TCP throughput vs a plain veth) if present.
# Writes bench/results/prismnet-<date>.txt. Needs root.
#
# Environment (optional): COUNT=100  SKIP_BUILD=0  SKIP_THROUGHPUT=0
#   PROFILE=release (debug: a quick check of the script; the figures mean little)
#   UP_LOG=warn (info: the agent logs each dataplane pass with its duration)
#   KEEP_LOG=<file> (copy up's log there)
set -euo pipefail
cd "$(dirname "$0")/../.."

COUNT=${COUNT:-100}
SKIP_BUILD=${SKIP_BUILD:-0}
SKIP_THROUGHPUT=${SKIP_THROUGHPUT:-0}
PROFILE=${PROFILE:-release}
UP_LOG=${UP_LOG:-warn}
KEEP_LOG=${KEEP_LOG:-}
P=pnb
HOSTNS=$P-host
# `ultracloud up` on its own loopback address (uc-testkit uses 127.0.0.10+, other benches
# 127.0.0.200-240).
IP=127.0.0.246
DATA=$(mktemp -d /var/tmp/prismnet-bench.XXXXXX)
RESULTS=bench/results
mkdir -p "$RESULTS"
OUT="$RESULTS/prismnet-$(date -u +%Y-%m-%d).txt"

[ "$(id -u)" -eq 0 ] || { echo "needs root (network namespaces)" >&2; exit 1; }
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

if [[ $SKIP_BUILD != 1 ]]; then
  log "building ($PROFILE)"
  cargo build -q --profile "${PROFILE/debug/dev}" -p ultracloud
  cargo build -q --profile "${PROFILE/debug/dev}" -p prismnet --example port_ready --example plan_apply
fi
UC=target/$PROFILE/ultracloud
PR=target/$PROFILE/examples/port_ready
PLAN_APPLY=target/$PROFILE/examples/plan_apply
source_desc="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git status --porcelain -- crates 2>/dev/null | grep -q . && echo " + uncommitted changes in crates/" || true)"

UP_PID=""
cleanup() {
  if [[ -n $UP_PID ]]; then kill "$UP_PID" 2>/dev/null || true; wait "$UP_PID" 2>/dev/null || true; fi
  if [[ -n $KEEP_LOG ]]; then cp "$DATA/up.log" "$KEEP_LOG" 2>/dev/null || true; fi
  "$PLAN_APPLY" --netns "$HOSTNS" --teardown "$P" "$DATA/data/prismnet-agent/dataplane" >/dev/null 2>&1 || true
  for ns in $(ip netns list | awk '{print $1}' | grep -E "^$P-" || true); do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$DATA"
}
trap cleanup EXIT
ip netns del "$HOSTNS" 2>/dev/null || true
ip netns add "$HOSTNS"
ip -n "$HOSTNS" link set lo up

port() { echo $((26900 + $1)); }
cat >"$DATA/node.toml" <<CFG
[node]
bind = "$IP"
port = $(port 0)
name = "bench-node"
[log]
level = "$UP_LOG"
[chainfire]
client_port = $(port 1)
peer_port = $(port 2)
admin_port = $(port 3)
[flaredb]
rest_port = $(port 4)
pg_port = $(port 5)
peer_port = $(port 6)
[iam]
port = $(port 7)
[coronafs]
port = $(port 8)
[plasmavmc]
port = $(port 9)
[plasmavmc_worker]
enabled = false
[prismnet]
port = $(port 10)
[prismnet_agent]
host = "bench-host"
prefix = "$P"
netns = "$HOSTNS"
CFG

log "starting ultracloud up (agent manages netns $HOSTNS)"
"$UC" up --config "$DATA/node.toml" --data-dir "$DATA/data" >"$DATA/up.log" 2>&1 &
UP_PID=$!
for _ in $(seq 300); do
  curl -fs "http://$IP:$(port 0)/readyz" >/dev/null 2>&1 && break
  kill -0 "$UP_PID" 2>/dev/null || { cat "$DATA/up.log" >&2; exit 1; }
  sleep 0.1
done
curl -fs "http://$IP:$(port 0)/readyz" >/dev/null || { echo "up never became ready" >&2; exit 1; }

log "prismnet: $COUNT ports"
PRISMNET=$("$PR" prismnet --api "http://$IP:$(port 10)" --token-file "$DATA/data/secrets/admin-token" \
  --host bench-host --prefix "$P" --count "$COUNT")
log "floor: $COUNT veth attaches by hand"
FLOOR=$("$PR" floor --prefix "$P" --count "$COUNT")

read -r P50 P90 P99 MAX A50 A99 C50 C99 F50 F99 < <(python3 - "$PRISMNET" "$FLOOR" <<'PY'
import json, sys
p = json.loads(sys.argv[1]); f = json.loads(sys.argv[2])
r = p["ready"]
print("%.1f %.1f %.1f %.1f %.1f %.1f %.1f %.1f %.1f %.1f" % (
    r["p50_ms"], r["p90_ms"], r["p99_ms"], r["max_ms"],
    p["api_active"]["p50_ms"], p["api_active"]["p99_ms"],
    p["api_create"]["p50_ms"], p["api_create"]["p99_ms"],
    f["ready"]["p50_ms"], f["ready"]["p99_ms"]))
PY
)
RATIO=$(python3 -c "print('%.1f' % ($P50 / $F50))")
{
  echo "# prismnet port-ready latency, $(date -u +%Y-%m-%dT%H:%M:%SZ), build $source_desc"
  echo "# host: $(uname -r), $(nproc) CPUs; ultracloud up ($PROFILE build) with the agent converging a host netns"
  echo "# $COUNT ports created one after another; ready = create call -> first TCP connection from the"
  echo "# port's workload netns to a probe port in the same subnet (the workload sets its IPAM address"
  echo "# statically once eth0 exists, with a 10 ms ARP retransmit time instead of the kernel's 1 s so an"
  echo "# ARP sent before the port is wired does not quantize the result to seconds)."
  echo "# floor = the same veth+bridge attach done directly with ip(8) by one process."
  echo "prismnet_ready_ms   p50 $P50  p90 $P90  p99 $P99  max $MAX   (target p99 < 1000)"
  echo "prismnet_api_create_ms   p50 $C50  p99 $C99"
  echo "prismnet_api_shows_active_ms   p50 $A50  p99 $A99"
  echo "floor_ready_ms      p50 $F50  p99 $F99"
  echo "ratio_p50 (prismnet/floor)  $RATIO"
} | tee "$OUT"

if [[ $SKIP_THROUGHPUT != 1 && -x bench/prismnet/throughput.sh ]]; then
  log "throughput (bench/prismnet/throughput.sh)"
  bench/prismnet/throughput.sh | tail -5 | tee -a "$OUT"
fi
log "wrote $OUT"

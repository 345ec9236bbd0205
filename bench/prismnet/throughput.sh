#!/usr/bin/env bash
# prismnet dataplane throughput: iperf3 TCP between two ports of one subnet (veth -> bridge ->
# veth, with br_netfilter conntrack and the nftables security-group chains in the path)
# against the physical floor of the same kernel: two namespaces joined by one plain veth pair.
# Same MTU on both sides. Prints both figures and the ratio; writes
# bench/results/prismnet-throughput-<date>.txt. Needs root.
#
#   bench/prismnet/throughput.sh [seconds-per-run (default 8)] [rounds (default 3)]
#
# Rounds alternate prismnet / plain veth so background load on the machine hits both alike;
# the reported figure is the median per side.
set -euo pipefail
cd "$(dirname "$0")/../.."

SECS=${1:-8}
ROUNDS=${2:-3}
MTU=1500
P=ucbench
HOST=$P-host
STATE=$(mktemp -d)
RESULTS=bench/results
mkdir -p "$RESULTS"
OUT="$RESULTS/prismnet-throughput-$(date -u +%Y-%m-%d).txt"

[ "$(id -u)" -eq 0 ] || { echo "needs root (network namespaces)" >&2; exit 1; }
# iperf3 is only needed here, not by the tests, so the bench installs it itself.
if ! command -v iperf3 >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends iperf3
fi

echo "==> building plan_apply (the dataplane library's converge, as a CLI)"
cargo build -q -p prismnet --example plan_apply
PLAN_APPLY=target/debug/examples/plan_apply

cleanup() {
  "$PLAN_APPLY" --netns "$HOST" --teardown "$P" "$STATE" >/dev/null 2>&1 || true
  for ns in "$HOST" $P-a $P-b $P-v1 $P-v2; do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$STATE"
}
trap cleanup EXIT
cleanup
STATE=$(mktemp -d)

# --- prismnet: one subnet, two netns ports, security groups with conntrack ------------------
ip netns add "$HOST"
ip netns add $P-a
ip netns add $P-b
cat >"$STATE/plan.json" <<EOF
{
  "host": "bench", "prefix": "$P",
  "networks": [{
    "subnet_id": "be0c000001", "vni": 9001, "cidr": "10.99.0.0/24", "mtu": $MTU,
    "ports": [
      {"port_id": "be0a000001", "mac": "02:be:00:00:00:01", "ips": ["10.99.0.1"],
       "attachment": {"kind": "netns", "netns": "$P-a"}, "security_groups": ["bench"]},
      {"port_id": "be0b000001", "mac": "02:be:00:00:00:02", "ips": ["10.99.0.2"],
       "attachment": {"kind": "netns", "netns": "$P-b"}, "security_groups": ["bench"]}
    ]
  }],
  "security_groups": [{
    "sg_id": "bench",
    "members": ["10.99.0.1", "10.99.0.2"],
    "rules": [
      {"direction": "egress", "protocol": "any"},
      {"direction": "ingress", "protocol": "tcp", "port_min": 5201, "port_max": 5201,
       "remote": {"kind": "group", "value": "bench"}},
      {"direction": "ingress", "protocol": "icmp"}
    ]
  }]
}
EOF
"$PLAN_APPLY" --netns "$HOST" "$STATE/plan.json" "$STATE" >/dev/null
ip -n $P-a addr add 10.99.0.1/24 dev eth0
ip -n $P-b addr add 10.99.0.2/24 dev eth0
# Security groups really are in the path: a port without an ingress rule is closed.
ip netns exec $P-a busybox ping -c1 -W2 10.99.0.2 >/dev/null
if ip netns exec $P-a timeout 3 busybox nc -w 1 10.99.0.2 5202 </dev/null 2>/dev/null; then
  echo "port 5202 should be filtered" >&2; exit 1
fi

# --- the floor: a plain veth pair ------------------------------------------------------------
ip netns add $P-v1
ip netns add $P-v2
ip -n $P-v1 link add eth0 mtu $MTU type veth peer name eth0 mtu $MTU netns $P-v2
ip -n $P-v1 addr add 10.98.0.1/24 dev eth0
ip -n $P-v2 addr add 10.98.0.2/24 dev eth0
for ns in $P-v1 $P-v2; do ip -n $ns link set eth0 up; ip -n $ns link set lo up; done
ip netns exec $P-v1 busybox ping -c1 -W2 10.98.0.2 >/dev/null

# One iperf3 run; prints Gbit/s received.
iperf() { # client-ns server-ns server-ip
  ip netns exec "$2" iperf3 -s -1 -D -p 5201 >/dev/null
  for _ in $(seq 50); do ip netns exec "$2" ss -ltn 2>/dev/null | grep -q ':5201' && break; sleep 0.1; done
  ip netns exec "$1" iperf3 -c "$3" -p 5201 -t "$SECS" -J |
    python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))'
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

pr=(); pv=()
for r in $(seq "$ROUNDS"); do
  pr+=("$(iperf $P-a $P-b 10.99.0.2)")
  pv+=("$(iperf $P-v1 $P-v2 10.98.0.2)")
  echo "round $r: prismnet ${pr[-1]} Gbit/s, plain veth ${pv[-1]} Gbit/s"
done
PR=$(printf '%s\n' "${pr[@]}" | median)
PV=$(printf '%s\n' "${pv[@]}" | median)
RATIO=$(python3 -c "print('%.2f' % ($PR/$PV))")

{
  echo "# prismnet dataplane throughput, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "# host: $(uname -r), $(nproc) CPUs, $(iperf3 --version | head -1)"
  echo "# iperf3 TCP, 1 stream, ${SECS}s per run, $ROUNDS rounds alternating, median; MTU $MTU"
  echo "# prismnet: netns port -> veth -> bridge (br_netfilter conntrack, zone) -> nft SG chains -> veth -> netns port"
  echo "# plain veth: two namespaces joined by one veth pair (no bridge, no netfilter)"
  echo "prismnet_gbps_runs   ${pr[*]}"
  echo "plain_veth_gbps_runs ${pv[*]}"
  echo "prismnet_gbps   $PR"
  echo "plain_veth_gbps $PV"
  echo "ratio           $RATIO   (target >= 0.90)"
} | tee "$OUT"
echo "==> wrote $OUT"

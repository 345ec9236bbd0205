#!/usr/bin/env bash
# The one test command (README; .ci/run calls it). On a fresh Debian 12 machine with the Rust
# toolchain it installs whatever the tests need, then runs the whole suite and the lints.
# Extra arguments go to `cargo nextest run` (e.g. a test-name filter).
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests drive as real peers/clients. Components add theirs here.
#   etcd-client, etcd-server: etcdctl against chainfire; a real etcd for differential tests
#   postgresql-client: psql against flaredb's PostgreSQL wire protocol
#   qemu-utils: qemu-img/qemu-nbd behind coronafs volumes; qemu-io reads/writes them in tests
#   iproute2, nftables, dnsmasq-base: the prismnet dataplane (ip/bridge, nft, DHCP servers)
#   busybox-static: DHCP client (udhcpc) and ping inside the dataplane tests' workload netns
#   qemu-system-x86, linux-image-amd64, genisoimage, xz-utils: plasmavmc's real guests (Debian's
#     kernel + busybox-static initramfs, NoCloud seed ISO, kernel unpacked for PVH boot)
PACKAGES=(etcd-client etcd-server postgresql-client qemu-utils iproute2 nftables dnsmasq-base busybox-static qemu-system-x86 linux-image-amd64 genisoimage xz-utils)

missing_packages() {
  missing=()
  for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
}
missing_packages
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "==> installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
  # A locally installed newer version of one package (e.g. a backported qemu-utils) can be
  # removed to satisfy another's dependencies: install whatever that took away, from the
  # same release as the rest, and stop if anything is still missing.
  missing_packages
  if ((${#missing[@]})); then
    echo "==> installing Debian packages removed by the first install: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
    missing_packages
    if ((${#missing[@]})); then
      echo "cannot install: ${missing[*]}" >&2
      exit 1
    fi
  fi
  # Debian starts an etcd service on 127.0.0.1:2379 when etcd-server is installed; tests start
  # their own etcd, and `ultracloud up` needs port 2379 for chainfire.
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet etcd 2>/dev/null; then
    $sudo systemctl disable --now etcd || true
  fi
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "==> installing cargo-nextest"
  cargo install --locked cargo-nextest
fi
# The etcd-client crate (test-only) compiles protos via $PROTOC; protox is a pure-Rust protoc
# (.cargo/config.toml points PROTOC at it). No system protoc is ever needed.
if ! command -v protox >/dev/null 2>&1; then
  echo "==> installing protox"
  cargo install --locked protox --version 0.10.0 --features bin
fi

echo "==> tests"
cargo nextest run --workspace --all-targets "$@"

echo "==> lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings

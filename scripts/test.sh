#!/usr/bin/env bash
# The one test command (README; .ci/run calls it). On a fresh Debian 12 machine with the Rust
# toolchain it installs whatever the tests need, then runs the whole suite and the lints.
# Extra arguments go to `cargo nextest run` (e.g. a test-name filter).
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests drive as real peers/clients. Components add theirs here.
PACKAGES=()

missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "==> installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "==> installing cargo-nextest"
  cargo install --locked cargo-nextest
fi

echo "==> tests"
cargo nextest run --workspace --all-targets "$@"

echo "==> lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings

#!/usr/bin/env bash
# Installs exactly the Debian packages the build, tests and benchmarks need.
# Idempotent: packages already present are not fetched again.
set -euo pipefail
pkgs=(
  build-essential cmake pkg-config git
  fuse3 libfuse3-dev fuse-overlayfs
  libcurl4-openssl-dev libssl-dev
  libcpp-httplib-dev nlohmann-json3-dev
  curl chromium libgtest-dev libgmock-dev libbenchmark-dev
  help2man
  e2fsprogs mount
  python3 python3-yaml
)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

#!/usr/bin/env bash
# Installs the Debian packages the tests and benchmarks need, when they are missing.
# evmctl (ima-evm-utils) and openssl are independent oracles; attr gives getfattr/setfattr.
set -euo pipefail
need=()
command -v evmctl   >/dev/null 2>&1 || need+=(ima-evm-utils)
command -v getfattr >/dev/null 2>&1 || need+=(attr)
command -v openssl  >/dev/null 2>&1 || need+=(openssl)
command -v xxd      >/dev/null 2>&1 || need+=(xxd)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing Debian packages: ${need[*]}; run as root or install them" >&2
  exit 1
fi
echo "install-deps: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null

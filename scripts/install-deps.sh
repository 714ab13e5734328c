#!/usr/bin/env bash
# Installs the Debian packages the tests and benchmarks need, when they are missing:
#   ima-evm-utils (evmctl), openssl, attr (getfattr/setfattr), xxd, fsverity - independent oracles
#   swtpm, swtpm-tools, tpm2-tools, tss2                             - a software TPM and its tools
#   libtss2-dev, pkg-config, gcc                                     - to build tpm2-pytss
#   libssl-dev                        - to build imaguard's optional C extension (setup.py)
#   softhsm2, p11-kit-modules (p11-kit-proxy.so, the default module)  - a software
#   PKCS#11 token for the token-key tests; libengine-pkcs11-openssl for evmctl --engine pkcs11
#   e2fsprogs (mkfs.ext4, fsck.ext4), mount (mount -o loop, losetup) - small file systems
#   the measurement-log tests fill up (ENOSPC, a device failing at writeback)
set -euo pipefail
pkgs=(ima-evm-utils attr openssl xxd fsverity swtpm swtpm-tools tpm2-tools tss2 libtss2-dev pkg-config gcc libssl-dev
      softhsm2 p11-kit-modules libengine-pkcs11-openssl e2fsprogs mount)
need=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
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

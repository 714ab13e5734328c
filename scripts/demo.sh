#!/usr/bin/env bash
# The demo: a throwaway key and certificate, a signed sample tree, a verification,
# then one tampered file and the failure it causes. Everything happens in a temp dir.
set -euo pipefail
IG="$(pwd)/.venv/bin/imaguard"
work="$(mktemp -d "${TMPDIR:-/tmp}/imaguard-demo.XXXXXX")"
trap 'rm -rf "$work"' EXIT
step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }

# Pick where signatures live: security.ima as root, user.ima otherwise, a .sig file if
# this filesystem keeps no xattrs at all.
store=xattr; [ "$(id -u)" -eq 0 ] || store=user-xattr
probe="$work/.probe"; : > "$probe"
if ! python3 -c "import os,sys; os.setxattr(sys.argv[1], sys.argv[2], b'x')" "$probe" \
     "$([ $store = xattr ] && echo security.ima || echo user.ima)" 2>/dev/null; then
  store=sigfile
fi
rm -f "$probe"

mkdir -p "$work/tree/bin" "$work/tree/etc"
printf '#!/bin/sh\necho hello\n' > "$work/tree/bin/hello"
printf 'setting = 1\n' > "$work/tree/etc/app.conf"
head -c 200000 /dev/urandom > "$work/tree/bin/blob"
cd "$work"

step imaguard keys generate --type ecdsa-p256 --out keys
"$IG" keys generate --type ecdsa-p256 --out keys

step imaguard sign --key keys/private.pem --store $store -r tree
"$IG" sign --key keys/private.pem --store $store -r tree

step imaguard show --store $store tree/bin/hello
"$IG" show --store $store tree/bin/hello

step imaguard verify --cert keys/cert.der --store $store -v -r tree
"$IG" -v verify --cert keys/cert.der --store $store -r tree

step "echo 'setting = 2' > tree/etc/app.conf   # tamper with one file"
echo 'setting = 2' > tree/etc/app.conf

step imaguard verify --cert keys/cert.der --store $store -r tree
set +e
"$IG" verify --cert keys/cert.der --store $store -r tree
rc=$?
set -e
echo "exit code: $rc (1 = a file failed verification)"
if [ "$rc" -ne 1 ]; then
  echo "demo: expected the tampered file to fail verification" >&2
  exit 1
fi
echo
echo "demo: done - the untouched files verify, the tampered one fails with invalid-signature."

#!/usr/bin/env bash
# The demo: a throwaway key and certificate, a signed sample tree, a verification,
# then one tampered file and the failure it causes. Everything happens in a temp dir.
set -euo pipefail
IG="$(pwd)/.venv/bin/imaguard"
work="$(mktemp -d "${TMPDIR:-/tmp}/imaguard-demo.XXXXXX")"
daemon_pid=""
cleanup() {
  if [ -n "$daemon_pid" ]; then kill -TERM "$daemon_pid" 2>/dev/null || true; fi
  if mountpoint -q "$work/mnt" 2>/dev/null; then umount -l "$work/mnt" || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
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
echo "demo: the untouched files verify, the tampered one fails with invalid-signature."

# The enforcement daemon, on a tmpfs of its own: the only filesystem it marks.
PY="$(dirname "$IG")/python"
why=""
if [ "$(id -u)" -ne 0 ]; then
  why="it needs root (fanotify permission events)"
elif ! "$PY" -c 'from imaguard.enforce import FanotifyGroup; FanotifyGroup.create().close()' 2>/dev/null; then
  why="fanotify permission events are not available here"
fi
if [ -n "$why" ]; then
  echo
  echo "demo: the daemon step is skipped: $why."
  exit 0
fi

step "mount -t tmpfs tmpfs mnt   # the daemon will watch this filesystem only"
mkdir -p mnt ring
mount -t tmpfs -o size=16m,mode=0755 tmpfs "$work/mnt"
cp /bin/true mnt/signed; cp /bin/true mnt/unsigned; cp keys/cert.der ring/
"$IG" sign --key keys/private.pem mnt/signed
cat > exec-guard.policy <<POLICY
appraise func=BPRM_CHECK fsmagic=0x01021994 appraise_type=imasig
appraise func=MMAP_CHECK mask=MAY_EXEC fsmagic=0x01021994 appraise_type=imasig
measure func=BPRM_CHECK fsmagic=0x01021994
POLICY
cat > imaguard.toml <<CONFIG
mode = "enforce"
watch = ["$work/mnt"]
state = "$work/state"
socket = "$work/control.sock"
keyrings = ["$work/ring"]

[[policy]]
name = "exec-guard"
owner = "admin"
file = "exec-guard.policy"
lock = "open"
CONFIG
cat imaguard.toml

step imaguard daemon --foreground --config imaguard.toml '&'
timeout 120 "$IG" daemon --foreground --config imaguard.toml 2> daemon.log &
for _ in $(seq 100); do
  "$IG" status --socket control.sock >/dev/null 2>&1 && break
  sleep 0.1
done
daemon_pid="$("$IG" status --socket control.sock --json | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["pid"])')"
"$IG" status --socket control.sock

step "./mnt/signed; echo \$?"
set +e
./mnt/signed; rc_signed=$?
echo "$rc_signed"
step "./mnt/unsigned; echo \$?"
./mnt/unsigned; rc_unsigned=$?
echo "$rc_unsigned (126: refused with EPERM, 'Operation not permitted')"
ldso=/lib64/ld-linux-x86-64.so.2
step "$ldso ./mnt/unsigned   # the ld.so trick"
"$ldso" ./mnt/unsigned; rc_ldso=$?
echo "$rc_ldso"
set -e
sleep 0.5
step "grep denied state/audit.jsonl   # the audit record names the policy and rule"
grep '"result": "denied"' state/audit.jsonl | head -1 | "$PY" -m json.tool --no-ensure-ascii | \
  grep -E '"(file|hook|policy|rule|cause|result)"'
step imaguard status --socket control.sock
"$IG" status --socket control.sock

step "kill -TERM $daemon_pid; umount mnt"
kill -TERM "$daemon_pid"
for _ in $(seq 100); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.1; done
daemon_pid=""
umount "$work/mnt"
if [ "$rc_signed" -ne 0 ] || [ "$rc_unsigned" -ne 126 ] || [ "$rc_ldso" -eq 0 ]; then
  echo "demo: the daemon did not decide as expected (signed $rc_signed, unsigned $rc_unsigned, ld.so $rc_ldso)" >&2
  exit 1
fi
echo
echo "demo: done - the signed program ran; the unsigned one and the ld.so trick were refused."

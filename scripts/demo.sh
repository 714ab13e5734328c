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

# Verified loaders: what runs (and what Python imports) is the copy that was verified.
mkdir -p ring-demo; cp keys/cert.der ring-demo/
cp "$(command -v dash || command -v sh)" tree/bin/sh
printf '#!%s\necho "verified script, args: $*"\n' "$work/tree/bin/sh" > tree/bin/greet
printf 'GREETING = "imported from verified bytes"\n' > tree/greeting.py
printf 'import greeting\nprint(greeting.GREETING)\n' > tree/main.py
"$IG" sign --key keys/private.pem --store $store tree/bin/sh tree/bin/greet tree/greeting.py tree/main.py >/dev/null
step "imaguard exec --keyring ring-demo --trust-loader -- tree/bin/greet a b   # script and interpreter run from sealed copies"
"$IG" exec --keyring ring-demo --store $store --trust-loader -- tree/bin/greet a b
step "python -m imaguard.run --keyring ring-demo tree/main.py   # every import verified"
PY="$(dirname "$IG")/python"
"$PY" -m imaguard.run --keyring ring-demo --store $store tree/main.py
step "echo 'GREETING = \"evil\"' > tree/greeting.py; python -m imaguard.run ... (refused)"
echo 'GREETING = "evil"' > tree/greeting.py
set +e
"$PY" -m imaguard.run --keyring ring-demo --store $store tree/main.py 2>&1 | tail -1
rc_import=${PIPESTATUS[0]}
set -e
if [ "$rc_import" -eq 0 ]; then
  echo "demo: the tampered module was imported" >&2
  exit 1
fi

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
chmod 0755 "$work"   # other users reach the socket and their policy files
mkdir -p owners.d
printf 'name = "plugins"\nuids = [1001]\n' > owners.d/plugins.toml
printf 'name = "backup"\nuids = [1002]\n' > owners.d/backup.toml
cat > imaguard.toml <<CONFIG
mode = "enforce"
watch = ["$work/mnt"]
state = "$work/state"
socket = "$work/control.sock"
keyrings = ["$work/ring"]
owners = "$work/owners.d"

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

# Several owners, one machine: two subsystems (uid 1001 and 1002) each own their policies.
as_uid() { local u="$1"; shift; setpriv --reuid "$u" --regid "$u" --clear-groups "$@"; }
if command -v setpriv >/dev/null; then
  printf '#@ version 1\nappraise func=BPRM_CHECK fsmagic=0x01021994 appraise_type=imasig\n' > plugins.policy
  printf 'dont_appraise fsmagic=0x01021994\n' > quiet.policy
  chmod 0644 plugins.policy quiet.policy
  step "imaguard ctl load plugins plugins.policy --lock append-only   # as uid 1001 (owner plugins)"
  as_uid 1001 "$IG" ctl --socket control.sock load plugins plugins.policy --lock append-only
  step "imaguard ctl load backup-quiet quiet.policy   # as uid 1002 (owner backup)"
  as_uid 1002 "$IG" ctl --socket control.sock load backup-quiet quiet.policy
  set +e
  step "imaguard ctl replace plugins quiet.policy   # as uid 1002: not its policy"
  as_uid 1002 "$IG" ctl --socket control.sock replace plugins quiet.policy; rc_b=$?
  step "imaguard ctl remove plugins   # as root, who is nobody's owner here"
  "$IG" ctl --socket control.sock remove plugins; rc_root=$?
  step "./mnt/unsigned   # backup's dont_appraise switches off only backup's own policy"
  ./mnt/unsigned; rc_unsigned2=$?
  echo "$rc_unsigned2"
  set -e
  step "imaguard ctl decisions --owner plugins   # as uid 1001: where its rules took part"
  as_uid 1001 "$IG" ctl --socket control.sock decisions --owner plugins | tail -2
  step "imaguard ctl seal plugins; imaguard ctl policies"
  as_uid 1001 "$IG" ctl --socket control.sock seal plugins >/dev/null
  "$IG" ctl --socket control.sock policies
  step "imaguard log show --state state/log | grep imaguard:policy   # every change is measured"
  "$IG" log show --state state/log | grep 'imaguard:policy'
  if [ "$rc_b" -ne 2 ] || [ "$rc_root" -ne 2 ] || [ "$rc_unsigned2" -ne 126 ]; then
    echo "demo: the policy service did not refuse as expected ($rc_b, $rc_root, $rc_unsigned2)" >&2
    exit 1
  fi
else
  echo "demo: the several-owners step is skipped: setpriv (util-linux) is missing."
fi

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
echo "demo: done - the signed program ran; the unsigned one and the ld.so trick were refused;"
echo "      each owner changed only its own policy, and every change is in the log."

#!/usr/bin/env bash
# fapolicyd 1.1.7 for bench/bench_daemon.py only (a peer to compare against; never started
# outside a private mount namespace). Installed with service starts blocked, and its unit
# is not enabled: with Debian's shipped rules and an empty trust database, a started
# fapolicyd would deny every exec on the machine.
set -euo pipefail
if command -v fapolicyd >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-fapolicyd: needs root; the fapolicyd column of the benchmark is skipped" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
made_policy=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod 755 /usr/sbin/policy-rc.d
  made_policy=1
fi
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends fapolicyd >/dev/null
rm -f /etc/systemd/system/multi-user.target.wants/fapolicyd.service
if [ -n "$made_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi

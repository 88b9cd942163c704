#!/usr/bin/env bash
# The system programs the test suite drives, from Debian's packages, installed only when
# missing: Chromium (status-page browser test), PostgreSQL and Redis (scale-out tests; the
# tests start their own private servers on loopback from these binaries), nftables, iptables,
# iproute2 and util-linux's setpriv (`orchestrator capture` in a network namespace of the
# test's own), ca-certificates (`orchestrator trust --install-system` into a relocated store).
set -euo pipefail
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 \
  || missing+=(postgresql)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
# administration programs live in sbin, often off a normal user's PATH
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }
have nft || missing+=(nftables)
have iptables || missing+=(iptables)
have ip || missing+=(iproute2)
have setpriv || missing+=(util-linux)
have update-ca-certificates || missing+=(ca-certificates)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "error: the test suite needs ${missing[*]} and this script can only install them as root" >&2
  echo "       with apt-get; install them (Debian: apt-get install ${missing[*]}) and re-run." >&2
  exit 1
fi
echo "installing ${missing[*]} (Debian packages)"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${missing[@]}" >/dev/null

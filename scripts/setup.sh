#!/usr/bin/env bash
# One setup for a fresh Debian 12 machine, as root. Idempotent; a second run
# takes a few seconds. Installs Debian packages, the kernel-headers fallback
# bcc needs, a venv that imports Debian's bcc and takes PyPI packages, builds
# the native batch helper, and puts stenoctl on root's PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
VENV="$REPO/.venv"
log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

if [ "$(id -u)" != 0 ]; then
  echo "setup: run as root (it installs Debian packages and loads XDP programs)" >&2
  exit 77
fi

PKGS=(python3-bpfcc clang llvm linux-headers-amd64 tcpdump tshark netsniff-ng tcpreplay
      iperf3 xdp-tools bpftool libpcap-dev libbpf-dev stenographer stenographer-client
      python3-venv python3-dev jq curl iproute2 ethtool e2fsprogs procps make gcc libc6-dev
      util-linux time iputils-ping)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# Debian's stenographer package may try to start its own service: we only
# use its binaries (as oracle and benchmark peer), never its default config.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet stenographer 2>/dev/null; then
  systemctl stop stenographer || true
  systemctl disable stenographer >/dev/null 2>&1 || true
fi

# bcc wants /lib/modules/$(uname -r)/{build,source}; this kernel ships no
# headers, so point them at Debian's (UAPI-level use only; see PLATFORM.md).
KREL=$(uname -r)
if [ ! -e "/lib/modules/$KREL/build/include" ]; then
  H=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -1)
  C=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -1)
  if [ -n "$H" ] && [ -n "$C" ]; then
    log "linking /lib/modules/$KREL/{build,source} -> $H, $C"
    mkdir -p "/lib/modules/$KREL"
    ln -sfn "$H" "/lib/modules/$KREL/build"
    ln -sfn "$C" "/lib/modules/$KREL/source"
  else
    echo "setup: no linux-headers under /usr/src; bcc cannot compile XDP programs" >&2
    exit 1
  fi
fi
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf 2>/dev/null || true

stamp="$VENV/.stenoxdp-setup"
want=$(cat pyproject.toml | sha256sum | cut -c1-16)
if [ ! -x "$VENV/bin/python" ]; then
  log "creating venv $VENV (with Debian's site-packages for bcc)"
  /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "installing Python dependencies"
  "$VENV/bin/pip" install -q --disable-pip-version-check --upgrade pip setuptools wheel 2>&1 | grep -v '^WARNING: Location' || true
  PYTHONWARNINGS=ignore "$VENV/bin/pip" install -q --disable-pip-version-check -e ".[test]" 2>&1 | grep -v -e '^WARNING: Location' -e '^ *$' || true
  "$VENV/bin/python" -c 'import bcc, numpy, rocksdict, grpc, cryptography, typer, rich, pyroute2' 
  echo "$want" > "$stamp"
else
  # the editable install must point at this checkout (CI uses a fresh clone)
  "$VENV/bin/python" -c 'import stenoxdp, sys, os; sys.exit(0 if os.path.realpath(stenoxdp.__file__).startswith(os.path.realpath(sys.argv[1])) else 1)' "$REPO" \
    || PYTHONWARNINGS=ignore "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps -e . 2>&1 | grep -v '^WARNING: Location' || true
fi
"$VENV/bin/python" -m stenoxdp.native build >/dev/null
"$VENV/bin/python" -m stenoxdp.proto build >/dev/null 2>&1 || true
ln -sfn "$VENV/bin/stenoctl" /usr/local/bin/stenoctl
log "ready: $(stenoctl --version 2>/dev/null || echo stenoctl) ($VENV)"

#!/usr/bin/env bash
# Installs what kasou needs on a Debian 12 host: Debian packages, then kasou itself.
# Idempotent: installs only what is missing. Needs root for apt.
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(qemu-system-x86 qemu-utils ovmf cpio)
# the debian image: debootstrap, mkfs.ext4 -d; its test and benchmark log in over ssh
PKGS+=(debootstrap e2fsprogs openssh-client)
# host networks: nft for the rules, dnsmasq for DHCP/DNS, iproute2 for the tests' netns
PKGS+=(nftables dnsmasq-base iproute2)
# isolation/metrics: promtool checks /metrics in the tests; setfacl shares a kernel file
# others may not read with a sandboxed QEMU
PKGS+=(prometheus acl)
# desktop: the dashboard's end-to-end test drives Debian's headless Chromium (Playwright)
PKGS+=(chromium chromium-driver)
# bench: the desktop benchmark's plain-QEMU baseline proxies QEMU's VNC socket with websockify
PKGS+=(websockify)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# apt lists are needed both to install and for the image builder's `apt-get download`.
if [ ${#missing[@]} -gt 0 ] || [ -z "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v lock)" ]; then
  echo "==> apt-get update"
  apt-get update -qq
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if ! "$PY" -c "import kasou, qemu.qmp, fastapi, pytest, pytest_timeout, pycdlib, yaml, pyroute2, prometheus_client, websockets, playwright" 2>/dev/null \
   || [ "$("$PY" -c 'import kasou,os;print(os.path.dirname(kasou.__file__))')" != "$PWD/kasou" ]; then
  echo "==> pip install -e .[dev]"
  "$PY" -m pip install -q --disable-pip-version-check -e '.[dev]'
fi
command -v pyenv >/dev/null 2>&1 && pyenv rehash || true

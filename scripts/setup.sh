#!/usr/bin/env bash
# The README's first command: install what is missing, build the demo guests, start the
# daemon and boot two VMs running two different guest operating systems.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
PY=${PYTHON:-python3}
kasou() { "$PY" -m kasou "$@"; }

echo "==> building guest images (cached after the first time)"
kasou image build tiny
kasou image build memtest
kasou host info | sed -n '1,20p'

echo "==> starting the daemon"
kasou daemon start

start_vm() {  # name, create args...
  local name=$1; shift
  if ! kasou vm show "$name" >/dev/null 2>&1; then
    kasou vm create "$name" "$@" >/dev/null
  fi
  case "$(kasou vm show "$name" --json | "$PY" -c 'import json,sys;print(json.load(sys.stdin)["state"])')" in
    stopped|crashed) kasou vm start "$name" ;;
  esac
}
start_vm demo-linux --image tiny --memory 256M
start_vm demo-memtest --image memtest --memory 128M   # memtest benchmarks RAM first: more RAM, later banner

kasou vm list
cat <<TXT

Two VMs are running, each its own QEMU process with its own operating system:
  demo-linux    Debian kernel + busybox   kasou vm console demo-linux   (Ctrl-] detaches)
  demo-memtest  memtest86+ (not Linux)    kasou vm logs demo-memtest --follow
Stop one with 'kasou vm stop NAME'; see everything with 'kasou --help'.
TXT

#!/usr/bin/env bash
# Set up this machine for pycdi: Debian packages, the virtualenv in .venv, the project installed
# in it. Safe to run again (it skips what is already there). Needs root (apt-get, loop devices).
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  qemu-utils nbdkit            # qemu-img/qemu-nbd; nbdkit with the curl plugin (random-access HTTP)
  bubblewrap                   # bwrap: qemu-img and nbdkit run confined (cdi/datapath/sandbox.py)
  libnbd-bin                   # nbdcopy (a benchmark baseline)
  nginx apache2-utils openssl  # test and demo HTTP(S) server, htpasswd, certificates
  xz-utils zstd pigz gzip tar  # compressors (tests, benchmark baselines)
  xorriso                      # ISO images (tests, cloud-init seeds)
  util-linux e2fsprogs curl    # losetup, blkdiscard; curl for CDI-style clients
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The VM runtime's packages (libvirtd, qemu-system, guest kernel) and its Python bindings.
if [ -f scripts/setup_vm.sh ] && [ "${CDI_SKIP_VM:-0}" != "1" ]; then
  bash scripts/setup_vm.sh
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip >/dev/null
extras="test"
if [ "${CDI_SKIP_VM:-0}" != "1" ] && pkg-config --exists libvirt 2>/dev/null; then
  extras="test,vm"
fi
log=$(mktemp)
if ! .venv/bin/pip install -q -e ".[${extras}]" >"$log" 2>&1; then
  cat "$log"; rm -f "$log"; echo "setup: pip install failed" >&2; exit 1
fi
rm -f "$log"
echo "setup: ready (.venv/bin/cdi)"

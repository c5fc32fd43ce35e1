#!/usr/bin/env bash
# Set up what the VM runtime (vm_runtime/) needs on this machine: libvirtd + qemu (TCG or KVM),
# the headers libvirt-python builds against, and the host tools the test guest build uses.
# Safe to run again: installs only what is missing, configures libvirt once (a marked block),
# starts virtlogd/libvirtd only when they are not running. Called by scripts/setup.sh, which then
# pip installs the `vm` extra (libvirt-python, qemu.qmp) into .venv. Needs root.
#
# Environment:
#   CDI_VM_BUILD_GUEST=1   also build (or refresh the cache of) the test guest now
#   CDI_VM_NO_START=1      install and configure only; do not start the daemons
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  libvirt-daemon-system libvirt-clients   # libvirtd, virtlogd, virsh
  qemu-system-x86 qemu-utils seabios ovmf # the emulator, qemu-img, BIOS and UEFI firmware
  libvirt-dev pkg-config gcc python3-dev  # libvirt-python builds from source against these
  xorriso genisoimage                     # NoCloud cidata ISOs
  e2fsprogs util-linux                    # guest build (mke2fs -d), losetup for Block volumes
  ca-certificates                         # apt-get download of the guest packages
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup_vm: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# libvirt configuration. Volumes live under the CDI data dir (by default in root's home, mode
# 0700) and tests use temporary directories, so qemu runs as root without relabelling images.
# Dynamic ownership would chown users' images to libvirt-qemu; we do not want that either.
QEMU_CONF=/etc/libvirt/qemu.conf
MARK="# pycdi vm_runtime (scripts/setup_vm.sh)"
if [ -f "$QEMU_CONF" ] && ! grep -qF "$MARK" "$QEMU_CONF"; then
  cat >>"$QEMU_CONF" <<EOF

$MARK
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
EOF
  restart_libvirtd=1
fi

if [ "${CDI_VM_NO_START:-0}" != "1" ]; then
  # No systemd here (and policy-rc.d blocks service starts): run the daemons directly.
  if ! pgrep -x virtlogd >/dev/null; then
    virtlogd -d
  fi
  if [ "${restart_libvirtd:-0}" = "1" ] && pgrep -x libvirtd >/dev/null; then
    if command -v systemctl >/dev/null && systemctl is-active -q libvirtd 2>/dev/null; then
      systemctl restart libvirtd
    else
      kill "$(pgrep -x libvirtd)"
      for _ in $(seq 50); do pgrep -x libvirtd >/dev/null || break; sleep 0.1; done
    fi
  fi
  if ! pgrep -x libvirtd >/dev/null; then
    libvirtd -d
  fi
  for _ in $(seq 100); do
    virsh -c qemu:///system version >/dev/null 2>&1 && break
    sleep 0.1
  done
  virsh -c qemu:///system version >/dev/null || { echo "setup_vm: libvirtd does not answer" >&2; exit 1; }
fi

if [ "${CDI_VM_BUILD_GUEST:-0}" = "1" ]; then
  bash images/guest/build.sh >/dev/null
fi
echo "setup_vm: libvirtd ready ($(virsh -c qemu:///system version 2>/dev/null | grep -i 'running hypervisor' || echo 'not started'))"

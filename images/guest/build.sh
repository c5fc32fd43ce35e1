#!/usr/bin/env bash
# Build the pycdi test guest: a ~23 MiB raw MBR disk (syslinux + Debian cloud kernel + busybox
# initramfs + a 4 MiB ext4 root) that boots under BIOS (SeaBIOS) in a few seconds under TCG,
# prints PYCDI-* lines on ttyS0 (see images/guest/init) and powers off.
#
# Only Debian packages are used, fetched with `apt-get download` and unpacked with `dpkg -x`:
# nothing is installed on the host; no root, mount or loop device is needed. Host tools:
# apt-get, dpkg, mke2fs (e2fsprogs), qemu-img (qemu-utils), truncate/dd, python3 (module order).
#
# Output (cached: rebuilt only when this directory's files change or FORCE=1):
#   $PYCDI_GUEST_DIR/disk.raw     the boot disk          (default ~/.cache/pycdi/guest)
#   $PYCDI_GUEST_DIR/disk.qcow2   the same, as qcow2
#   $PYCDI_GUEST_DIR/token        the token baked into the root fs (PYCDI-ROOT ... token=)
# The last line on stdout is the output directory.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
OUT="${PYCDI_GUEST_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pycdi/guest}"
KPKG="${KPKG:-linux-image-cloud-amd64}"
mkdir -p "$OUT"

stamp="$(cat "$HERE/build.sh" "$HERE/init" | sha256sum | cut -d' ' -f1)-$KPKG"
up_to_date() {
  [ "${FORCE:-0}" != "1" ] && [ -f "$OUT/stamp" ] && [ "$(cat "$OUT/stamp")" = "$stamp" ] \
    && [ -f "$OUT/disk.raw" ] && [ -f "$OUT/disk.qcow2" ]
}
if up_to_date; then echo "$OUT"; exit 0; fi

exec 9>"$OUT/.lock"
flock 9   # concurrent builds (parallel test workers) wait for each other
if up_to_date; then echo "$OUT"; exit 0; fi

WORK="$OUT/work"
DEBS="$OUT/debs"
mkdir -p "$DEBS"
rm -rf "$WORK"
mkdir -p "$WORK/x"

# 1. Packages. The meta package names the versioned kernel package.
kpkg="$(apt-cache depends "$KPKG" 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[^ ]*\)$/\1/p' | head -n1)"
[ -n "$kpkg" ] || kpkg="$KPKG"
pkgs=("$kpkg" busybox-static syslinux syslinux-common mtools fdisk libfdisk1)
(
  cd "$DEBS"
  for p in "${pkgs[@]}"; do
    ls "${p}"_*.deb >/dev/null 2>&1 || apt-get download -q "$p" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2 || true
    ls "${p}"_*.deb >/dev/null 2>&1 || { echo "guest build: could not download $p (apt-get update?)" >&2; exit 1; }
  done
)
for p in "${pkgs[@]}"; do
  dpkg -x "$(ls "$DEBS/${p}"_*.deb | sort -V | tail -n1)" "$WORK/x"
done
X="$WORK/x"
BB="$X/bin/busybox"
kver="$(ls "$X/lib/modules" | head -n1)"
vmlinuz="$X/boot/vmlinuz-$kver"
export LD_LIBRARY_PATH="$X/usr/lib/x86_64-linux-gnu:$X/lib/x86_64-linux-gnu"
export PATH="$X/usr/bin:$PATH"   # syslinux runs mtools' mcopy/mattrib from PATH

# 2. Initramfs: busybox, /init, the modules the cloud kernel builds as =m, in dependency order.
IR="$WORK/initramfs"
mkdir -p "$IR/bin" "$IR/modules" "$IR/dev" "$IR/proc" "$IR/sys"
cp "$BB" "$IR/bin/busybox"
cp "$HERE/init" "$IR/init"
chmod 0755 "$IR/init" "$IR/bin/busybox"
WANT="virtio_blk virtio_pci virtio_scsi sd_mod sr_mod isofs ata_piix pvpanic-mmio pvpanic-pci button evdev"
python3 - "$X/lib/modules/$kver/kernel" "$IR/modules" $WANT <<'EOF'
import os, re, shutil, sys
root, dest, want = sys.argv[1], sys.argv[2], sys.argv[3:]
paths = {}
for d, _, files in os.walk(root):
    for f in files:
        if f.endswith(".ko"):
            paths[f[:-3].replace("-", "_")] = os.path.join(d, f)
order = []
def deps(name):
    data = open(paths[name], "rb").read()
    m = re.search(rb"depends=([^\x00]*)", data)
    return [x.decode().replace("-", "_") for x in (m.group(1).split(b",") if m and m.group(1) else [])]
def visit(name):
    name = name.replace("-", "_")
    if name in order or name not in paths:
        return
    for d in deps(name):
        visit(d)
    order.append(name)
for w in want:
    visit(w)
for n in order:
    shutil.copy(paths[n], os.path.join(dest, n + ".ko"))
open(os.path.join(dest, "..", "modules.order"), "w").write("\n".join(order) + "\n")
EOF
(cd "$IR" && find . | LC_ALL=C sort | "$BB" cpio -o -H newc 2>/dev/null | gzip -9 > "$WORK/initrd.img")

# 3. Root fs (4 MiB ext4, made without mounting): proves the guest reads its virtio root disk.
token="pycdi-$(date +%s)-$RANDOM"
mkdir -p "$WORK/rootfs/etc" "$WORK/rootfs/bin"
echo "$token" > "$WORK/rootfs/etc/guest-token"
cp "$BB" "$WORK/rootfs/bin/busybox"
mke2fs -q -F -t ext4 -L pycdi-root -d "$WORK/rootfs" "$WORK/root.img" 4M >/dev/null

# 4. Disk: MBR, p1 FAT16 (syslinux, kernel, initrd) from 1 MiB, p2 ext4 root.
disk="$WORK/disk.raw"
fat_mib=18
truncate -s 23M "$disk"
"$X/sbin/sfdisk" -q "$disk" <<EOF
label: dos
start=2048, size=$((fat_mib * 2048)), type=6, bootable
start=$(((fat_mib + 1) * 2048)), type=83
EOF
dd if="$X/usr/lib/syslinux/mbr/mbr.bin" of="$disk" bs=440 count=1 conv=notrunc status=none
export MTOOLS_SKIP_CHECK=1
heads=64; sectors=32; tracks=$((fat_mib * 2048 / (heads * sectors)))
"$X/usr/bin/mformat" -i "$disk@@1M" -t "$tracks" -h "$heads" -n "$sectors" -H 2048 -v PYCDIBOOT ::
cat > "$WORK/syslinux.cfg" <<EOF
DEFAULT guest
PROMPT 0
TIMEOUT 0
LABEL guest
  KERNEL /vmlinuz
  INITRD /initrd.img
  APPEND console=ttyS0,115200 root=/dev/vda2 panic=-1 quiet loglevel=3
EOF
"$X/usr/bin/mcopy" -i "$disk@@1M" "$vmlinuz" ::/vmlinuz
"$X/usr/bin/mcopy" -i "$disk@@1M" "$WORK/initrd.img" ::/initrd.img
"$X/usr/bin/mcopy" -i "$disk@@1M" "$WORK/syslinux.cfg" ::/syslinux.cfg
"$X/usr/bin/syslinux" --offset 1048576 --install "$disk"
dd if="$WORK/root.img" of="$disk" bs=1M seek=$((fat_mib + 1)) conv=notrunc status=none

qemu-img convert -q -f raw -O qcow2 "$disk" "$WORK/disk.qcow2"
mv -f "$disk" "$OUT/disk.raw"
mv -f "$WORK/disk.qcow2" "$OUT/disk.qcow2"
echo "$token" > "$OUT/token"
echo "$kver" > "$OUT/kernel"
echo "$stamp" > "$OUT/stamp"
rm -rf "$WORK"
echo "$OUT"

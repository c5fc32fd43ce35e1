"""Boot the demo DataVolume as a VirtualMachine (called by scripts/demo.py with the DV's name).

Declares a VirtualMachine whose root disk is the DataVolume, starts it with `cdi virt start`,
follows its serial console with `cdi virt console` until the guest prints its marker and powers
off, then shows `cdi get vm`.
"""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CDI = os.path.join(ROOT, ".venv", "bin", "cdi")
MARKER = "PYCDI-GUEST-OK"


def run(*args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    print("$ cdi " + " ".join(args), flush=True)
    p = subprocess.run([CDI, *args], input=stdin, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    print(p.stdout, end="", flush=True)
    if check and p.returncode != 0:
        sys.exit(f"demo: `cdi {' '.join(args)}` failed (exit {p.returncode})")
    return p


def main() -> int:
    dv = sys.argv[1] if len(sys.argv) > 1 else "demo"
    vm = f"{dv}-vm"
    try:
        import libvirt  # noqa: F401
    except ImportError:
        print("demo: the VM runtime is not installed here (libvirt-python); skipping the boot. "
              "Run scripts/setup.sh without CDI_SKIP_VM=1 to get it.")
        return 0
    manifest = f"""apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: {vm}
spec:
  runStrategy: Manual
  template:
    spec:
      domain:
        devices:
          disks:
          - name: rootdisk
            disk: {{bus: virtio}}
        resources:
          requests:
            memory: 256Mi
      volumes:
      - name: rootdisk
        dataVolume:
          name: {dv}
"""
    print(manifest)
    run("apply", "-f", "-", stdin=manifest)
    run("virt", "start", vm)
    p = run("virt", "console", vm, "--timeout", "180")
    run("wait", "vm", vm, "--for=jsonpath={.status.printableStatus}=Stopped", "--timeout=60s", check=False)
    run("get", "vm", vm)
    if MARKER not in p.stdout:
        sys.exit(f"demo: the guest did not print {MARKER} on its console; see `cdi describe vmi {vm}`")
    print(f"booted: the guest ran from the imported disk through virtio and printed {MARKER}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

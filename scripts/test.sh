#!/usr/bin/env bash
# Set up this machine (apt packages, .venv) and run the whole test suite: unit tests, then the
# functional tests against real peers (nginx, qemu-img, nbdkit, loop devices, libvirtd) that the
# tests start and stop themselves on 127.0.0.1. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PYTHONDONTWRITEBYTECODE=1
.venv/bin/ruff check cdi importers uploadproxy vm_runtime tests bench
set +e
.venv/bin/pytest -p no:cacheprovider --timeout=600 "$@" tests
rc=$?
set -e
# pytest exits 5 when it collected nothing: that is a failure here too.
exit $rc

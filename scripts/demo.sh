#!/usr/bin/env bash
# The main job on the embedded default, on a fresh machine: set up (apt packages, .venv), serve a
# disk image with nginx on 127.0.0.1, import it with a DataVolume, show it succeed, and boot it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"

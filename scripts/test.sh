#!/usr/bin/env bash
# Set up, then run the whole test suite. Extra arguments go to pytest (e.g. -k resume, -m "not integration").
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup-env.sh"
export HF_HUB_OFFLINE=1
cd "$root"
exec .venv/bin/python -m pytest "$@"

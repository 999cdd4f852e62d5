#!/usr/bin/env bash
# Create or update the project's virtual environment (.venv). Sourced by demo.sh and test.sh.
# Reinstalls only when requirements.txt or pyproject.toml changed since the last successful install.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  echo "headstart: creating virtual environment in $venv" >&2
  "$python" -m venv "$venv"
fi
stamp="$venv/.headstart-installed"
want="$(cat "$root/requirements.txt" "$root/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "headstart: installing dependencies (first time: a few minutes; torch comes from this machine's disk)" >&2
  "$venv/bin/python" -m pip install --quiet --upgrade pip >&2
  # requirements.txt pins torch==2.14.1 / torchvision==0.29.1 so no resolver ever fetches another torch.
  "$venv/bin/python" -m pip install --quiet -r "$root/requirements.txt" >&2
  "$venv/bin/python" -m pip install --quiet --no-deps -e "$root" >&2
  echo "$want" > "$stamp"
fi

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
# The browser test (tests/test_web_page.py) drives the service's web page in headless Chromium. Debian packages,
# installed only when missing (cheap otherwise); without root or passwordless sudo the test is skipped, never this script.
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  browser_packages=(chromium chromium-driver)
  if [ "$(id -u)" -eq 0 ]; then
    apt_get=(apt-get)
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    apt_get=(sudo -n apt-get)
  else
    apt_get=()
  fi
  if [ ${#apt_get[@]} -gt 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "headstart: installing ${browser_packages[*]} for the browser test" >&2
    if ! { DEBIAN_FRONTEND=noninteractive "${apt_get[@]}" install -y -q "${browser_packages[@]}" >&2 ||
           { "${apt_get[@]}" update -q >&2 &&
             DEBIAN_FRONTEND=noninteractive "${apt_get[@]}" install -y -q "${browser_packages[@]}" >&2; }; }; then
      echo "headstart: warning: could not install ${browser_packages[*]}; tests/test_web_page.py will be skipped." >&2
    fi
  else
    echo "headstart: warning: /usr/bin/chromium or /usr/bin/chromedriver is missing and cannot be installed here" \
         "(no apt-get, or not root and no passwordless sudo); tests/test_web_page.py will be skipped." \
         "Install them with: sudo apt-get install -y chromium chromium-driver" >&2
  fi
fi

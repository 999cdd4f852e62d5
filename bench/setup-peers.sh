#!/usr/bin/env bash
# Creates bench/.venv-peers: the environment for the benchmark's peer contestants (fastai).
#
# It is a plain venv whose site-packages holds a .pth file that runs site.addsitedir() on the main venv's
# site-packages, so it sees everything the main venv has (torch, torchvision, timm, headstart itself via its
# editable-install .pth) and then installs fastai on top WITHOUT touching those: pip reads the main venv's
# packages as already installed, and a constraints file pins every package of the main venv to the version it
# has there, so pip can neither fetch another torch/torchvision nor shadow numpy, pillow, timm... with other
# versions. (`--system-site-packages` does not help: the main venv is itself a venv, and that flag would expose
# the base interpreter's site-packages, not the main venv's.)
#
#     bash bench/setup-peers.sh            # idempotent: does nothing when already set up
#     bash bench/setup-peers.sh --force    # rebuild from scratch
#
# Then: bench/.venv-peers/bin/python bench/peers/fastai_recipe.py --help
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MAIN_VENV="${MAIN_VENV:-$ROOT/.venv}"
PEERS="$ROOT/bench/.venv-peers"
FASTAI_SPEC="${FASTAI_SPEC:-fastai}"
export HF_HUB_OFFLINE=1

if [[ ! -x "$MAIN_VENV/bin/python" ]]; then
    echo "setup-peers: the main venv $MAIN_VENV is missing; create it first (scripts/setup-env.sh)." >&2
    exit 1
fi
MAIN_SITE="$("$MAIN_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
TORCH_VERSION="$("$MAIN_VENV/bin/python" -c 'import torch; print(torch.__version__)')"
TV_VERSION="$("$MAIN_VENV/bin/python" -c 'import torchvision; print(torchvision.__version__)')"

check() {
    # fastai importable, and torch/torchvision are the main venv's own copies.
    "$PEERS/bin/python" - "$MAIN_SITE" "$TORCH_VERSION" "$TV_VERSION" <<'EOF'
import os, sys
main_site, torch_version, tv_version = sys.argv[1:]
import fastai, timm, torch, torchvision
import headstart
def inside(module):
    return os.path.realpath(module.__file__).startswith(os.path.realpath(main_site) + os.sep)
problems = []
if torch.__version__ != torch_version or not inside(torch):
    problems.append(f"torch {torch.__version__} from {torch.__file__}")
if torchvision.__version__ != tv_version or not inside(torchvision):
    problems.append(f"torchvision {torchvision.__version__} from {torchvision.__file__}")
if not inside(timm):
    problems.append(f"timm from {timm.__file__}")
if problems:
    sys.exit("setup-peers: wrong packages in bench/.venv-peers: " + "; ".join(problems))
print(f"setup-peers: OK  fastai {fastai.__version__} ({os.path.dirname(fastai.__file__)})")
print(f"setup-peers: OK  torch {torch.__version__}, torchvision {torchvision.__version__}, timm {timm.__version__}"
      f" from the main venv ({main_site})")
print(f"setup-peers: OK  headstart from {os.path.dirname(headstart.__file__)}")
EOF
}

if [[ "${1:-}" == "--force" ]]; then
    echo "setup-peers: --force: removing $PEERS"
    rm -rf "$PEERS"
fi

if [[ -f "$PEERS/.setup-complete" ]] && check >/dev/null 2>&1; then
    echo "setup-peers: $PEERS already set up; nothing to do (--force rebuilds)."
    check
    exit 0
fi

if [[ ! -x "$PEERS/bin/python" ]]; then
    echo "setup-peers: creating venv $PEERS (same base interpreter as $MAIN_VENV)"
    "$MAIN_VENV/bin/python" -m venv "$PEERS"
fi
PEERS_SITE="$("$PEERS/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "setup-peers: linking the main venv's site-packages into it ($PEERS_SITE/_main_venv.pth)"
# An `import` line in a .pth file is executed; addsitedir also processes the main venv's own .pth files
# (headstart's editable install). The peers venv's own site-packages stay first on sys.path.
"$PEERS/bin/python" - "$MAIN_SITE" "$PEERS_SITE/_main_venv.pth" <<'EOF'
import sys
main_site, pth = sys.argv[1:]
open(pth, "w").write(f"import site; site.addsitedir({main_site!r})\n")
EOF

CONSTRAINTS="$PEERS/constraints.txt"
echo "setup-peers: pinning every package of the main venv ($CONSTRAINTS), torch==$TORCH_VERSION torchvision==$TV_VERSION among them"
"$MAIN_VENV/bin/python" -m pip freeze --exclude-editable --disable-pip-version-check \
    | grep -E '^[A-Za-z0-9_.-]+==' > "$CONSTRAINTS"
grep -qE "^torch==" "$CONSTRAINTS" || echo "torch==$TORCH_VERSION" >> "$CONSTRAINTS"
grep -qE "^torchvision==" "$CONSTRAINTS" || echo "torchvision==$TV_VERSION" >> "$CONSTRAINTS"

echo "setup-peers: installing $FASTAI_SPEC into $PEERS"
"$PEERS/bin/python" -m pip install --disable-pip-version-check --quiet -c "$CONSTRAINTS" "$FASTAI_SPEC"

echo "setup-peers: installed into the peers venv itself (nothing of the main venv is replaced):"
"$PEERS/bin/python" -m pip list --path "$PEERS_SITE" --disable-pip-version-check --format=freeze | sed 's/^/    /'
if "$PEERS/bin/python" -m pip list --path "$PEERS_SITE" --format=freeze 2>/dev/null \
        | grep -iqE '^(torch|torchvision|timm|numpy|pillow)=='; then
    echo "setup-peers: a main-venv package was installed again into the peers venv" >&2
    exit 1
fi
check
touch "$PEERS/.setup-complete"
echo "setup-peers: done. Use $PEERS/bin/python"

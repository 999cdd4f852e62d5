#!/usr/bin/env bash
# The main job: set up, then train + evaluate on the bundled 56-image sample with the offline pretrained
# EfficientNet-Lite0, printing metrics and where the outputs went.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup-env.sh"
export HF_HUB_OFFLINE=1
cd "$root"
out="${1:-runs/demo}"
.venv/bin/headstart train examples/hymenoptera_sample --out "$out" --overwrite
.venv/bin/headstart evaluate "$out/model" examples/hymenoptera_sample/test --out "$out/test"
.venv/bin/headstart predict "$out/model" examples/hymenoptera_sample/test/bees --top-k 2
echo "Outputs: $out (model/, metrics.json, curves.png, confusion_matrix.png, summary.txt) and $out/test (test metrics)"

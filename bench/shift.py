"""Shift measurement (`headstart shift`) on Office-31: random halves of each domain, and each pair of domains.

    .venv/bin/python bench/shift.py [--permutations 500]

Expected (issue 7): no shift between two random halves of one domain; a clear shift between amazon and webcam.
Printed per comparison: MMD^2 with its permutation p-value, proxy A-distance, verdict and wall time (embeddings
come from the feature store after the first run). The source-only transfer accuracy of each domain pair is in
bench/results/domain_adaptation.json, for reading the verdicts against.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np
from common import SHARED, machine, write_results

DATA = SHARED / "domains" / "office31"


def halves(domain: str, root: Path, seed: int = 0) -> tuple[Path, Path]:
    """Two random halves of a domain's images, as folders of symlinks."""
    files = sorted((DATA / domain / "images").rglob("*.jpg"))
    order = np.random.default_rng(seed).permutation(len(files))
    folders = []
    for part, indices in (("a", order[: len(files) // 2]), ("b", order[len(files) // 2:])):
        folder = root / f"{domain}_{part}"
        folder.mkdir()
        for i in indices:
            (folder / f"{files[i].parent.name}_{files[i].name}").symlink_to(files[i])
        folders.append(folder)
    return folders[0], folders[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--permutations", type=int, default=500)
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "shift.json")
    args = parser.parse_args()
    from headstart.deploy.shift import shift_between

    results: dict = {"machine": machine(), "command": " ".join(sys.argv), "comparisons": {}}
    with tempfile.TemporaryDirectory() as tmp:
        pairs = {f"{d} halves": halves(d, Path(tmp)) for d in ("amazon", "dslr", "webcam")}
        pairs.update({f"{a} vs {b}": (DATA / a / "images", DATA / b / "images")
                      for a, b in (("dslr", "webcam"), ("amazon", "webcam"), ("amazon", "dslr"))})
        for name, (a, b) in pairs.items():
            started = time.perf_counter()
            report, described = shift_between(a, b, permutations=args.permutations)
            seconds = time.perf_counter() - started
            results["comparisons"][name] = {**report.to_dict(), "images_a": described["images_a"],
                                            "images_b": described["images_b"], "seconds": round(seconds, 1)}
            print(f"{name:<18} {described['images_a']:>5} vs {described['images_b']:<5} MMD^2 {report.mmd2:.4f}"
                  f"  p {report.p_value:.4f}  PAD {report.proxy_a_distance:.2f}  -> {report.verdict:<12}"
                  f" {seconds:.1f}s", flush=True)
    write_results(args.json, results)


if __name__ == "__main__":
    main()

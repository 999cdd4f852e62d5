"""Issue 19's fault-injection figures: kill -9 at every fault point of save, export, the feature store and train.

Runs tests/test_faults.py with HEADSTART_FAULT_EVERY_POINT=1 (the suite itself kills at a seeded sample of the
points) and prints, per operation, the fault points its write passes and the kills made. Each kill is followed by
the checks of the test: the earlier state intact or the new one complete, no user file lost or changed, and a
rerun that completes; one failed check fails the run, so "files lost" is 0 exactly when the run passes.

    .venv/bin/python bench/fault_injection.py [--json bench/results/issue19/fault_injection.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the figures here")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="headstart-faults-") as folder:
        report = Path(folder) / "report.json"
        env = {**os.environ, "HEADSTART_FAULT_EVERY_POINT": "1", "HEADSTART_FAULT_REPORT": str(report),
               "HF_HUB_OFFLINE": "1"}
        started = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                 str(ROOT / "tests" / "test_faults.py")], cwd=ROOT, env=env, text=True,
                                capture_output=True)
        seconds = time.perf_counter() - started
        figures = json.loads(report.read_text()) if report.is_file() else {}
    print(result.stdout[-3000:])
    passed = result.returncode == 0
    print(f"{'operation':<16}{'fault points':>14}{'kills':>8}")
    for operation, row in figures.items():
        print(f"{operation:<16}{row['points']:>14}{row['kills']:>8}")
    kills = sum(row["kills"] for row in figures.values())
    print(f"{kills} kills in {seconds:.0f} s; every check {'passed: 0 files lost' if passed else 'did NOT pass'}")
    if options.json:
        options.json.parent.mkdir(parents=True, exist_ok=True)
        options.json.write_text(json.dumps({"operations": figures, "kills": kills, "all_checks_passed": passed,
                                            "seconds": round(seconds, 1)}, indent=2) + "\n")
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()

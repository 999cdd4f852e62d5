"""The layout's promises, checked on the source: each folder is a pipeline stage and imports only point down;
deploying a model never loads training code; no file or function grows past what a reader can hold; the task
table names code that exists."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from headstart.tasks import TASK_TABLE, resolve

PACKAGE = ROOT / "src" / "headstart"
BASE = {"errors", "storage"}
# what each stage may import (besides itself and the standard library / third-party packages)
ALLOWED = {
    "errors": set(),
    "storage": {"errors"},  # OverwriteError: a write that would replace what headstart did not write
    "data": BASE,
    "models": BASE | {"data"},
    "evaluation": BASE,
    "features": BASE | {"data", "models"},
    "tasks": BASE | {"data"},  # the table names code by strings; detect_task reads data suffixes
    "bundle": BASE | {"data", "models", "tasks"},
    "training": BASE | {"data", "models", "features", "evaluation"},
    "estimators": BASE | {"data", "models", "features", "evaluation", "tasks", "bundle", "training"},
    "adapt": BASE | {"data", "models", "features", "evaluation", "tasks", "bundle", "training", "estimators"},
    "selection": BASE | {"data", "models", "features", "evaluation", "tasks", "bundle", "training", "estimators"},
    "deploy": BASE | {"data", "models", "features", "evaluation", "tasks", "bundle"},
}
TRAINING_ONLY = ("headstart.training", "headstart.estimators", "headstart.adapt", "headstart.selection",
                 "lightning_fabric", "peft")
MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 80  # code lines, docstring excluded
# Functions allowed to be longer, each with its reason.
LONG_FUNCTIONS: dict[str, str] = {}


def _modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found.append((".".join(parts[:-1] if parts[-1] == "__init__" else parts), path))
    return found


def _stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every headstart module imported anywhere in the file (module level or inside functions)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.startswith("headstart"):
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.startswith("headstart")]
    return found


def test_imports_point_down_the_pipeline() -> None:
    wrong = []
    for module, path in _modules():
        stage = _stage(module)
        if stage not in ALLOWED:
            continue  # the package root, __main__ and cli/ may import any stage
        for line, imported in _imports(path):
            target = _stage(imported)
            if target != stage and target not in ALLOWED[stage]:
                wrong.append(f"{path.relative_to(ROOT)}:{line} ({stage}) imports {imported} ({target})")
    assert not wrong, "imports that point up or sideways:\n" + "\n".join(wrong)


def test_every_stage_is_known() -> None:
    stages = {_stage(module) for module, _ in _modules()}
    assert stages - set(ALLOWED) == {"__init__", "__main__", "cli"}


def test_no_file_passes_600_lines_and_no_function_80() -> None:
    long_files = [f"{p.relative_to(ROOT)}: {n}" for p in PACKAGE.rglob("*.py")
                  if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES]
    long_functions = []
    for module, path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            body = node.body[1:] if ast.get_docstring(node) is not None else node.body
            if not body:
                continue
            lines = body[-1].end_lineno - body[0].lineno + 1
            name = f"{module}.{node.name}"
            if lines > MAX_FUNCTION_LINES and name not in LONG_FUNCTIONS:
                long_functions.append(f"{name}: {lines} lines")
    assert not long_files, f"files over {MAX_FILE_LINES} lines: {long_files}"
    assert not long_functions, f"functions over {MAX_FUNCTION_LINES} code lines: {long_functions}"


def _fresh(code: str) -> list[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


LOADED = "import json, sys; print(json.dumps(sorted(m for m in sys.modules if m.startswith({prefixes!r}))))"


def test_the_service_and_prediction_load_no_training_code(tiny_image_bundle: Path, sample_dir: Path) -> None:
    loaded = _fresh("import headstart.deploy.serve, headstart.deploy.export\n" + LOADED.format(prefixes=TRAINING_ONLY))
    assert loaded == [], f"importing the service loaded {loaded}"
    image = sorted((sample_dir / "test").rglob("*.jpg"))[0]
    code = (f"from headstart.deploy.predictor import load_predictor\n"
            f"p = load_predictor({str(tiny_image_bundle)!r})\n"
            f"assert p.predict([open({str(image)!r}, 'rb').read()]).shape == (1, 2)\n"
            + LOADED.format(prefixes=TRAINING_ONLY))
    loaded = _fresh(code)
    assert loaded == [], f"loading a bundle to predict loaded {loaded}"


def test_importing_headstart_loads_nothing_heavy() -> None:
    loaded = _fresh("import headstart\n" + LOADED.format(prefixes=("torch", "headstart.")))
    assert loaded == [], f"import headstart loaded {loaded}"


def test_the_task_table_names_code_that_exists() -> None:
    from headstart.estimators.base import EstimatorBase

    assert len({t.name for t in TASK_TABLE}) == len({t.bundle_tag for t in TASK_TABLE}) == len(TASK_TABLE)
    for task in TASK_TABLE:
        estimator = resolve(task.estimator)
        assert issubclass(estimator, EstimatorBase), task.name
        assert callable(resolve(task.net_builder)), task.name
        if task.sniffer is not None:
            assert callable(resolve(task.sniffer)), task.name
        assert getattr(estimator, "task", task.bundle_tag) in (task.bundle_tag, task.name), task.name


@pytest.mark.parametrize("task", [t.name for t in TASK_TABLE])
def test_every_task_trains_on_the_one_loop(task: str) -> None:
    """No estimator carries a loop of its own: each calls headstart.training.loop.train."""
    source = Path(sys.modules[resolve(next(t for t in TASK_TABLE if t.name == task).estimator).__module__]
                  .__file__).read_text()
    base = (PACKAGE / "estimators" / ("dense.py" if task in ("segmentation", "detection") else
                                      "image.py" if task == "image" else "encoder.py")).read_text()
    assert "optimizer.step()" not in source and "optimizer.step()" not in base
    assert "from headstart.training.loop import" in base and " train(" in base

"""The layers hold: the core, the jobs and the study graph are free of MLflow; stages share
nothing but the run contract; only the core loop prunes; options flow down, never back up."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "mlprunes"
STAGE_MODULES = {"train", "prune", "scratch", "finetune", "family", "evaluate", "compare",
                 "pipeline", "export"}


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports (absolute names, `from a import b` as a.b too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def test_core_jobs_and_study_do_not_import_mlflow():
    code = ("import sys\n"
            "import mlprunes.arch, mlprunes.counting, mlprunes.nets, mlprunes.pruning\n"
            "import mlprunes.pruning.loop, mlprunes.data, mlprunes.engine.trainer\n"
            "import mlprunes.engine.checkpoint, mlprunes.report.plots, mlprunes.report.html\n"
            "import mlprunes.errors, mlprunes.jobs, mlprunes.study.graph\n"
            "import mlprunes.study.executor, mlprunes.study.plans, mlprunes.stages.common\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'mlflow'))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


def test_no_stage_module_but_the_pipeline_imports_another_stage():
    for name in sorted(STAGE_MODULES - {"pipeline"}):
        imports = imported_modules(PACKAGE / "stages" / f"{name}.py")
        others = {f"mlprunes.stages.{m}" for m in STAGE_MODULES - {name}}
        assert not imports & others, f"stages/{name}.py imports {imports & others}"


def test_the_stage_modules_are_what_this_test_thinks():
    shared = {"contract", "tracking", "trained", "common", "kept", "liveness", "digests",
              "views"}
    assert {p.stem for p in (PACKAGE / "stages").glob("*.py")} == STAGE_MODULES | shared


def test_only_the_core_loop_prunes():
    callers = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "prune" and not node.args):
                callers.append(str(path.relative_to(PACKAGE)))
    assert callers == ["pruning/loop.py"]


def test_options_go_down_from_the_cli_never_back_up():
    for path in [*PACKAGE.rglob("*.py")]:
        if path.name == "cli.py":
            continue
        assert "mlprunes.cli" not in imported_modules(path), path
    cli_imports = imported_modules(PACKAGE / "cli.py")
    # The CLI builds jobs; it never reads runs (the stage resolves its inputs, once).
    assert not {m for m in cli_imports if m.startswith("mlprunes.stages.contract")
                or m.startswith("mlflow")}

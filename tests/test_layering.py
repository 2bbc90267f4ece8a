"""The core stays free of MLflow: it is testable without a tracking store."""

import subprocess
import sys


def test_core_modules_do_not_import_mlflow():
    code = ("import sys\n"
            "import mlprunes.arch, mlprunes.counting, mlprunes.nets, mlprunes.pruning\n"
            "import mlprunes.data, mlprunes.engine.trainer, mlprunes.engine.checkpoint\n"
            "import mlprunes.report.plots, mlprunes.report.html\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'mlflow'))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"

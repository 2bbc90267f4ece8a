"""Helpers for tests that run real stages against a real (temporary) tracking store."""

from __future__ import annotations

import csv
import io

from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from mlprunes.cli import main

# The smallest useful study: WRN-10-1 on 8x8 shapes, seconds per stage on a CPU.
TINY_DATA = ["--dataset", "shapes", "--image-size", "8", "--shapes-train", "192",
             "--shapes-test", "64"]
TINY_TRAIN = ["train", "--arch", "wrn", "--depth", "10", "--width", "1", "--epochs", "1",
              "--batch-size", "64", "--no-progress", "--no-log-model", *TINY_DATA]


class Result:
    def __init__(self, result):
        self.exit_code = result.exit_code
        self.stdout = result.stdout
        self.stderr = result.stderr
        self.exception = result.exception

    @property
    def run_id(self) -> str:
        assert self.exit_code == 0, (self.stdout, self.stderr, self.exception)
        return self.stdout.strip().splitlines()[-1]

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.strip().splitlines() if line.startswith("Error")]


def cli(*args: str) -> Result:
    return Result(CliRunner().invoke(main, list(args), catch_exceptions=True))


def all_runs() -> list:
    client = MlflowClient()
    exps = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(exps, max_results=1000) if exps else []


def read_artifact_text(run_id: str, path: str, tmp_path) -> str:
    import mlflow

    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path,
                                                dst_path=str(tmp_path))
    with open(local) as f:
        return f.read()


def read_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))

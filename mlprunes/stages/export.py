"""The `export` command: a run's network, compressed, in a deployable format, checked against
the masked network it came from, and logged back to the run when asked."""

from __future__ import annotations

from pathlib import Path

import torch
from mlflow.tracking import MlflowClient

from mlprunes.engine.export import ExportError, check_export, export_network
from mlprunes.errors import StageError
from mlprunes.pruning import compress
from mlprunes.stages import contract, tracking
from mlprunes.stages.common import say

EXPORTS = "exports"   # where a logged export goes among the run's artifacts
CHECK_BATCH = 8


def run(run_id: str, prunes: int | None, fmt: str, out: Path, log_artifact: bool) -> Path:
    source = contract.get_run(run_id, stage=contract.EVALUABLE)
    stage = source.data.tags[contract.TAG_STAGE]
    artifact = contract.source_checkpoint(run_id, stage, prunes)
    size = contract.data_of(source).image_size or 32
    with tracking.scratch_dir("export") as tmp:
        masked = contract.load_network(run_id, artifact, source, torch.device("cpu"), tmp)
    compact = compress(masked).eval()
    generator = torch.Generator().manual_seed(0)
    batch = torch.randn(CHECK_BATCH, 3, size, size, generator=generator)
    try:
        path = export_network(compact, fmt, out, batch[:2])
        worst = check_export(fmt, path, masked, batch)
    except ExportError as err:
        raise StageError(str(err)) from None
    say(f"[export] {compact.spec.name} from {artifact} of run {run_id}, widths "
        f"{list(compact.spec.mids)}: {fmt} at {path}; on {CHECK_BATCH} images it matches the "
        f"masked network to {worst:.1e}")
    if log_artifact:
        MlflowClient().log_artifact(run_id, str(path), EXPORTS)
        say(f"[export] logged as {EXPORTS}/{path.name} on run {run_id}")
    return path

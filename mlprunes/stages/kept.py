"""Checkpoints kept on this machine while their run is open.

A stage writes each resumable checkpoint here first and then uploads it. Should the tracking
store stay gone longer than MLflow's retries, the stage exits naming this copy, and a resume on
this machine continues from it even if its upload never arrived. The folder of a run that ends
with the store reachable is removed: the store holds everything then.

The folder is `$MLPRUNES_CHECKPOINT_DIR/<run ID>` (default `~/.cache/mlprunes/checkpoints`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

ROOT_VARIABLE = "MLPRUNES_CHECKPOINT_DIR"


def root() -> Path:
    if os.environ.get(ROOT_VARIABLE):
        return Path(os.environ[ROOT_VARIABLE]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "mlprunes" / "checkpoints"


def folder(run_id: str) -> Path:
    """Where this run's checkpoints are kept (made on first use)."""
    path = root() / run_id
    path.mkdir(parents=True, exist_ok=True)
    return path


def path(run_id: str, name: str) -> Path:
    return folder(run_id) / name


def find(run_id: str, name: str) -> Path | None:
    """The kept checkpoint `name` of a run, if this machine has it."""
    candidate = root() / run_id / name
    return candidate if candidate.is_file() else None


def newest(run_id: str) -> Path | None:
    """The run's most recently written kept checkpoint, if any."""
    found = [p for p in (root() / run_id).glob("*.pt")] if (root() / run_id).is_dir() else []
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def discard(run_id: str) -> None:
    shutil.rmtree(root() / run_id, ignore_errors=True)

"""Checkpoints kept on this machine while their run is open.

A stage writes each resumable checkpoint here first, uploads it, and then marks it uploaded.
Should the tracking store stay gone longer than MLflow's retries, the stage exits naming this
copy, and a resume on this machine continues from it even if its upload never arrived. A run's
folder is removed when the run ends and the store holds its newest checkpoint; a folder whose
newest checkpoint never reached the store stays until a resume uploads it.

The folder is `$MLPRUNES_CHECKPOINT_DIR/<run ID>` (default `~/.cache/mlprunes/checkpoints`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from mlprunes.errors import StageError

ROOT_VARIABLE = "MLPRUNES_CHECKPOINT_DIR"
_UPLOADED = ".uploaded"


def root() -> Path:
    if os.environ.get(ROOT_VARIABLE):
        return Path(os.environ[ROOT_VARIABLE]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "mlprunes" / "checkpoints"


def check() -> None:
    """One clear line before a run starts if checkpoints cannot be kept where they would be."""
    try:
        root().mkdir(parents=True, exist_ok=True)
        if not os.access(root(), os.W_OK):
            raise PermissionError("not writable")
    except OSError as err:
        raise StageError(f"cannot keep checkpoints in {root()} ({err.strerror or err}); set "
                         f"{ROOT_VARIABLE} to a writable folder") from None


def path(run_id: str, name: str) -> Path:
    """Where to write the run's checkpoint `name`; a previous file of that name is about to be
    replaced, so it no longer counts as uploaded."""
    folder = root() / run_id
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}{_UPLOADED}").unlink(missing_ok=True)
    return folder / name


def uploaded(checkpoint: Path) -> None:
    """The store has this kept checkpoint now."""
    Path(f"{checkpoint}{_UPLOADED}").touch()


def newest(run_id: str) -> Path | None:
    """The run's most recently written kept checkpoint, if any."""
    folder = root() / run_id
    found = list(folder.glob("*.pt")) if folder.is_dir() else []
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def pending(run_id: str) -> bool:
    """Whether the run's newest kept checkpoint has not reached the store."""
    latest = newest(run_id)
    return latest is not None and not Path(f"{latest}{_UPLOADED}").exists()


def discard(run_id: str) -> None:
    shutil.rmtree(root() / run_id, ignore_errors=True)


def discard_if_uploaded(run_id: str) -> None:
    if not pending(run_id):
        discard(run_id)


def keep_only(checkpoint: Path) -> None:
    """Remove the run's other kept checkpoints: the newest one is all a resume needs."""
    for other in checkpoint.parent.iterdir():
        if other.name not in (checkpoint.name, f"{checkpoint.name}{_UPLOADED}"):
            other.unlink(missing_ok=True)

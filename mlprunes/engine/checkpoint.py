"""Checkpoints: plain data and tensors only, so they load with `weights_only=True`.

A checkpoint holds the architecture description (as JSON), whether the model is masked, its
state dict (masks included), and, to resume, the optimizer state, the position in the data
stream, the recipe, the RNG states and the prune history. It is written to a temporary file and
renamed into place, so a crash never leaves half a checkpoint under the real name.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mlprunes.arch import ArchError, ArchSpec
from mlprunes.nets import build
from mlprunes.signals import deferred

FORMAT = "mlprunes-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A file that is not a readable mlprunes checkpoint, or one that cannot be written."""


# Room beyond the tensors' own bytes: pickled structure, the curve and history, the file system.
_DISK_MARGIN = 1.1
_DISK_SLACK_BYTES = 16 * 2 ** 20


def make_checkpoint(model: nn.Module, *, trainer_state: dict[str, Any] | None = None,
                    prune_history: list[int] | None = None,
                    meta: dict[str, Any] | None = None,
                    state_dict: dict[str, Any] | None = None,
                    spec: ArchSpec | None = None) -> dict[str, Any]:
    """Everything needed to rebuild `model` (and, with `trainer_state`, to resume training).
    `state_dict` and `spec` stand for the model's own where the network saved is not the one
    held (a pruning run's cut network saves the full-width masked one)."""
    masked = any(getattr(m, "masked", False) for m in model.modules())
    checkpoint: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "arch": (spec or model.spec).to_json(),
        "masked": masked,
        "model": model.state_dict() if state_dict is None else state_dict,
        "prune_history": list(prune_history or []),
        "meta": dict(meta or {}),
        "rng": {"torch": torch.get_rng_state()},
    }
    if torch.cuda.is_available():
        checkpoint["rng"]["cuda"] = torch.cuda.get_rng_state_all()
    if trainer_state is not None:
        checkpoint["trainer"] = {k: v for k, v in trainer_state.items() if k != "model"}
    return checkpoint


def save_checkpoint(checkpoint: dict[str, Any], path: str | Path) -> Path:
    """Write `checkpoint` to `path` whole or not at all; a disk without room for it is a
    CheckpointError before anything is written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    needed = _DISK_MARGIN * _tensor_bytes(checkpoint) + _DISK_SLACK_BYTES
    free = shutil.disk_usage(path.parent).free
    if free < needed:
        raise CheckpointError(_no_room(path.parent, needed, free))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with deferred(), os.fdopen(fd, "wb") as f:  # a stop signal waits for the whole file
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
            os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if _out_of_space(err):  # others filled the disk since the check
            raise CheckpointError(_no_room(path.parent, needed, 0)) from None
        raise
    return path


def _out_of_space(err: BaseException) -> bool:
    """A full disk or quota, however it arrives: torch.save reports a failed write as a
    RuntimeError whose context is the OSError."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _tensor_bytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


def _no_room(folder: Path, needed: float, free: int) -> str:
    return (f"not enough free disk in {folder} for a checkpoint: it needs about "
            f"{needed / 2 ** 20:,.0f} MB and {free / 2 ** 20:,.0f} MB are free")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu",
                    max_bytes: int | None = None) -> dict[str, Any]:
    """Read and check a checkpoint; anything else is one CheckpointError naming the file.
    `max_bytes` bounds what it may inflate to (what its architecture implies, where the caller
    knows it): the archive's own listing is checked against it before anything is read."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    _check_archive(path, max_bytes)
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or unsafe files
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "weights_only" in str(err):
            # torch suggests loading with weights_only=False: for a file that may be malicious
            # that is the wrong advice, so it is not passed on.
            first_line = ("it holds Python objects besides tensors and plain data, which are "
                          "never loaded: they could run code")
        raise CheckpointError(f"{path} is not a readable mlprunes checkpoint "
                              f"({type(err).__name__}: {first_line})") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an mlprunes checkpoint (no '{FORMAT}' marker)")
    if checkpoint.get("version") != VERSION:
        raise CheckpointError(f"{path} is checkpoint version {checkpoint.get('version')}; this "
                              f"mlprunes reads version {VERSION}")
    try:
        checkpoint["spec"] = ArchSpec.from_json(checkpoint["arch"])
    except (ArchError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path} has no valid architecture description ({err})") from None
    return checkpoint


def checkpoint_bound(params: int) -> int:
    """The most a checkpoint of a network with `params` parameters can honestly hold: weights,
    optimiser momentum and a per-weight saliency (Hessian) in fp32, twice over, plus 64 MiB
    for buffers, state and the archive itself."""
    return 2 * 3 * 4 * params + 64 * 2 ** 20


def _check_archive(path: Path, max_bytes: int | None) -> None:
    """A checkpoint is a zip archive whose members torch stores uncompressed: one that is not
    an archive is refused as such, and one whose members would inflate beyond the file (or
    `max_bytes`) is refused before a byte is inflated."""
    import zipfile

    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path} is not a readable mlprunes checkpoint (not a PyTorch "
                              f"archive: the file is corrupt or something else)")
    try:
        with zipfile.ZipFile(path) as archive:
            inflated = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError) as err:
        raise CheckpointError(f"{path} is not a readable mlprunes checkpoint ({err})") from None
    size = path.stat().st_size
    bound = size + 2 ** 20 if max_bytes is None else min(size + 2 ** 20, max_bytes)
    if inflated > bound:
        raise CheckpointError(f"{path} would inflate to {inflated:,} bytes from {size:,}"
                              + (f", more than its architecture implies ({max_bytes:,})"
                                 if max_bytes is not None and inflated > max_bytes else "")
                              + "; it is not read")


def model_from_checkpoint(checkpoint: dict[str, Any]) -> nn.Module:
    """The network a loaded checkpoint holds, with its weights (and masks, if masked)."""
    # Its weights are loaded next: cut to size rather than initialised anew at it.
    model = build(checkpoint["spec"], masked=checkpoint["masked"], init="sliced")
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint weights do not fit its architecture: "
                              f"{str(err).splitlines()[0]}") from None
    return model


def restore_rng(checkpoint: dict[str, Any]) -> None:
    rng = checkpoint.get("rng", {})
    if "torch" in rng:
        torch.set_rng_state(rng["torch"].cpu())
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])

"""Tamper-evident artifacts: each artifact a later stage reads is logged with its sha256 and
size in a run tag, and checked against it when read. An artifact changed after its run logged
it (replaced by another network, another checkpoint copied over it, edited JSON) is one error
naming the run, the artifact and the recorded digest.

The tag is `mlprunes.digest.<artifact path>` = "sha256:<hex> <bytes>". An artifact logged again
under the same path (a training run's `checkpoints/last.pt`) is replaced in two steps, the tag
listing both digests ("...|...") while the upload is under way, so that a process killed at any
moment leaves a tag that matches what the store holds. Runs made before digests were recorded
carry no `mlprunes.digests` tag: their artifacts are read as they are, with one warning.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from mlprunes.errors import StageError

TAG_DIGESTS = "mlprunes.digests"        # "sha256" on a run whose read artifacts carry digests
TAG_DIGEST = "mlprunes.digest."         # + artifact path
_CHUNK = 1 << 20
_warned: set[str] = set()


def digest(path: Path) -> str:
    sha, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            sha.update(chunk)
            size += len(chunk)
    return f"sha256:{sha.hexdigest()} {size}"


def log_file(local: Path, artifact_dir: str | None = None) -> None:
    """`mlflow.log_artifact`, with the file's digest recorded on the active run."""
    run_id = mlflow.active_run().info.run_id
    path = f"{artifact_dir}/{local.name}" if artifact_dir else local.name
    new = digest(local)
    client = MlflowClient()
    tags = client.get_run(run_id).data.tags
    old = tags.get(TAG_DIGEST + path)
    if old is None and not tags.get(TAG_DIGESTS):
        # A run made before digests (resumed now) may hold this path unrecorded: the tag
        # follows the upload, so that it never names what the store does not have.
        mlflow.log_artifact(str(local), artifact_dir)
        client.set_tag(run_id, TAG_DIGEST + path, new)
        return
    # Every digest the store may hold at this path, the new one first, while the upload is
    # under way (an earlier upload may have failed half-way too); then the new one alone.
    during = "|".join(dict.fromkeys([new, *(old.split("|") if old else [])]))
    if during != old:
        client.set_tag(run_id, TAG_DIGEST + path, during)
    mlflow.log_artifact(str(local), artifact_dir)
    if during != new:
        client.set_tag(run_id, TAG_DIGEST + path, new)


def log_text(text: str, artifact_file: str) -> None:
    """`mlflow.log_text`, with the text's digest recorded on the active run."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="mlprunes-text-") as tmp:
        local = Path(tmp) / Path(artifact_file).name
        local.write_text(text, encoding="utf-8")
        parent = str(Path(artifact_file).parent)
        log_file(local, None if parent == "." else parent)


def check(run_id: str, path: str, local: Path) -> None:
    """Refuse a downloaded artifact whose content is not what its run logged."""
    tags = MlflowClient().get_run(run_id).data.tags
    recorded = tags.get(TAG_DIGEST + path)
    if recorded is None:
        if tags.get(TAG_DIGESTS):
            raise StageError(f"run {run_id}'s artifact {path} has no recorded digest: the run "
                             f"did not log it (it was added to the run's artifacts later)")
        if run_id not in _warned:
            _warned.add(run_id)
            print(f"warning: run {run_id} was made before mlprunes recorded artifact digests; "
                  f"its artifacts are read unverified", file=sys.stderr, flush=True)
        return
    actual = digest(local)
    if actual not in recorded.split("|"):
        raise StageError(f"run {run_id}'s artifact {path} is not what the run logged: its "
                         f"digest is {actual}, the run recorded {recorded.split('|')[0]}; it "
                         f"was changed afterwards")

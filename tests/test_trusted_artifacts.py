"""Artifacts whose content is trusted: each artifact a later stage reads carries the digest its
run recorded, and one changed afterwards is refused in one line naming the run, the artifact and
the digest. Runs made before digests are read with one warning, and still checked strictly: a
history of integers only, agreeing with the run's final widths and checkpoint widths, a prune
checkpoint holding the prune count its name says. Checkpoints are bounded before they inflate."""

import hashlib
import json
import shutil
import zipfile
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch
from mlflow.tracking import MlflowClient

from mlprunes import arch
from mlprunes.engine.checkpoint import CheckpointError, load_checkpoint
from mlprunes.stages import digests
from tests.stage_helpers import TINY_TRAIN, cli
from tests.test_stages import prune_args


@pytest.fixture
def pruned(store):
    """A base run and a prune run from it (8 prunes, checkpoints at 4 and 8)."""
    base = cli(*TINY_TRAIN).run_id
    return base, cli(*prune_args(base)).run_id


def stored(run_id: str, path: str) -> Path:
    """Where a run's artifact lies in the local store."""
    return Path(urlparse(MlflowClient().get_run(run_id).info.artifact_uri).path) / path


def replace(run_id: str, path: str, content: bytes) -> None:
    stored(run_id, path).write_bytes(content)


def as_made_before_digests(run_id: str) -> None:
    client = MlflowClient()
    for key in client.get_run(run_id).data.tags:
        if key == digests.TAG_DIGESTS or key.startswith(digests.TAG_DIGEST):
            client.delete_tag(run_id, key)


def test_every_artifact_a_later_stage_reads_has_the_digest_of_what_is_stored(pruned):
    base, prune = pruned
    expected = {base: ["arch.json", "checkpoints/final.pt"],
                prune: ["arch.json", "prune_history.json", "checkpoint_widths.json",
                        "final_arch.json", "checkpoints/prunes_00004.pt",
                        "checkpoints/prunes_00008.pt", "checkpoints/final.pt"]}
    for run_id, paths in expected.items():
        tags = MlflowClient().get_run(run_id).data.tags
        assert tags[digests.TAG_DIGESTS] == "sha256"
        for path in paths:
            content = stored(run_id, path).read_bytes()
            assert tags[digests.TAG_DIGEST + path] == (
                f"sha256:{hashlib.sha256(content).hexdigest()} {len(content)}"), path


def test_an_arch_json_replaced_by_a_wider_network_is_refused(pruned):
    base, prune = pruned
    replace(prune, "arch.json", arch.wrn(10, 2).to_json().encode())
    result = cli("scratch", "--prune-run-id", prune, "--prunes", "4", "--no-progress")
    assert result.exit_code != 0
    recorded = MlflowClient().get_run(prune).data.tags[digests.TAG_DIGEST + "arch.json"]
    assert result.error_lines == [
        f"Error: run {prune}'s artifact arch.json is not what the run logged: its digest is "
        f"{digests.digest(stored(prune, 'arch.json'))}, the run recorded {recorded}; it was "
        f"changed afterwards"]
    as_made_before_digests(prune)     # without digests, the run's own params still tell
    result = cli("scratch", "--prune-run-id", prune, "--prunes", "4", "--no-progress")
    assert "holds wrn-10-2" in result.error_lines[0] and "the run made wrn-10-1" in \
        result.error_lines[0]


@pytest.mark.parametrize("history, problem", [
    ('[true, "83", 74.9, " 77 "]', "holds True, not a channel index of wrn-10-1"),
    ("[1, 2, 2, 3, 4, 5, 6, 7]", "names a channel more than once"),
    ("[1, 2, 3, 4, 5, 6, 7, 100000]", "holds 100000, not a channel index"),
])
def test_a_history_that_is_not_distinct_integer_channels_is_refused(pruned, history, problem):
    _, prune = pruned
    replace(prune, "prune_history.json", history.encode())
    result = cli("scratch", "--prune-run-id", prune, "--prunes", "4", "--no-progress")
    assert "prune_history.json is not what the run logged" in result.error_lines[0]
    as_made_before_digests(prune)
    result = cli("scratch", "--prune-run-id", prune, "--prunes", "4", "--no-progress")
    assert result.exit_code != 0 and "Traceback" not in result.stderr
    assert result.error_lines[0].startswith(f"Error: prune run {prune}'s prune_history.json: ")
    assert problem in result.error_lines[0]


def test_a_valid_history_that_contradicts_the_run_is_refused(pruned):
    from mlprunes.pruning import spec_after

    _, prune = pruned
    as_made_before_digests(prune)
    history = json.loads(stored(prune, "prune_history.json").read_text())
    spec = arch.wrn(10, 1)
    others = [c for c in range(spec.prunable_channels) if c not in history]
    # Other channels, all from the first block or all from the last: widths the run did not
    # reach.
    other = next(o for o in (sorted(others)[:len(history)],
                             sorted(others, reverse=True)[:len(history)])
                 if spec_after(spec, o).mids != spec_after(spec, history).mids)
    replace(prune, "prune_history.json", json.dumps(other).encode())
    result = cli("family", "--prune-run-id", prune, "--prunes", "8", "--budgets", "30000",
                 "--no-progress")
    assert result.exit_code != 0
    assert "but the run recorded final_mids" in result.error_lines[0]

    replace(prune, "prune_history.json", json.dumps(history).encode())   # back, and then
    widths = json.loads(stored(prune, "checkpoint_widths.json").read_text())
    widths["4"] = [w + 1 for w in widths["4"]]
    replace(prune, "checkpoint_widths.json", json.dumps(widths).encode())
    result = cli("scratch", "--prune-run-id", prune, "--prunes", "4", "--no-progress")
    assert "checkpoint_widths.json recorded" in result.error_lines[0]
    assert result.error_lines[0].startswith(f"Error: prune run {prune}'s prune_history.json: "
                                            f"after 4 prunes it gives middle widths")


def test_a_checkpoint_copied_over_another_is_refused(pruned):
    _, prune = pruned
    shutil.copy(stored(prune, "checkpoints/prunes_00004.pt"),
                stored(prune, "checkpoints/prunes_00008.pt"))
    result = cli("evaluate", "--run-id", prune, "--prunes", "8", "--repeats", "1")
    assert "checkpoints/prunes_00008.pt is not what the run logged" in result.error_lines[0]
    as_made_before_digests(prune)
    result = cli("evaluate", "--run-id", prune, "--prunes", "8", "--repeats", "1")
    assert result.error_lines == [
        f"Error: run {prune}'s checkpoints/prunes_00008.pt holds the network after 4 prunes, "
        f"not 8; the artifact was replaced"]


def test_an_artifact_the_run_did_not_log_is_refused(pruned, tmp_path):
    _, prune = pruned
    copy = tmp_path / "prunes_00006.pt"
    shutil.copy(stored(prune, "checkpoints/prunes_00004.pt"), copy)
    MlflowClient().log_artifact(prune, str(copy), "checkpoints")
    result = cli("evaluate", "--run-id", prune, "--prunes", "6", "--repeats", "1")
    assert result.error_lines == [
        f"Error: run {prune}'s artifact checkpoints/prunes_00006.pt has no recorded digest: "
        f"the run did not log it (it was added to the run's artifacts later)"]


def test_a_run_made_before_digests_is_read_with_one_warning(pruned):
    base, _ = pruned
    as_made_before_digests(base)
    result = cli(*prune_args(base))
    assert result.exit_code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: run {base} was made before mlprunes recorded artifact "
                        f"digests; its artifacts are read unverified"]


def test_a_checkpoint_replaced_while_it_uploads_matches_either_digest(store, tmp_path,
                                                                      monkeypatch):
    import mlflow

    client = MlflowClient()
    with mlflow.start_run(experiment_id=client.create_experiment("uploads")) as run:
        first = tmp_path / "a" / "last.pt"
        first.parent.mkdir()
        first.write_bytes(b"first")
        digests.log_file(first, "checkpoints")
        second = tmp_path / "b" / "last.pt"
        second.parent.mkdir()
        second.write_bytes(b"second")

        def killed(*args, **kwargs):   # the process dies during the upload
            raise KeyboardInterrupt
        monkeypatch.setattr(mlflow, "log_artifact", killed)
        with pytest.raises(KeyboardInterrupt):
            digests.log_file(second, "checkpoints")
    run_id = run.info.run_id
    recorded = client.get_run(run_id).data.tags[digests.TAG_DIGEST + "checkpoints/last.pt"]
    assert recorded == f"{digests.digest(second)}|{digests.digest(first)}"
    digests.check(run_id, "checkpoints/last.pt", first)     # what the store still holds
    digests.check(run_id, "checkpoints/last.pt", second)    # or what was under way


def test_a_zip_bomb_is_refused_before_it_inflates(tmp_path):
    bomb = tmp_path / "final.pt"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open("archive/data.pkl", "w", force_zip64=True) as member:
            chunk = bytes(2 ** 20)
            for _ in range(512):                               # 512 MiB of zeros
                member.write(chunk)
    assert bomb.stat().st_size < 2 ** 20 * 2
    with pytest.raises(CheckpointError, match=r"would inflate to 536,870,912 bytes from"):
        load_checkpoint(bomb)


def test_a_checkpoint_larger_than_its_architecture_allows_is_refused(tmp_path):
    from mlprunes.engine.checkpoint import checkpoint_bound, make_checkpoint, save_checkpoint
    from mlprunes.nets import build

    path = save_checkpoint(make_checkpoint(build(arch.wrn(16, 2))), tmp_path / "final.pt")
    assert load_checkpoint(path, max_bytes=checkpoint_bound(200_000))["spec"].name == "wrn-16-2"
    with pytest.raises(CheckpointError, match="more than its architecture implies"):
        load_checkpoint(path, max_bytes=100_000)


def test_random_bytes_are_refused_as_not_a_checkpoint(tmp_path):
    junk = tmp_path / "final.pt"
    junk.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(CheckpointError, match="not a PyTorch archive") as refused:
        load_checkpoint(junk)
    assert "Python objects" not in str(refused.value)

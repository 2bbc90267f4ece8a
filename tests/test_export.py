"""Exports of a compressed network compute what the masked network computes: ONNX (in ONNX
Runtime), pt2 and TorchScript, for a pruned WRN and a pruned DenseNet-BC, each with a vanished
block; a wrong export is refused and not kept."""

import pytest
import torch

from mlprunes import arch
from mlprunes.engine.export import FORMATS, ExportError, check_export, export_network
from mlprunes.nets import build, prunable_blocks
from mlprunes.pruning import compress
from tests.stage_helpers import TINY_TRAIN, cli

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def pruned(spec, vanish: int):
    """A masked network with random weights and BN statistics, block `vanish` emptied and
    every other block missing some channels."""
    torch.manual_seed(0)
    model = build(spec, masked=True)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.normal_(1, 0.1)
                m.bias.normal_(0, 0.1)
        for i, block in enumerate(prunable_blocks(model)):
            if i == vanish:
                block.mask.zero_()
            else:
                block.mask[torch.randperm(block.mid)[:block.mid // 3]] = 0
    return model.eval()


NETWORKS = {"wrn": (arch.wrn(10, 1, num_classes=5), 1),
            "densenet": (arch.densenet(16, 4, num_classes=5), 2)}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("family", sorted(NETWORKS))
def test_every_format_computes_what_the_masked_network_computes(family, fmt, tmp_path):
    spec, vanish = NETWORKS[family]
    masked = pruned(spec, vanish)
    compact = compress(masked).eval()
    assert compact.spec.mids[vanish] == 0
    path = export_network(compact, fmt, tmp_path / f"net.{fmt}", torch.randn(2, 3, 16, 16))
    assert path.stat().st_size > 1000
    # A batch size other than the example's: the export is not frozen to it.
    worst = check_export(fmt, path, masked, torch.randn(5, 3, 16, 16))
    assert worst < 1e-4


def test_an_export_that_differs_is_refused_and_deleted(tmp_path):
    spec, vanish = NETWORKS["wrn"]
    masked = pruned(spec, vanish)
    path = export_network(compress(masked), "pt2", tmp_path / "net.pt2", torch.randn(2, 3, 8, 8))
    other = pruned(spec, 0)                  # another network: what a wrong slice would be
    with pytest.raises(ExportError, match="differs from the masked network by up to"):
        check_export("pt2", path, other, torch.randn(3, 3, 8, 8))
    assert not path.exists()


def test_the_export_command_writes_checks_and_logs(store, tmp_path):
    from mlflow.tracking import MlflowClient

    base = cli(*TINY_TRAIN).run_id
    prune = cli("prune", "--base-run-id", base, "--prunes", "16", "--prune-every", "1",
                "--save-every", "8", "--no-progress", "--no-log-model").run_id
    out = tmp_path / "p8.onnx"
    result = cli("export", "--run-id", prune, "--prunes", "8", "--format", "onnx", "--out",
                 str(out), "--log-artifact")
    assert result.exit_code == 0, (result.stderr, result.exception)
    assert result.stdout.strip().splitlines()[-1] == str(out) and out.exists()
    assert "matches the masked network to" in result.stderr
    assert "exports/p8.onnx" in {f.path for f in MlflowClient().list_artifacts(prune, "exports")}
    missing = cli("export", "--run-id", prune, "--prunes", "5", "--format", "pt2", "--out",
                  str(tmp_path / "x.pt2"))
    assert missing.exit_code != 0
    assert "saved no checkpoint at 5 prunes; it has 8, 16" in missing.error_lines[0]

"""The `evaluate` stage: test error, size and measured latency of a run's network, masked and
compressed, as a run that points back at its source."""

from __future__ import annotations

import mlflow
import torch

from mlprunes.engine.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from mlprunes.engine.evaluate import evaluate
from mlprunes.engine.latency import measure_latency
from mlprunes.engine.trainer import autocast_dtype
from mlprunes.nets import build
from mlprunes.pruning import compress
from mlprunes.stages import tracking
from mlprunes.stages.common import (RunConfig, config_key, load_splits, make_loaders, say,
                                    size_metrics)
from mlprunes.stages.prune import base_data_config, checkpoint_name, saved_prune_counts
from mlprunes.stages.train import FINAL, arch_params

EVALUABLE = ("train", "scratch", "family-member", "prune")


def source_checkpoint(run_id: str, stage: str, prunes: int | None) -> str:
    if stage != "prune":
        if prunes is not None:
            raise tracking.StageError("--prunes applies to prune runs only")
        tracking.require_artifact(run_id, FINAL)
        return FINAL
    counts = saved_prune_counts(run_id)
    if not counts:
        raise tracking.StageError(f"prune run {run_id} saved no masked checkpoint")
    if prunes is None:
        prunes = counts[-1]
    if prunes not in counts:
        raise tracking.StageError(f"prune run {run_id} saved no checkpoint at {prunes} prunes; "
                                  f"it has {', '.join(map(str, counts))}")
    return f"checkpoints/{checkpoint_name(prunes)}"


def evaluate_key(run_id: str, prunes: int | None, batch_size: int, device) -> str:
    return config_key("evaluate", {"run_id": run_id, "prunes": prunes,
                                   "batch_size": batch_size, "device": str(device)})


def run_evaluate(run_id: str, *, prunes: int | None = None, batch_size: int = 64,
                 repeats: int = 20, run: RunConfig = RunConfig(),
                 experiment: str = tracking.DEFAULT_EXPERIMENT, run_name: str | None = None,
                 parent_run_id: str | None = None) -> str:
    if batch_size < 1 or repeats < 1:
        raise tracking.StageError(f"--batch-size and --repeats must be at least 1, got "
                                  f"{batch_size} and {repeats}")
    source = tracking.get_run(run_id, stage=EVALUABLE)
    stage = source.data.tags[tracking.TAG_STAGE]
    artifact = source_checkpoint(run_id, stage, prunes)
    data = base_data_config(source)
    splits = load_splits(data)
    loaders = make_loaders(splits, batch_size, run)
    device = loaders.test.device
    with tracking.scratch_dir("evaluate") as tmp:
        try:
            checkpoint = load_checkpoint(tracking.download_artifact(run_id, artifact, tmp))
        except CheckpointError as err:
            raise tracking.StageError(str(err)) from None
    model = model_from_checkpoint(checkpoint)
    if checkpoint["masked"]:
        masked = model
    else:  # the network with every mask on: what pruning would start from
        masked = build(model.spec, masked=True)
        masked.load_state_dict(model.state_dict(), strict=False)
    masked = masked.to(device).eval()
    compact = compress(masked).eval()
    result = evaluate(compact, loaders.test, autocast_dtype(run.precision, device))
    size = splits.image_size
    metrics = {"test_error": result["error"], "test_top5_error": result["top5_error"],
               "test_loss": result["loss"], **size_metrics(compact.spec, size)}
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    for label, net in (("masked", masked), ("compressed", compact)):
        for bs in sorted({1, batch_size}):
            seconds = measure_latency(net, bs, size[0], repeats=repeats, memory_format=fmt)
            metrics[f"latency_{label}_b{bs}_ms"] = seconds * 1e3
    for bs in sorted({1, batch_size}):
        metrics[f"speedup_b{bs}"] = (metrics[f"latency_masked_b{bs}_ms"]
                                     / metrics[f"latency_compressed_b{bs}_ms"])
    name = run_name or f"evaluate-{source.data.tags.get('mlflow.runName', run_id)}"
    tags = {tracking.TAG_SOURCE_RUN: run_id,
            tracking.TAG_CONFIG: evaluate_key(run_id, prunes, batch_size, device)}
    for tag in (tracking.TAG_BASE_RUN, tracking.TAG_PRUNE_RUN, "mlprunes.criterion"):
        if tag in source.data.tags:
            tags[tag] = source.data.tags[tag]
    tags["mlprunes.source_stage"] = stage
    with tracking.stage_run("evaluate", experiment=experiment, run_name=name, tags=tags,
                            parent_run_id=parent_run_id) as ev:
        tracking.log_params({"run_id": run_id, "checkpoint": artifact, "batch_size": batch_size,
                             "repeats": repeats, "device": str(device),
                             **arch_params(compact.spec)})
        mlflow.log_metrics(metrics)
        say(f"[evaluate] {name}: test error {result['error']:.2f}%, "
            f"{metrics['params']:,.0f} params; latency b1 masked "
            f"{metrics['latency_masked_b1_ms']:.2f} ms, compressed "
            f"{metrics['latency_compressed_b1_ms']:.2f} ms")
        return ev.info.run_id

"""The `evaluate` stage: test error, size and measured latency of a run's network, masked and
compressed, as a run that points back at its source."""

from __future__ import annotations

import mlflow
import torch

from mlprunes.counting import size_metrics
from mlprunes.engine.evaluate import evaluate
from mlprunes.engine.export import export_network, load_exported, onnx_available
from mlprunes.engine.latency import MAX_SPREAD, measure_latencies
from mlprunes.engine.trainer import autocast_dtype
from mlprunes.errors import StageError
from mlprunes.jobs import EvaluateJob
from mlprunes.pruning import compress
from mlprunes.stages import contract, tracking
from mlprunes.stages.common import load_splits, make_loaders, say


def onnx_runtime(compact, size) -> dict:
    """The compressed network in ONNX Runtime, to time beside eager PyTorch: {"onnx": fn}, or
    nothing (with a line saying why) without the onnx extra or if the export fails; a figure
    missing is not worth failing an evaluation for."""
    if not onnx_available():
        say("[evaluate] ONNX Runtime latency not measured: pip install 'mlprunes[onnx]'")
        return {}
    try:
        with tracking.scratch_dir("evaluate-onnx") as tmp:
            path = export_network(compact, "onnx", tmp / "compressed.onnx",
                                  torch.zeros(2, 3, *size))
            return {"onnx": load_exported("onnx", path)}
    except Exception as err:  # noqa: BLE001 (any exporter failure: report, carry on)
        say(f"[evaluate] ONNX Runtime latency not measured: the ONNX export failed "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})")
        return {}


def run(job: EvaluateJob, parent_run_id: str | None = None,
        resume_run_id: str | None = None) -> str:
    source = contract.get_run(job.run_id, stage=contract.EVALUABLE)
    stage = source.data.tags[contract.TAG_STAGE]
    matched_run = None
    if job.match_run_id is not None:
        matched_run = contract.get_run(job.match_run_id, stage=contract.TRAINED)
        if contract.data_of(matched_run).dataset != contract.data_of(source).dataset:
            raise StageError(f"run {job.match_run_id} was trained on other data than run "
                             f"{job.run_id}; match networks of one study")
    near = matched_run.data.metrics.get("params") if matched_run is not None else None
    artifact = contract.source_checkpoint(job.run_id, stage, job.prunes, near)
    splits = load_splits(contract.data_of(source))
    loaders = make_loaders(splits, job.batch_size, job.run)
    device = loaders.test.device
    with tracking.scratch_dir("evaluate") as tmp:
        masked = contract.load_network(job.run_id, artifact, source, device, tmp / "source")
        networks = {"masked": masked, "compressed": compress(masked).eval()}
        if matched_run is not None:
            matched = contract.load_network(job.match_run_id, contract.FINAL, matched_run,
                                            device, tmp / "matched")
            networks["matched"] = compress(matched).eval()
    compact = networks["compressed"]
    result = evaluate(compact, loaders.test, autocast_dtype(job.run.precision, device))
    size = splits.image_size
    metrics = {"test_error": result["error"], "test_top5_error": result["top5_error"],
               "test_loss": result["loss"], **size_metrics(compact.spec, size)}
    if matched_run is not None:
        metrics["matched_params"] = size_metrics(networks["matched"].spec, size)["params"]
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    others = onnx_runtime(compact, size) if device.type == "cpu" else {}
    unsteady = []
    for bs in sorted({1, job.batch_size}):
        # In turn, round after round: a busy moment slows every network alike.
        timed = measure_latencies(networks, bs, size[0], repeats=job.repeats,
                                  memory_format=fmt, others=others)
        # The eager networks decide (question 4 compares them); an unsteady ONNX Runtime
        # figure is left out on its own.
        worst = max((t for label, t in timed.items() if label in networks),
                    key=lambda t: t.spread)
        if not worst.steady:  # a busy machine: no figure rather than a wrong one
            unsteady.append(f"batch {bs} (spread {100 * worst.spread:.0f}%)")
            continue
        for label, latency in timed.items():
            if label not in networks and not latency.steady:
                say(f"[evaluate] ONNX Runtime at batch {bs} not logged: its repeats spread "
                    f"{100 * latency.spread:.0f}%")
                continue
            metrics[f"latency_{label}_b{bs}_ms"] = latency.median * 1e3
            metrics[f"latency_{label}_b{bs}_spread"] = 100 * latency.spread
        metrics[f"speedup_b{bs}"] = timed["masked"].median / timed["compressed"].median
        if f"latency_onnx_b{bs}_ms" in metrics:  # compressed, ONNX Runtime against eager
            metrics[f"onnx_speedup_b{bs}"] = timed["compressed"].median / timed["onnx"].median
    name = job.run_name or f"evaluate-{source.data.tags.get('mlflow.runName', job.run_id)}"
    tags = {contract.TAG_SOURCE_RUN: job.run_id, contract.TAG_SOURCE_STAGE: stage}
    if matched_run is not None:
        tags[contract.TAG_MATCHED_RUN] = job.match_run_id
    if unsteady:
        refused = (f"latency not logged at {', '.join(unsteady)}: the middle half of its "
                   f"repeats spread over more than {100 * MAX_SPREAD:.0f}% of their median, as "
                   f"on a busy machine; evaluate again when it is idle")
        tags[contract.TAG_LATENCY_REFUSED] = refused
        say(f"[evaluate] {refused}")
    for tag in (contract.TAG_BASE_RUN, contract.TAG_PRUNE_RUN, contract.TAG_CRITERION):
        if tag in source.data.tags:
            tags[tag] = source.data.tags[tag]
    with contract.stage_run(job, name, tags, parent_run_id=parent_run_id,
                            resume_run_id=resume_run_id) as ev:
        if unsteady:  # not a result to reuse: a pipeline run again measures anew
            tracking.delete_tag(ev.info.run_id, contract.TAG_CONFIG)
            tracking.delete_tag(ev.info.run_id, contract.TAG_REPLICATE)
        tracking.log_params({"run_id": job.run_id, "checkpoint": artifact,
                             "prunes": job.prunes if job.prunes is not None else "",
                             "match_run_id": job.match_run_id or "", "seed": job.run.seed,
                             "batch_size": job.batch_size, "repeats": job.repeats,
                             "device": str(device), **contract.arch_params(compact.spec)})
        mlflow.log_metrics(metrics)
        latency = (f"; latency b1 masked {metrics['latency_masked_b1_ms']:.2f} ms, compressed "
                   f"{metrics['latency_compressed_b1_ms']:.2f} ms"
                   if "latency_masked_b1_ms" in metrics else "")
        say(f"[evaluate] {name}: test error {result['error']:.2f}%, "
            f"{metrics['params']:,.0f} params{latency}")
        return ev.info.run_id

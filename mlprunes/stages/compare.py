"""The `compare` stage: gather a study's finished runs and log the plots, the table and an HTML
report that answer its questions."""

from __future__ import annotations

import hashlib
import json
from typing import Sequence

import mlflow
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mlprunes.arch import ArchError, ArchSpec
from mlprunes.report.answers import answer_all, answer_metrics, answers_markdown
from mlprunes.report.html import render
from mlprunes.report.pareto import NETWORK_STAGES, pareto_runs, size_alias
from mlprunes.report.plots import draw_all
from mlprunes.report.records import CurvePoint, RunRecord, assign_groups
from mlprunes.report.table import CONFIG_COLUMNS, configurations, rows, write_csv
from mlprunes.errors import StageError
from mlprunes.jobs import DEFAULT_EXPERIMENT, CompareJob
from mlprunes.stages import contract, tracking, views
from mlprunes.stages.common import say
from mlprunes.stages.contract import STUDY_STAGES, TAG_STAGE


def gather_runs(experiment: str | None = None, run_ids: Sequence[str] = (),
                parent_run_id: str | None = None) -> list[Run]:
    """Finished mlprunes runs: the given IDs, or those a pipeline run used, or all of an
    experiment's."""
    client = MlflowClient()
    if run_ids:
        runs = [contract.get_run(r, stage=(*STUDY_STAGES, contract.FAMILY)) for r in run_ids]
        return _study_runs(_with_family_members(runs))
    if parent_run_id is not None:
        parent = contract.get_run(parent_run_id, stage=contract.PIPELINE, finished=False)
        listed = [r for r in parent.data.tags.get(contract.TAG_STUDY_RUNS, "").split(",") if r]
        if not listed:
            raise StageError(f"pipeline run {parent_run_id} lists no study runs yet")
        return _study_runs(_with_family_members(_existing(listed)))
    exp = client.get_experiment_by_name(experiment or DEFAULT_EXPERIMENT)
    if exp is None:
        raise StageError(f"no experiment named {experiment!r} in the tracking store at "
                                  f"{mlflow.get_tracking_uri()}")
    runs = client.search_runs([exp.experiment_id], filter_string="attributes.status = 'FINISHED'",
                              max_results=5000)
    return [r for r in runs if r.data.tags.get(TAG_STAGE) in STUDY_STAGES]


def _existing(run_ids: Sequence[str]) -> list[Run]:
    """The runs that still exist and are not deleted (a study may outlive some of its runs)."""
    client = MlflowClient()
    runs = []
    for run_id in run_ids:
        try:
            run = client.get_run(run_id)
        except Exception:  # purged from the store
            continue
        if run.info.lifecycle_stage != "deleted":
            runs.append(run)
    return runs


def _with_family_members(runs: list[Run]) -> list[Run]:
    """A family run stands for its members, which are its own children."""
    members = []
    for family in runs:
        if family.data.tags.get(TAG_STAGE) == contract.FAMILY:
            ids = family.data.tags.get(contract.TAG_FAMILY_MEMBERS, "")
            members += _existing([m for m in ids.split(",") if m])
    return runs + members


def _study_runs(runs: list[Run]) -> list[Run]:
    return [r for r in runs if r.info.status == "FINISHED"
            and r.data.tags.get(TAG_STAGE) in STUDY_STAGES]


def _float(value) -> float | None:
    try:
        return None if value in (None, "") else float(value)
    except ValueError:
        return None


def _spec(params: dict[str, str]) -> ArchSpec | None:
    text = params.get("arch_spec", "")
    try:
        return ArchSpec.from_json(text) if text.startswith("{") else None
    except ArchError:
        return None


def _curves(client: MlflowClient, run: Run, base_epochs: float,
            base: Run | None) -> tuple[list[CurvePoint], list[CurvePoint]]:
    """A prune run's per-prune metrics as curve points (step = prunes done): its validation
    curve, and its test curve (the checkpoints' test error, starting at the base network's)."""
    history = {key: {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
               for key in ("val_error", "test_error", "params", "flops", "finetune_epochs",
                           "train_macs")}

    def points(error: str) -> list[CurvePoint]:
        return [CurvePoint(step, history["params"][step], history["flops"][step],
                           history[error][step],
                           base_epochs + history["finetune_epochs"].get(step, 0.0),
                           history["train_macs"].get(step))
                for step in sorted(history[error])
                if step in history["params"] and step in history["flops"]]

    test = points("test_error")
    final = max(history["val_error"], default=0)
    # A curve needs a checkpoint's test error before the end: a run with only its final one
    # (made before checkpoints were tested, or saving only at the end) has no test curve, not
    # a straight line from its base.
    if not any(p.prunes < final for p in test):
        return points("val_error"), []
    if base is not None and all(k in base.data.metrics for k in ("params", "flops", "test_error")):
        m = base.data.metrics
        test.insert(0, CurvePoint(0, m["params"], m["flops"], m["test_error"], base_epochs,
                                  m.get("train_macs")))
    return points("val_error"), test


def _int(value: str | None) -> int | None:
    number = _float(value)
    return int(number) if number is not None else None


def _seed(params: dict[str, str]) -> int | None:
    return _int(params.get("seed"))


def record_for(client: MlflowClient, run: Run, bases: dict[str, Run]) -> RunRecord:
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    stage = tags.get(TAG_STAGE, "")
    record = RunRecord(
        run_id=run.info.run_id, name=tags.get("mlflow.runName", run.info.run_id[:8]),
        stage=stage, criterion=tags.get(contract.TAG_CRITERION, params.get("criterion", "")),
        budget=params.get("budget", ""), spec=_spec(params), params=metrics.get("params"),
        flops=metrics.get("flops"), test_error=metrics.get("test_error"),
        train_macs=metrics.get("train_macs"),
        base_run_id=tags.get(contract.TAG_BASE_RUN, ""),
        prune_run_id=tags.get(contract.TAG_PRUNE_RUN, ""),
        source_run_id=tags.get(contract.TAG_SOURCE_RUN, ""),
        parent_run_id=tags.get("mlflow.parentRunId", ""), seed=_seed(params),
        replicate=tags.get(contract.TAG_REPLICATE, ""), start_time=run.info.start_time or 0,
        data=f"{params.get('dataset', '')}:{params.get('image_size', '')}",
        init=params.get("init") or "fresh", prunes=_int(params.get("prunes")),
        round_to=_int(params.get("round_to")) or 1,
        macs_reduction=_float(params.get("macs_reduction")))
    if stage in contract.TRAINED:
        record.epochs = _float(params.get("epochs"))
    elif stage == contract.FINETUNE:
        epochs, before = _float(params.get("epochs")), _float(params.get("prior_epochs"))
        record.epochs = epochs + (before or 0.0) if epochs is not None else None
        record.prior_epochs, record.own_epochs = before, epochs
    elif stage == contract.PRUNE:
        base = bases.get(record.base_run_id)
        if base is None and record.base_run_id:
            try:
                base = client.get_run(record.base_run_id)
            except Exception:  # a deleted base run leaves the curve without its offset
                base = None
        base_epochs = _float(base.data.params.get("epochs")) if base is not None else None
        record.curve, record.test_curve = _curves(client, run, base_epochs or 0.0, base)
        record.epochs = record.curve[-1].epochs if record.curve else None
    elif stage == contract.EVALUATE:
        record.latency_ms = metrics.get("latency_compressed_b1_ms")
        record.latency_masked_ms = metrics.get("latency_masked_b1_ms")
        record.latency = {k[len("latency_"):-len("_ms")]: v for k, v in metrics.items()
                          if k.startswith("latency_") and k.endswith("_ms")}
        record.matched_run_id = tags.get(contract.TAG_MATCHED_RUN, "")
        size = _float(params.get("batch_size"))
        record.batch_size = int(size) if size is not None else None
        record.matched_params = metrics.get("matched_params")
        record.device = params.get("device", "")
    return record


def build_records(runs: list[Run]) -> list:
    client = MlflowClient()
    bases = {r.info.run_id: r for r in runs if r.data.tags.get(TAG_STAGE) == contract.TRAIN}
    return assign_groups([record_for(client, r, bases) for r in runs])


def current_experiment() -> str:
    """Under `mlflow run`, the experiment it chose; else the default."""
    import os

    exp_id = os.environ.get("MLFLOW_EXPERIMENT_ID")
    if exp_id:
        exp = mlflow.get_experiment(exp_id)
        if exp is not None:
            return exp.name
    return DEFAULT_EXPERIMENT


def run(job: CompareJob, parent_run_id: str | None = None,
        resume_run_id: str | None = None) -> str:
    """One run holding the study's plots, table and report. `job.parent_run_id` selects a
    pipeline's study; `parent_run_id` makes the compare run a child (of that pipeline)."""
    experiment = job.experiment or current_experiment()
    runs = gather_runs(experiment, job.run_ids, job.parent_run_id)
    if not runs:
        raise StageError("no finished mlprunes runs to compare")
    records = build_records(runs)
    answers = answer_all(records)
    front = (front_models(job.register, records,
                          sorted({r.info.experiment_id for r in runs})) if job.register else [])
    tags = {contract.TAG_COMPARED_RUNS: str(len(records))}
    if job.parent_run_id:
        tags[contract.TAG_STUDY_PARENT] = job.parent_run_id
    title = "mlprunes study" + (f": {job.run_name}" if job.run_name else "")
    with contract.stage_run(job, job.run_name or "compare", tags, experiment=experiment,
                            parent_run_id=parent_run_id, resume_run_id=resume_run_id) as run:
        tracking.log_params({"experiment": experiment, "run_ids": list(job.run_ids),
                             "parent_run_id": job.parent_run_id or ""})
        with tracking.scratch_dir("compare") as tmp:
            plots = draw_all(records, tmp / "plots", answers)
            mlflow.log_artifacts(str(tmp / "plots"), "plots")
            mlflow.log_artifact(str(write_csv(rows(records), tmp / "runs.csv")))
            mlflow.log_artifact(str(write_csv(configurations(records),
                                              tmp / "configurations.csv", CONFIG_COLUMNS)))
            (tmp / "answers.json").write_text(json.dumps(
                [a.to_dict() for a in answers], indent=2, default=_plain))
            mlflow.log_artifact(str(tmp / "answers.json"))
            subtitle = (f"Pipeline run {job.parent_run_id}." if job.parent_run_id
                        else f"Experiment {experiment}.")
            (tmp / "report.html").write_text(render(records, plots, title, subtitle, answers))
            mlflow.log_artifact(str(tmp / "report.html"))
        mlflow.log_metrics({"runs": len(records), **answer_metrics(answers)})
        registered = register(job.register, front) if front else []
        published = views.publish(*views_of(job, run, experiment), records,
                                  {r.info.run_id: r for r in runs})
        if published is not None:
            mlflow.set_tag(tracking.TAG_PRUNING_CURVES, published.route)
        tracking.describe_run(description(run, len(records), job, answers, registered,
                                          published))
        for answer in answers:
            say(f"[compare] Q{answer.question}: {answer.summary}")
        return run.info.run_id


def views_of(job: CompareJob, run: Run, experiment: str) -> tuple[str, str]:
    """The experiment the compare run's views go to, and what they are named after and filtered
    to: a pipeline's study, in the pipeline's experiment, by the study's name (a study run
    again keeps its views); else, with the compare run, `compare` and the run's name, or what
    it compares (the experiment, or its runs), so that comparing the same again keeps them."""
    experiment_id = run.info.experiment_id
    if job.parent_run_id:
        pipeline = MlflowClient().get_run(job.parent_run_id)
        experiment_id = pipeline.info.experiment_id
        # The tag, not the param: under `mlflow run` the param `preset` is the entry point's.
        study = pipeline.data.tags.get(contract.TAG_PRESET)
        if study:
            return experiment_id, study
    if job.run_name:
        return experiment_id, f"compare {job.run_name}"
    if job.run_ids:
        listed = ",".join(sorted(str(r) for r in job.run_ids))
        return experiment_id, f"compare {hashlib.sha256(listed.encode()).hexdigest()[:8]}"
    return experiment_id, f"compare {experiment}"


def front_models(name: str, records, experiment_ids: list[str]) -> list[tuple[RunRecord, str]]:
    """The Pareto-front networks (smallest first) with the ID of each one's logged model;
    an error, before any run, if the runs hold more than one kind of data (their networks do
    not compete) or if none on the front has a model."""
    kinds = {(r.data, r.spec.num_classes if r.spec else None) for r in records
             if r.stage in NETWORK_STAGES}
    if len(kinds) > 1:
        data = ", ".join(sorted(str(k[0]) for k in kinds))
        raise StageError(f"--register {name}: the runs compared hold networks of {len(kinds)} "
                         f"kinds of data ({data}), which do not compete on one front; compare "
                         f"one study (--parent-run-id) or give --run-ids")
    found = []
    for record in pareto_runs(records):
        models = mlflow.search_logged_models(
            experiment_ids=experiment_ids, filter_string=f"source_run_id = '{record.run_id}'",
            output_format="list")
        if models:
            found.append((record, models[0].model_id))
        else:
            say(f"[compare] {record.name} is on the front but logged no model (--no-log-model);"
                f" it is not registered")
    if not found:
        raise StageError(f"--register {name}: no network on the Pareto front of parameters and "
                         f"test error has a logged model (its runs were made with "
                         f"--no-log-model)")
    return found


def register(name: str, front: list[tuple[RunRecord, str]]) -> list[str]:
    """Register the front's logged models as versions of `name` (a model registered before is
    not registered again), each with an alias by its size (`params-23_2k`), the smallest
    `smallest` and the most accurate `most-accurate`; size aliases of networks no longer on the
    front are removed. Return one line per version."""
    client = MlflowClient()
    try:
        earlier = {v.source: v.version
                   for v in client.search_model_versions(f"name = '{name}'")}
    except MlflowException:
        earlier = {}
    lines, sizes = [], set()
    for i, (record, model_id) in enumerate(front):
        source = f"models:/{model_id}"
        version = earlier.get(source) or mlflow.register_model(source, name).version
        alias = size_alias(record.params)
        while alias in sizes:          # two networks of one size: both keep an alias
            alias += "-b"
        sizes.add(alias)
        aliases = [alias] + (["smallest"] if i == 0 else [])
        aliases += ["most-accurate"] if i == len(front) - 1 else []
        for a in aliases:
            client.set_registered_model_alias(name, a, version)
        lines.append(f"version {version} ({', '.join(aliases)}): {record.name}, "
                     f"{record.params:,.0f} params, {record.test_error:.2f}% test error")
        say(f"[compare] registered {name} {lines[-1]}")
    for stale in set(client.get_registered_model(name).aliases) - sizes:
        if stale.startswith("params-"):
            client.delete_registered_model_alias(name, stale)
    return lines


ANSWERS_IN_DESCRIPTION = 5000


def description(run, compared: int, job: CompareJob, answers,
                registered: list[str] = (), published: views.Published | None = None) -> str:
    """The compare run's description: what it compared, where the report is, the answers."""
    source = (f"the study of pipeline run `{job.parent_run_id}`" if job.parent_run_id
              else f"{compared} finished runs")
    report = tracking.ui_link(run, "report.html", relative=True)
    listed = answers_markdown(answers)
    if len(listed) > ANSWERS_IN_DESCRIPTION:  # a tag holds 8,000 characters
        listed = (listed[:ANSWERS_IN_DESCRIPTION].rsplit("\n", 1)[0]
                  + "\n\n(more in `answers.json` and the report)")
    text = (f"**Report:** [report.html]({report}) (Artifacts tab), with plots, "
            f"`answers.json`, `runs.csv` and `configurations.csv` beside it.\n\n"
            f"{views.markdown(published)}"
            f"Compares {source} ({compared} runs).\n\n"
            f"**Answers** (difference first - second, 95% CI, n seeds):\n\n{listed}\n")
    if registered:
        text += (f"\n**Registered** as `{job.register}` (the Pareto front of parameters and "
                 f"test error):\n\n" + "\n".join(f"- {line}" for line in registered) + "\n")
    return text


def _plain(value):
    """JSON for what json does not know (a seed that is None is already null)."""
    return str(value)

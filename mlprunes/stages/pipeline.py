"""The `main` entry point: the whole study as child runs of one pipeline run.

The pipeline is the one module that composes stages. It builds the study's graph of jobs from a
plan (`mlprunes.study.plans`), hands it to an executor with the stages' `run` functions and a
view of the tracking store, and logs what became of each job: a finished run with the same key
is reused, an interrupted one resumed from its last checkpoint, the rest run anew. The runs used
are listed on the pipeline run (a tag and `pipeline_runs.csv`), since a reused run stays the
child of the pipeline that first made it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import mlflow
from mlflow.tracking import MlflowClient

from mlprunes.errors import StageError
from mlprunes.jobs import KEY_VERSION, Job, RunConfig
from mlprunes.stages import (compare, contract, digests, evaluate, family, finetune, liveness,
                             prune, scratch, tracking, train)
from mlprunes.stages.common import dataset_classes, load_splits, say
from mlprunes.study.executor import (NEW, REUSED, RESUMED, EmptyStore, Executor, Failure,
                                     PlannedStep, SequentialExecutor, Step, StudyFailed, plan)
from mlprunes.study.plans import StudyPlan, study_graph
from mlprunes.study.studyfile import study_params, study_toml

STAGES: dict[str, Callable[..., str]] = {
    contract.TRAIN: train.run, contract.PRUNE: prune.run, contract.SCRATCH: scratch.run,
    contract.FINETUNE: finetune.run, contract.FAMILY: family.run, contract.EVALUATE: evaluate.run,
    contract.COMPARE: compare.run,
}


def launch(job: Job, parent_run_id: str | None, resume_run_id: str | None) -> str:
    """Run a job with its stage."""
    return STAGES[job.stage](job, parent_run_id=parent_run_id, resume_run_id=resume_run_id)


class MlflowRunStore:
    """The runs of one experiment, looked up by job key."""

    def __init__(self, experiment_id: str) -> None:
        self.experiment_id = experiment_id

    def finished(self, job: Job) -> str | None:
        for run in contract.runs_with_key(self.experiment_id, job.key):
            if run.info.status == "FINISHED":
                return run.info.run_id
        return None

    def live(self, job: Job) -> tuple[str, str] | None:
        for run in contract.runs_with_key(self.experiment_id, job.key):
            where = contract.alive(run)
            if where is not None:
                return run.info.run_id, where
        return None

    def wait(self, run_id: str) -> None:
        client = MlflowClient()
        while contract.alive(client.get_run(run_id)) is not None:
            time.sleep(min(5.0, contract.heartbeat_seconds()))
        # Its process died meanwhile: a resume (if it saved a checkpoint) or a new run follows,
        # and the dead one is not left RUNNING (once its heartbeat is stale; else the next
        # pipeline marks it).
        if is_dead(client, run_id):
            client.set_tag(run_id, contract.TAG_HEARTBEAT, liveness.beat())
            client.set_terminated(run_id, "KILLED")
            say(f"[pipeline] run {run_id} was left RUNNING by a process that is gone; marked "
                f"KILLED")

    def resumable(self, job: Job) -> str | None:
        for run in contract.runs_with_key(self.experiment_id, job.key):
            if (run.info.status != "FINISHED" and contract.alive(run) is None
                    and contract.can_resume(run.info.run_id, job.stage)):
                return run.info.run_id
        return None


def _base_spec(plan_: StudyPlan):
    return plan_.base_spec(dataset_classes(plan_.data))


def dry_run(plan_: StudyPlan, run: RunConfig) -> list[PlannedStep]:
    """The study's graph and what running it now would do; nothing is run or logged."""
    graph = study_graph(plan_, plan_.name, run, _base_spec(plan_))
    # Under `mlflow run`, the study lives in the experiment MLflow chose.
    exp_id = os.environ.get("MLFLOW_EXPERIMENT_ID")
    if exp_id is None:
        exp = MlflowClient().get_experiment_by_name(run.experiment)
        exp_id = exp.experiment_id if exp is not None else None
    if exp_id is None:
        return plan(graph, EmptyStore())
    _warn_about_old_keys(exp_id)
    return plan(graph, MlflowRunStore(exp_id))


@dataclass(frozen=True)
class ExecutorChoice:
    """Which executor runs the study's jobs, and for Ray where and with what per job."""
    name: str = "sequential"            # sequential | ray
    ray_address: str | None = None      # None: a local Ray instance; "auto" or host:port
    cpus_per_job: float = 1.0
    gpus_per_job: float = 0.0

    def make(self) -> Executor:
        if self.name == "sequential":
            return SequentialExecutor(log=say)
        if self.name != "ray":
            raise StageError(f"--executor must be sequential or ray, got {self.name!r}")
        uri = mlflow.get_tracking_uri()
        if self.ray_address is not None and tracking.is_local_store(uri):
            raise StageError(
                f"a study on a Ray cluster needs a tracking store every node can reach, not "
                f"the local {uri}: start a tracking server (mlflow server --backend-store-uri "
                f"postgresql://...) and set MLFLOW_TRACKING_URI to it (for a local Ray "
                f"instance on this machine, leave out --ray-address)")
        from mlprunes.study.ray_executor import RayExecutor, import_ray

        import_ray()  # a missing extra is an error before the pipeline run starts
        return RayExecutor(self.ray_address, self.cpus_per_job, self.gpus_per_job,
                           env=tracking.worker_env(), log=say)


def run_pipeline(plan_: StudyPlan, run: RunConfig, run_name: str | None = None,
                 executor: ExecutorChoice = ExecutorChoice()) -> str:
    load_splits(plan_.data)  # missing data is one error before the pipeline run starts
    chosen = executor.make()  # a bad choice is an error before the pipeline run starts
    base_spec = _base_spec(plan_)
    name = plan_.name
    study_graph(plan_, name, run, base_spec)  # a study that makes no graph fails before its run
    tags = {contract.TAG_STAGE: contract.PIPELINE, contract.TAG_PRESET: name,
            contract.TAG_HEARTBEAT: liveness.beat(), digests.TAG_DIGESTS: "sha256"}
    # Up before the pipeline run: an executor that cannot run a job (a job larger than any Ray
    # node) is refused with no run made.
    with chosen.session(), tracking.open_run(
            experiment=run.experiment, run_name=run_name or f"pipeline-{name}",
            tags=tags) as parent:
        parent_id = parent.info.run_id
        with contract.heartbeat(parent_id):   # alive to other pipelines while it runs
            return _run_study(plan_, run, executor, chosen, parent, base_spec)


def _run_study(plan_: StudyPlan, run: RunConfig, executor: ExecutorChoice, chosen,
               parent, base_spec) -> str:
    name, parent_id = plan_.name, parent.info.run_id
    # The study travels with its runs: as a study file that runs it again, and as params.
    tracking.log_params({"preset": name, "base_arch": base_spec.to_json(),
                         "epochs": plan_.epochs, "prunes": plan_.prunes,
                         "dataset": plan_.data.dataset,
                         "seeds": list(plan_.seeds or (run.seed,)),
                         **study_params(plan_)})
    digests.log_text(study_toml(plan_), contract.STUDY_FILE)
    say(f"[pipeline] {name}: {plan_.description}; run {parent_id}")
    if MlflowClient().get_experiment(parent.info.experiment_id).name == "Default":
        say("[pipeline] this study is going into the experiment 'Default' (`mlflow run` "
            "without --experiment-name); `mlflow run . --experiment-name mlprunes ...` "
            "keeps it with the other mlprunes runs")
    _warn_about_old_keys(parent.info.experiment_id)
    mark_dead_runs(parent.info.experiment_id, own=parent_id)
    graph = study_graph(plan_, name, run, base_spec, pipeline_run_id=parent_id)
    used: list[Step] = []

    order = {name: i for i, name in enumerate(graph.names)}

    def record(step: Step) -> None:
        contract.fence(parent_id)   # a paused pipeline whose run was taken stops here
        used.append(step)
        used.sort(key=lambda s: order[s.node])  # graph order, however the jobs finished
        if step.how != REUSED and step.stage != contract.COMPARE:
            MlflowClient().set_tag(step.run_id, contract.TAG_PIPELINE_STEP, step.node)
        if step.stage != contract.COMPARE:  # compare reads this list
            mlflow.set_tag(contract.TAG_STUDY_RUNS,
                           ",".join(s.run_id for s in used if s.stage != contract.COMPARE))

    tracking.log_params({"executor": executor.name})
    try:
        chosen.run(graph, launch, MlflowRunStore(parent.info.experiment_id),
                   parent_run_id=parent_id, on_step=record)
    except StudyFailed as failed:
        _log_summary(used, failed.failures)
        raise
    _log_summary(used)
    return parent_id


def mark_dead_runs(experiment_id: str, own: str) -> list[str]:
    """Mark KILLED the experiment's mlprunes runs left RUNNING by a process that is gone (its
    pid is not running on this host, or its heartbeat went silent elsewhere): a killed pipeline's
    own run, and runs that died before their first checkpoint and were run anew. A run that
    has a checkpoint stays resumable as KILLED. The heartbeat is overwritten too, so that a
    process that was only paused, on another host, finds the run no longer its own."""
    client, marked = MlflowClient(), []
    for found in client.search_runs([experiment_id], "attributes.status = 'RUNNING'",
                                    max_results=5000):
        if found.info.run_id == own or contract.TAG_STAGE not in found.data.tags:
            continue
        if not is_dead(client, found.info.run_id):
            continue
        dead = client.get_run(found.info.run_id)
        client.set_tag(dead.info.run_id, contract.TAG_HEARTBEAT, liveness.beat())
        client.set_terminated(dead.info.run_id, "KILLED")
        marked.append(dead.info.run_id)
        say(f"[pipeline] run {dead.info.run_id} ({dead.info.run_name}) was left RUNNING by a "
            f"process that is gone; marked KILLED")
    return marked


def is_dead(client: MlflowClient, run_id: str) -> bool:
    """A RUNNING run whose process is gone, read afresh (another process may have resumed it
    since a search listed it): not alive, and either its process let its lock go here, or its
    heartbeat has been silent for three beats (so that a live run of a container that shares
    this host name but not its processes is never taken)."""
    run = client.get_run(run_id)
    return (run.info.status == "RUNNING" and contract.alive(run) is None
            and (liveness.released(run) or liveness.stale(run)))


def _log_summary(used: list[Step], failures: Sequence[Failure] = ()) -> None:
    contract.fence(mlflow.active_run().info.run_id)
    rows = [{"step": s.node, "run_id": s.run_id, "how": s.how, "reason": ""} for s in used]
    rows += [{"step": f.node, "run_id": "", "how": f.how, "reason": f.reason} for f in failures]
    tracking.log_csv(rows, contract.PIPELINE_TABLE, ["step", "run_id", "how", "reason"])
    reused = [s.run_id for s in used if s.how == REUSED]
    mlflow.set_tag(contract.TAG_REUSED_RUNS, ",".join(reused))
    mlflow.log_metrics({"runs_new": sum(s.how == NEW for s in used),
                        "runs_reused": len(reused),
                        "runs_resumed": sum(s.how == RESUMED for s in used),
                        "jobs_failed": sum(f.how == "failed" for f in failures),
                        "jobs_skipped": sum(f.how == "skipped" for f in failures)})
    compare_id = next((s.run_id for s in used if s.stage == contract.COMPARE), None)
    if compare_id is not None:
        mlflow.set_tag(contract.TAG_COMPARE_RUN, compare_id)
        curves = tracking.fetch_run(compare_id).data.tags.get(tracking.TAG_PRUNING_CURVES)
        if curves:  # printed beside the run's own link, and in its description
            mlflow.set_tag(tracking.TAG_PRUNING_CURVES, curves)
        say(f"[pipeline] done: {len(used)} steps, {len(reused)} reused; compare run "
            f"{compare_id}")
    tracking.describe_run(description(used, failures, compare_id))


def description(used: list[Step], failures: Sequence[Failure], compare_id: str | None) -> str:
    """The pipeline run's description: where the report is (first, where a truncated
    description still shows it), what ran, what it found."""
    # The tag, not the param: under `mlflow run` the param `preset` is the entry point's.
    study = tracking.fetch_run(mlflow.active_run().info.run_id).data.tags.get(
        contract.TAG_PRESET, "")
    lines = []
    compare = tracking.fetch_run(compare_id) if compare_id is not None else None
    if compare is not None:
        report = tracking.ui_link(compare, "report.html", relative=True)
        lines.append(f"**Report:** [report.html]({report}) on the compare run "
                     f"[{compare_id}]({tracking.ui_link(compare, relative=True)}).\n")
        # The compare run's own line for its views (or its plain link and the click to make).
        curves = next((line for line in compare.data.tags.get(tracking.NOTE, "").splitlines()
                       if line.startswith("**Pruning curves:**")), None)
        if curves:
            lines.append(curves + "\n")
    lines.append(f"Study **{study}**: {len(used)} steps ({sum(s.how == NEW for s in used)} new, "
                 f"{sum(s.how == REUSED for s in used)} reused, "
                 f"{sum(s.how == RESUMED for s in used)} resumed); the new ones are this run's "
                 f"children, `pipeline_runs.csv` lists every step's run and `study.toml` the "
                 f"plan.")
    if failures:
        lines.append(f"\n**{len(failures)} job(s) failed or were skipped**: "
                     + ", ".join(f"`{f.node}` ({f.how})" for f in failures))
    answers = compare.data.tags.get(tracking.NOTE, "").partition("**Answers**")[2] if compare \
        else ""
    if answers:
        lines.append(f"\n**Answers**{answers}")
    return "\n".join(lines)


def _warn_about_old_keys(experiment_id: str) -> None:
    """Runs keyed by an older mlprunes are never reused (their keys mean other things): say so,
    so that a study that re-runs everything is not a surprise."""
    runs = MlflowClient().search_runs(
        [experiment_id], filter_string=f"tags.`{contract.TAG_CONFIG}` LIKE '%'",
        max_results=1000)
    old = [r for r in runs if r.data.tags.get(contract.TAG_KEY_VERSION) != str(KEY_VERSION)]
    if old:
        say(f"[pipeline] {len(old)} run(s) in this experiment were keyed by an older mlprunes "
            f"(key version {KEY_VERSION} now); they are kept but not reused")


def throughput_of(run_id: str, spec_of_study, image_size: int) -> float:
    """Training images per second of the study's base network, from a finished train run's
    measured `images_per_second` (its median over epochs), scaled by MACs from its network to
    the study's base network."""
    from mlprunes.arch import ArchSpec
    from mlprunes.counting import count

    run = contract.get_run(run_id, stage=contract.TRAINED)
    history = [m.value for m in MlflowClient().get_metric_history(run_id, "images_per_second")]
    if not history:
        raise StageError(f"run {run_id} logged no images_per_second to take a throughput from")
    measured = sorted(history)[len(history) // 2]
    spec = ArchSpec.from_json(run.data.params["arch_spec"])
    size = int(run.data.params.get("image_size") or 32)
    return measured * count(spec, (size, size)).flops / count(spec_of_study,
                                                                (image_size, image_size)).flops

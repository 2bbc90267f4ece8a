"""Executors run a study graph: every job after the jobs it needs, each exactly once. They know
jobs, keys and run IDs, not training or MLflow: a `RunStore` says which runs already exist for a
key, and `launch` runs a job (as its stage's `run(job, parent_run_id, resume_run_id)` does).

One rule for every executor (`run_node`): a finished run with the job's key is reused; one that
is alive in another process (a second pipeline on the same store) is waited for; an interrupted
one that saved enough to continue is resumed; otherwise the job is launched anew. A launch that
finds another process claimed the key first (`Claimed`) waits for that run instead.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from contextlib import nullcontext
from typing import Callable, ContextManager, Protocol

from mlprunes.errors import Claimed, StageError
from mlprunes.jobs import Job
from mlprunes.study.graph import Graph

NEW, REUSED, RESUMED = "new", "reused", "resumed"


class RunStore(Protocol):
    def finished(self, job: Job) -> str | None:
        """A finished run with this job's key, if any."""

    def live(self, job: Job) -> tuple[str, str] | None:
        """A run with this job's key that another process is running: (run ID, where)."""

    def wait(self, run_id: str) -> None:
        """Return once that run is no longer alive (finished, failed, or silent)."""

    def resumable(self, job: Job) -> str | None:
        """An interrupted run with this job's key that can continue, if any."""


class EmptyStore:
    """A store with no runs (an experiment that does not exist yet): what a study makes before
    anything exists."""

    def finished(self, job: Job) -> None:
        return None

    def live(self, job: Job) -> None:
        return None

    def wait(self, run_id: str) -> None:
        return None

    def resumable(self, job: Job) -> None:
        return None


Launch = Callable[[Job, str | None, str | None], str]   # (job, parent, resume) -> run ID
Log = Callable[[str], None]


@dataclass(frozen=True)
class Step:
    """What became of one node: its run and how it was obtained."""
    node: str
    stage: str
    run_id: str
    how: str              # new | reused | resumed


@dataclass(frozen=True)
class Failure:
    """A job that did not finish: failed (with its error) or skipped (a job it needs failed)."""
    node: str
    how: str               # failed | skipped
    reason: str


class StudyFailed(StageError):
    """Some jobs failed; the others finished. Carries what became of each."""

    def __init__(self, steps: list[Step], failures: list[Failure]) -> None:
        failed = [f for f in failures if f.how == "failed"]
        skipped = [f for f in failures if f.how == "skipped"]
        lines = [f"{len(failed)} job(s) failed, {len(skipped)} skipped, {len(steps)} finished:"]
        lines += [f"  {f.node}: {f.how} ({f.reason})" for f in failures]
        super().__init__("\n".join(lines))
        self.steps, self.failures = steps, failures


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_node(name: str, job: Job, launch: Launch, store: RunStore,
             parent_run_id: str | None = None, log: Log = _stderr) -> Step:
    """Reuse, wait for, resume or launch one job whose inputs are all run IDs."""
    if not job.reusable:
        log(f"[pipeline] {name}: starting")
        return Step(name, job.stage, launch(job, parent_run_id, None), NEW)
    while True:
        done = store.finished(job)
        if done is not None:
            log(f"[pipeline] {name}: reusing finished run {done}")
            return Step(name, job.stage, done, REUSED)
        running = store.live(job)
        if running is not None:
            log(f"[pipeline] {name}: run {running[0]} is running on {running[1]}; waiting")
            store.wait(running[0])
            continue
        interrupted = store.resumable(job)
        if interrupted is not None:
            log(f"[pipeline] {name}: resuming interrupted run {interrupted}")
        else:
            log(f"[pipeline] {name}: starting")
        try:
            return Step(name, job.stage, launch(job, parent_run_id, interrupted),
                        NEW if interrupted is None else RESUMED)
        except Claimed as claim:  # another process started or took over the job first
            log(f"[pipeline] {name}: run {claim.run_id} claimed this job first; waiting")
            store.wait(claim.run_id)


class Executor(Protocol):
    def session(self) -> ContextManager[None]:
        """Whatever the executor needs up before any run is made (a Ray instance), so that
        one it cannot have is refused while nothing has been logged."""

    def run(self, graph: Graph, launch: Launch, store: RunStore,
            parent_run_id: str | None = None,
            on_step: Callable[[Step], None] | None = None) -> list[Step]:
        """Run every node of `graph`; report each as it ends; return the steps in graph
        order."""


class SequentialExecutor:
    """One job at a time, in this process, in the order the graph was built."""

    def __init__(self, log: Log = _stderr) -> None:
        self.log = log

    def session(self) -> ContextManager[None]:
        return nullcontext()

    def run(self, graph: Graph, launch: Launch, store: RunStore,
            parent_run_id: str | None = None,
            on_step: Callable[[Step], None] | None = None) -> list[Step]:
        run_ids: dict[str, str] = {}
        steps = []
        for node in graph:
            step = run_node(node.name, node.job.resolved(run_ids), launch, store,
                            parent_run_id, self.log)
            run_ids[node.name] = step.run_id
            steps.append(step)
            if on_step is not None:
                on_step(step)
        return steps


@dataclass(frozen=True)
class PlannedStep:
    """A node as a dry run sees it: its key where its inputs are known, and what would happen."""
    node: str
    stage: str
    needs: tuple[str, ...]
    key: str | None        # None until the runs it needs exist
    status: str            # finished | running | would resume | to run | to run (always)
    run_id: str | None
    job: Job


def plan(graph: Graph, store: RunStore) -> list[PlannedStep]:
    """What running `graph` against `store` would do now, without running anything."""
    run_ids: dict[str, str] = {}
    planned = []
    for node in graph:
        if not all(n in run_ids for n in node.needs):
            planned.append(PlannedStep(node.name, node.job.stage, node.needs, None, "to run",
                                       None, node.job))
            continue
        job = node.job.resolved(run_ids)
        key, status, run_id = job.key, "to run", None
        if not job.reusable:
            status = "to run (always)"
        elif (done := store.finished(job)) is not None:
            status, run_id = "finished", done
            run_ids[node.name] = done
        elif (running := store.live(job)) is not None:
            status, run_id = "running", running[0]
        elif (interrupted := store.resumable(job)) is not None:
            status, run_id = "would resume", interrupted
        planned.append(PlannedStep(node.name, job.stage, node.needs, key, status, run_id, job))
    return planned

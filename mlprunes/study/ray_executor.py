"""Run a study graph on Ray: each job a Ray task, started as soon as the jobs it needs have
finished, so that independent branches (baselines, each criterion, each prune's scratch runs,
each seed) run at once on whatever the cluster has.

The driver (this process) does the scheduling by the graph and Ray places the tasks; a task runs
the same `run_node` as the sequential executor (reuse, wait, resume or launch, with the same
keys and claims), in a worker process that logs to the same tracking store. A failed job's
dependants are skipped and everything else finishes; a stop (Ctrl-C, SIGTERM) cancels the
running tasks, whose runs end KILLED. Ray is an optional extra: `pip install 'mlprunes[ray]'`.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from mlprunes import signals
from mlprunes.errors import StageError
from mlprunes.study.executor import (Failure, Launch, Log, RunStore, Step, StudyFailed,
                                     run_node)
from mlprunes.study.graph import Graph

# How long cancelled tasks get to mark their runs KILLED before the driver gives up on them.
_CANCEL_GRACE_SECONDS = 60.0


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _task(name, job, launch, store, parent_run_id) -> Step:
    """A graph node in a Ray worker: the sequential executor's rule, in its own process. A
    cancelled task gets SIGINT, which stops the stage as a signal stops it anywhere: after any
    checkpoint being written, with its run marked KILLED."""
    _use_reserved_cpus()
    # A worker started with the driver's environment would see `mlflow run`'s MLFLOW_RUN_ID
    # (the pipeline's own run, which MLflow drops from the driver's environment only once it
    # opens it), and MLflow would log the job into that run.
    os.environ.pop("MLFLOW_RUN_ID", None)
    with signals.stop_on_signals():
        return run_node(name, job, launch, store, parent_run_id, log=_stderr)


def _use_reserved_cpus() -> None:
    """As many compute threads as CPUs the job reserved: Ray sets OMP_NUM_THREADS for each
    task, but a reused worker keeps the thread count torch read when it was first imported."""
    import ray
    import torch

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))


class RayExecutor:
    """Jobs as Ray tasks on a local instance (address None) or an existing cluster. `env` is
    what a worker needs of the driver's environment (where the tracking store is)."""

    def __init__(self, address: str | None = None, cpus_per_job: float = 1.0,
                 gpus_per_job: float = 0.0, env: dict[str, str] | None = None,
                 log: Log = _stderr) -> None:
        if not (cpus_per_job > 0 and gpus_per_job >= 0):
            raise StageError(f"--cpus-per-job must be > 0 and --gpus-per-job >= 0, got "
                             f"{cpus_per_job} and {gpus_per_job}")
        self.address, self.cpus, self.gpus, self.log = address, cpus_per_job, gpus_per_job, log
        self.env = dict(env or {})

    @contextmanager
    def session(self) -> Iterator[None]:
        """Ray up, and the job size checked against its nodes, for the body (and shut down
        after, if started here)."""
        ray = import_ray()
        started_here = not ray.is_initialized()
        try:
            if started_here:
                self._start(ray)
            yield
        finally:
            if started_here and ray.is_initialized():
                ray.shutdown()

    def run(self, graph: Graph, launch: Launch, store: RunStore,
            parent_run_id: str | None = None,
            on_step: Callable[[Step], None] | None = None) -> list[Step]:
        with self.session():   # already up, when the pipeline started it before its run
            return self._schedule(import_ray(), graph, launch, store, parent_run_id, on_step)

    def _start(self, ray: Any) -> None:
        options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                   "configure_logging": False}
        if self.address is None:  # "local", or Ray would follow RAY_ADDRESS if it is set
            options.update(address="local", num_cpus=len(os.sched_getaffinity(0)))
        else:
            options["address"] = self.address
        started = time.time()
        # Ray's core installs its own SIGTERM handler (it logs and aborts); a stop must reach
        # ours instead, so that the running jobs are cancelled and their runs end KILLED.
        handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            ray.init(**options)
        except (ConnectionError, RuntimeError, ValueError, OSError) as err:
            raise StageError(f"cannot start Ray ({self.address or 'local'}): "
                             f"{str(err).strip().splitlines()[0]}") from None
        for signum, handler in handlers.items():
            if handler is not None:
                signal.signal(signum, handler)
        where = "a local Ray instance" if self.address is None else f"Ray at {self.address}"
        total = ray.cluster_resources()
        self.log(f"[ray] {where}: {total.get('CPU', 0):.0f} CPUs, {total.get('GPU', 0):.0f} "
                 f"GPUs ({time.time() - started:.1f} s to start); {self.cpus:g} CPU and "
                 f"{self.gpus:g} GPU per job")
        # A job must fit on one node, not only in the cluster, or it waits forever.
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        if not any(self.cpus <= n.get("CPU", 0) and self.gpus <= n.get("GPU", 0)
                   for n in nodes):
            largest = max(nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)), default={})
            raise StageError(f"a job asks for {self.cpus:g} CPUs and {self.gpus:g} GPUs but no "
                             f"Ray node has that much (the largest: {largest.get('CPU', 0):g} "
                             f"CPUs, {largest.get('GPU', 0):g} GPUs): no job could ever start")
        if self.gpus == 0 and total.get("GPU", 0) > 0:
            # A task that reserves no GPU still sees every GPU, and would train on GPU 0 with
            # all the others: jobs without a GPU of their own run on CPUs.
            self.env["CUDA_VISIBLE_DEVICES"] = ""
            self.log("[ray] --gpus-per-job 0: jobs run on CPUs; give --gpus-per-job 1 to train "
                     "each on a GPU of its own")

    def _schedule(self, ray, graph, launch, store, parent_run_id, on_step) -> list[Step]:
        remote = ray.remote(_task).options(num_cpus=self.cpus, num_gpus=self.gpus,
                                           max_retries=0,
                                           runtime_env={"env_vars": self.env})
        run_ids: dict[str, str] = {}
        steps: dict[str, Step] = {}
        failures: dict[str, Failure] = {}
        running: dict[Any, tuple[str, float]] = {}    # future -> (node, start time)
        waiting = [node for node in graph]

        def submit_ready() -> None:
            for node in list(waiting):
                blocked = [n for n in node.needs if n in failures]
                if blocked:
                    waiting.remove(node)
                    failures[node.name] = Failure(node.name, "skipped",
                                                  f"needs {', '.join(blocked)}")
                    self.log(f"[ray] skipped {node.name}: it needs {', '.join(blocked)}")
                elif all(n in run_ids for n in node.needs):
                    waiting.remove(node)
                    job = node.job.resolved(run_ids)
                    with signals.deferred():  # a stop waits until the task is known to cancel
                        future = remote.remote(node.name, job, launch, store, parent_run_id)
                        running[future] = (node.name, time.time())
                    self.log(f"[ray] started {node.name}")

        def status() -> None:
            failed = sum(f.how == "failed" for f in failures.values())
            self.log(f"[ray] {len(steps)} done, {len(running)} running, {len(waiting)} "
                     f"waiting, {failed} failed, {len(failures) - failed} skipped")

        try:
            submit_ready()
            while running:
                # With a timeout: a signal's handler runs only between Python calls, and a
                # wait without one would hold a stop back until some job finished.
                ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
                for future in ready:
                    name, began = running.pop(future)
                    seconds = time.time() - began
                    try:
                        step = ray.get(future)
                    except Exception as err:  # the job's own error, carried by Ray
                        reason = _reason(err)
                        failures[name] = Failure(name, "failed", reason)
                        self.log(f"[ray] failed {name} after {seconds:.0f} s: {reason}")
                    else:
                        steps[name], run_ids[name] = step, step.run_id
                        self.log(f"[ray] finished {name}: run {step.run_id} ({step.how}, "
                                 f"{seconds:.0f} s)")
                        if on_step is not None:
                            on_step(step)
                if ready:
                    submit_ready()
                    status()
        except BaseException:
            self._cancel(ray, running, store, graph, run_ids)
            raise
        ordered = [steps[node.name] for node in graph if node.name in steps]
        if failures:
            raise StudyFailed(ordered, [failures[n.name] for n in graph if n.name in failures])
        return ordered

    def _cancel(self, ray, running: dict[Any, tuple[str, float]], store: RunStore,
                graph: Graph, run_ids: dict[str, str]) -> None:
        """Stop the running jobs as a signal stops a stage: each run ends KILLED."""
        if not running:
            return
        names = [name for name, _ in running.values()]
        self.log(f"[ray] stopping {len(running)} running job(s): {', '.join(names)}")
        for future in running:
            ray.cancel(future, force=False)  # SIGINT in the task's worker
        # Ray forgets a cancelled task at once; its run is marked KILLED a moment later, and
        # shutting Ray down before that would leave it RUNNING. Wait for the runs themselves.
        jobs = [graph[name].job.resolved(run_ids) for name in names]
        deadline = time.time() + _CANCEL_GRACE_SECONDS
        while time.time() < deadline and any(store.live(job) for job in jobs):
            time.sleep(0.5)


def _reason(err: BaseException) -> str:
    """The job's own error in one line, without Ray's wrapping."""
    cause = getattr(err, "cause", None) or err
    text = str(cause).strip().splitlines()
    return (text[-1] if text else type(cause).__name__)[:300]


def import_ray():
    try:
        import ray
    except ImportError:
        raise StageError("--executor ray needs Ray: pip install 'mlprunes[ray]'") from None
    return ray

"""A study as a graph of jobs and the sequential executor, with a store and stages faked in
memory: dependency order, reuse, resume, and the dry run's plan."""

import pytest

from mlprunes import arch
from mlprunes.jobs import CompareJob, EvaluateJob, PruneJob, RunConfig, ScratchJob, TrainJob
from mlprunes.engine.recipes import preset
from mlprunes.study.executor import NEW, RESUMED, REUSED, SequentialExecutor, plan
from mlprunes.study.graph import Graph
from mlprunes.study.plans import study_graph
from mlprunes.study.studyfile import PRESET_NAMES, load_preset


class FakeStore:
    def __init__(self):
        self.finished_runs = {}   # key -> run ID
        self.interrupted = {}

    def finished(self, job):
        return self.finished_runs.get(job.key)

    def live(self, job):
        return None

    def wait(self, run_id):
        pass

    def resumable(self, job):
        return self.interrupted.get(job.key)


class FakeStages:
    """Records launches; a launched job's run finishes and lands in the store."""

    def __init__(self, store):
        self.store = store
        self.launched = []

    def __call__(self, job, parent_run_id, resume_run_id):
        assert job.refs() == [], "a job is launched only once its inputs are run IDs"
        run_id = resume_run_id or f"run{len(self.launched)}"
        self.launched.append((job, parent_run_id, resume_run_id))
        if job.reusable:
            self.store.finished_runs[job.key] = run_id
        return run_id


def small_study():
    graph = Graph()
    base = graph.add("base", TrainJob(spec=arch.wrn(10, 1, num_classes=10),
                                      recipe=preset("wrn").override(epochs=1)))
    pruned = graph.add("prune", PruneJob(base_run_id=base, prunes=4, prune_every=2))
    graph.add("scratch", ScratchJob(prune_run_id=pruned, prunes=4))
    graph.add("evaluate", EvaluateJob(run_id=pruned))
    graph.add("compare", CompareJob(), after=tuple(graph.names))
    return graph


def test_jobs_run_after_what_they_need_with_their_inputs_resolved():
    store = FakeStore()
    stages = FakeStages(store)
    steps = SequentialExecutor(log=lambda m: None).run(small_study(), stages, store,
                                                       parent_run_id="parent")
    assert [s.node for s in steps] == ["base", "prune", "scratch", "evaluate", "compare"]
    assert all(s.how == NEW for s in steps)
    jobs = {s.node: job for s, (job, _, _) in zip(steps, stages.launched)}
    assert jobs["prune"].base_run_id == "run0"
    assert jobs["scratch"].prune_run_id == "run1" and jobs["evaluate"].run_id == "run1"
    assert {parent for _, parent, _ in stages.launched} == {"parent"}


def test_a_second_run_reuses_finished_jobs_and_resumes_interrupted_ones():
    store = FakeStore()
    SequentialExecutor(log=lambda m: None).run(small_study(), FakeStages(store), store)
    # The prune run is lost but its interrupted twin is there; the rest finished.
    graph = small_study()
    prune_job = graph["prune"].job.resolved({"base": "run0"})
    del store.finished_runs[prune_job.key]
    store.interrupted[prune_job.key] = "half-done"
    again = FakeStages(store)
    steps = SequentialExecutor(log=lambda m: None).run(graph, again, store)
    how = {s.node: s.how for s in steps}
    # Jobs downstream of the resumed run take it as input: other keys, so they run anew.
    assert how == {"base": REUSED, "prune": RESUMED, "scratch": NEW, "evaluate": NEW,
                   "compare": NEW}
    assert [(j.stage, resume) for j, _, resume in again.launched] == [
        ("prune", "half-done"), ("scratch", None), ("evaluate", None), ("compare", None)]
    assert again.launched[1][0].prune_run_id == "half-done"
    third = FakeStages(store)
    steps = SequentialExecutor(log=lambda m: None).run(small_study(), third, store)
    assert [s.how for s in steps] == [REUSED] * 4 + [NEW]
    assert [j.stage for j, _, _ in third.launched] == ["compare"]


def test_the_plan_shows_keys_once_inputs_exist_and_runs_nothing():
    store = FakeStore()
    first = plan(small_study(), store)
    assert [(p.node, p.status) for p in first] == [
        ("base", "to run"), ("prune", "to run"), ("scratch", "to run"), ("evaluate", "to run"),
        ("compare", "to run")]
    assert first[0].key is not None and all(p.key is None for p in first[1:])
    assert first[2].needs == ("prune",) and first[4].needs == ("base", "prune", "scratch",
                                                               "evaluate")
    SequentialExecutor(log=lambda m: None).run(small_study(), FakeStages(store), store)
    second = plan(small_study(), store)
    assert [p.status for p in second] == ["finished"] * 4 + ["to run (always)"]
    assert all(p.key for p in second)


def test_a_graph_refuses_duplicates_and_jobs_before_their_inputs():
    graph = Graph()
    graph.add("base", TrainJob(spec=arch.wrn(10, 1, num_classes=10), recipe=preset("wrn")))
    with pytest.raises(ValueError, match="already has a job named 'base'"):
        graph.add("base", TrainJob(spec=arch.wrn(10, 1, num_classes=10), recipe=preset("wrn")))
    with pytest.raises(ValueError, match="needs prune-l1"):
        from mlprunes.jobs import Ref
        graph.add("scratch", ScratchJob(prune_run_id=Ref("prune-l1"), prunes=3))


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_every_preset_makes_a_graph_whose_jobs_need_only_earlier_jobs(name):
    study = load_preset(name)
    spec = arch.make_spec(**study.arch, num_classes=10)
    graph = study_graph(study, name, RunConfig(), spec)
    names = graph.names
    seeds = study.seeds or (0,)
    s = f"-s{seeds[0]}" if len(seeds) > 1 else ""   # node names carry the seed when several
    assert names[0] == "base" + s and names[-1] == "compare"
    for node in graph:
        assert all(names.index(n) < names.index(node.name) for n in node.needs)
    stages = [node.job.stage for node in graph]
    assert stages.count("prune") == len(seeds) * len(study.criteria)
    assert stages.count("scratch") == (len(seeds) * len(study.criteria) * len(study.scratch_budgets)
                                       * (len(study.scratch_prunes)
                                          + len(study.scratch_macs_reductions)))
    slimming = 1 if study.slimming else 0       # a base of its own for bn-scale
    assert stages.count("train") == len(seeds) * (1 + slimming + len(study.baselines)
                                                  + len(study.uniform_macs_reductions))
    point = (f"p{study.scratch_prunes[0]}" if study.scratch_prunes
             else f"x{study.scratch_macs_reductions[0]:g}")
    assert graph["scratch-" + study.criteria[0] + f"-{point}{s}"].needs == (
        "prune-" + study.criteria[0] + s,)


def test_a_pipeline_job_has_the_key_of_the_same_command_typed_by_hand():
    """So that a pipeline reuses runs made by hand, and `--resume-run-id` resumes its runs."""
    from mlprunes.jobs import FamilyJob, RecipeChoice

    study = load_preset("tiny")
    spec = arch.make_spec(**study.arch, num_classes=10)
    graph = study_graph(study, "tiny", RunConfig(), spec)
    ran = {name: f"id-{name}" for name in graph.names}
    # mlprunes prune --base-run-id id-base --prunes 12 --prune-every 2 --save-every 6
    #     --val-every 4 --batch-size 64
    by_hand = PruneJob(base_run_id="id-base", criterion="fisher", prunes=12, prune_every=2,
                       save_every=6, val_every=4, recipe=RecipeChoice(batch_size=64))
    assert graph["prune-fisher"].job.resolved(ran).key == by_hand.key
    assert (graph["scratch-fisher-p12"].job.resolved(ran).key
            == ScratchJob(prune_run_id="id-prune-fisher", prunes=12).key)
    family = graph["family"].job.resolved(ran)
    assert family.key == FamilyJob(prune_run_id="id-prune-fisher", prunes=12,
                                   budgets=family.budgets).key


class BusyStore(FakeStore):
    """Another process is running the prune: it finishes while we wait."""

    def __init__(self, busy_key, other_run="elsewhere"):
        super().__init__()
        self.busy = {busy_key: other_run}
        self.waited = []

    def live(self, job):
        run_id = self.busy.get(job.key)
        return (run_id, "host h, pid 1") if run_id else None

    def wait(self, run_id):
        self.waited.append(run_id)
        key = next(k for k, r in self.busy.items() if r == run_id)
        del self.busy[key]
        self.finished_runs[key] = run_id


def test_a_job_another_process_is_running_is_waited_for_then_reused():
    graph = small_study()
    store = FakeStore()
    SequentialExecutor(log=lambda m: None).run(graph, FakeStages(store), store)
    prune_key = graph["prune"].job.resolved({"base": "run0"}).key
    busy = BusyStore(prune_key)
    busy.finished_runs = {graph["base"].job.key: "run0"}
    stages = FakeStages(busy)
    steps = SequentialExecutor(log=lambda m: None).run(graph, stages, busy)
    assert busy.waited == ["elsewhere"]
    assert [(s.node, s.how) for s in steps[:2]] == [("base", REUSED), ("prune", REUSED)]
    assert steps[1].run_id == "elsewhere"
    assert "prune" not in [j.stage for j, _, _ in stages.launched]


def test_a_launch_that_lost_the_claim_waits_for_the_winner():
    from mlprunes.errors import Claimed

    graph = Graph()
    graph.add("base", TrainJob(spec=arch.wrn(10, 1, num_classes=10), recipe=preset("wrn")))
    store = FakeStore()
    waited = []

    def launch(job, parent, resume):
        raise Claimed("winner")

    def wait(run_id):
        waited.append(run_id)
        store.finished_runs[graph["base"].job.key] = run_id

    store.wait = wait
    [step] = SequentialExecutor(log=lambda m: None).run(graph, launch, store)
    assert waited == ["winner"] and (step.run_id, step.how) == ("winner", REUSED)

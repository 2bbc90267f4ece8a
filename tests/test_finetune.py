"""The finetune stage on a real store: it continues from exactly a prune checkpoint's weights,
takes the epochs its budget says, resumes after SIGTERM, runs in a pipeline (and is reused
there), and question 2 compares it with the scratch run of the same architecture."""

import json

import pytest
import torch
from mlflow.tracking import MlflowClient

from mlprunes.arch import ArchSpec
from mlprunes.counting import count, training_macs
from mlprunes.engine.checkpoint import load_checkpoint
from mlprunes.jobs import FinetuneJob, RecipeChoice, RunConfig
from mlprunes.pruning import spec_after
from mlprunes.study.plans import study_graph
from mlprunes.study.studyfile import load_preset, parse_study, preset_text
from tests.stage_helpers import TINY_TRAIN, all_runs, cli, read_artifact_text, read_csv
from tests.test_signals import stopped_then_resumed
from tests.test_stages import prune_args


@pytest.fixture
def pruned(store):
    """A tiny base and its Fisher prune run (8 prunes, checkpoints at 4 and 8)."""
    base = cli(*TINY_TRAIN).run_id
    return base, cli(*prune_args(base)).run_id


def finetune(prune_id, *extra):
    return cli("finetune", "--prune-run-id", prune_id, "--no-progress", "--no-log-model",
               *extra)


def history(run_id, key):
    return {m.step: m.value for m in MlflowClient().get_metric_history(run_id, key)}


def test_a_finetune_run_starts_from_exactly_the_checkpoint_and_trains_on(pruned, tmp_path):
    client = MlflowClient()
    base_id, prune_id = pruned
    run_id = finetune(prune_id, "--prunes", "4", "--epochs", "3").run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlprunes.stage"] == "finetune"
    assert run.data.tags["mlflow.runName"] == "finetune-fisher-wrn-10-1-p4"
    assert run.data.tags["mlprunes.prune_run_id"] == prune_id
    assert run.data.tags["mlprunes.base_run_id"] == base_id
    # Step 0 is the checkpoint as the prune run measured it: the same test error.
    assert history(run_id, "test_error")[0] == history(prune_id, "test_error")[4]
    assert sorted(history(run_id, "val_error")) == [0, 1, 2, 3]
    params = run.data.params
    assert params["finetune_preset"] == "liu" and params["lr"] == "0.001"
    assert params["epochs"] == "3" and params["prunes"] == "4" and params["budget"] == "recipe"
    # The compressed network at 4 prunes, its size as the prune run logged it there.
    source = ArchSpec.from_json(read_artifact_text(prune_id, "arch.json", tmp_path / "a"))
    order = json.loads(read_artifact_text(prune_id, "prune_history.json", tmp_path / "h"))
    spec = spec_after(source, order[:4])
    assert ArchSpec.from_json(params["arch_spec"]) == spec
    assert run.data.metrics["params"] == history(prune_id, "params")[4]
    # Its training continues the prune run's accounts: before + its own 3 epochs of 192 images.
    before = history(prune_id, "train_macs")[4]
    assert float(params["prior_train_macs"]) == before
    assert run.data.metrics["train_macs"] == pytest.approx(
        before + training_macs(count(spec, (8, 8)).flops, 3 * 192))
    assert float(params["prior_epochs"]) == pytest.approx(
        1 + history(prune_id, "finetune_epochs")[4])
    final = load_checkpoint(client.download_artifacts(run_id, "checkpoints/final.pt",
                                                      str(tmp_path)))
    assert final["spec"] == spec and not final["masked"]
    # It trained: the weights moved from the checkpoint's.
    masked = load_checkpoint(client.download_artifacts(prune_id, "checkpoints/prunes_00004.pt",
                                                       str(tmp_path / "m")))
    assert not torch.equal(final["model"]["fc.weight"], masked["model"]["fc.weight"])


def test_the_budget_sets_the_epochs_and_a_budget_picks_a_saved_checkpoint(pruned):
    client = MlflowClient()
    _, prune_id = pruned
    equal = client.get_run(finetune(prune_id, "--prunes", "8", "--budget", "scratch-e").run_id)
    assert equal.data.params["epochs"] == "1"       # the base run's: Scratch-E's
    assert equal.data.tags["mlflow.runName"] == "finetune-e-fisher-wrn-10-1-p8"
    by_size = history(prune_id, "params")
    budget = int(by_size[4])                        # at most 4 prunes' size: the checkpoint at 4
    run = client.get_run(finetune(prune_id, "--params-budget", str(budget), "--epochs",
                                  "1").run_id)
    assert run.data.params["prunes"] == "4" and run.data.params["params_budget"] == str(budget)
    base = client.get_run(finetune(prune_id, "--prunes", "8", "--preset", "base",
                                   "--epochs", "1").run_id)
    assert base.data.params["finetune_preset"] == "base"
    assert float(base.data.params["lr"]) == pytest.approx(0.01)   # the base's 0.1, a tenth


@pytest.mark.parametrize("args, fragment", [
    (["--prunes", "3"], "saved no checkpoint at 3 prunes; it saved them at 4, 8"),
    (["--prunes", "8", "--budget", "scratch-e", "--epochs", "2"], "drop --epochs"),
    (["--params-budget", "10"], "below the smallest network the checkpoints saved"),
    (["--prunes", "4", "--epochs", "0"], "--epochs must be at least 1"),
    (["--prunes", "4", "--params-budget", "1000"], "exactly one of --prunes and"),
    (["--prunes", "4", "--max-epoch-factor", "2"], "applies to --budget scratch-b"),
    (["--prunes", "4", "--budget", "scratch-b", "--epochs", "2"], "the Scratch-B run"),
])
def test_bad_finetune_input_is_one_clear_error_and_no_run(pruned, args, fragment):
    before = len(all_runs())
    result = finetune(pruned[1], *args)
    assert result.exit_code != 0
    assert fragment in result.stderr + result.stdout
    assert len(all_runs()) == before


def test_a_finetune_run_is_evaluated_and_exported_as_trained_runs_are(pruned, tmp_path):
    run_id = finetune(pruned[1], "--prunes", "8", "--epochs", "1").run_id
    evaluated = MlflowClient().get_run(cli("evaluate", "--run-id", run_id, "--repeats",
                                           "3").run_id)
    assert evaluated.data.metrics["test_error"] == MlflowClient().get_run(
        run_id).data.metrics["test_error"]
    out = tmp_path / "net.pt2"
    assert cli("export", "--run-id", run_id, "--format", "pt2", "--out", str(out)).exit_code == 0
    assert out.stat().st_size > 0


def test_sigterm_mid_finetune_and_a_resume_ends_as_the_uninterrupted_run(store, tmp_path):
    client = MlflowClient()
    base = cli(*TINY_TRAIN, "--shapes-train", "512").run_id
    prune_id = cli(*prune_args(base)).run_id
    args = ["finetune", "--prune-run-id", prune_id, "--prunes", "8", "--epochs", "40",
            "--no-progress", "--no-log-model"]
    run_id = stopped_then_resumed(args, "finetune", tmp_path)
    # Each epoch once, and its start once, though two processes trained it.
    assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == list(
        range(1, 41))
    assert [m.step for m in client.get_metric_history(run_id, "test_error")] == [0, 40]


@pytest.mark.parametrize("preset, node", [("tiny", "finetune-e-fisher-p12"),
                                          ("wrn-40-2", "finetune-e-fisher-p300-s0")])
def test_a_pipeline_job_has_the_key_of_the_finetune_typed_by_hand(preset, node):
    study = load_preset(preset, ["finetune.prunes=[12]"] if preset == "tiny" else [])
    graph = study_graph(study, preset, RunConfig(), study.base_spec(10))
    ran = {name: f"id-{name}" for name in graph.names}
    base = "id-prune-fisher" + ("-s0" if preset == "wrn-40-2" else "")
    # mlprunes finetune --prune-run-id ID --prunes N --budget scratch-e (--preset liu or not)
    by_hand = FinetuneJob(prune_run_id=base, prunes=study.finetune_prunes[0],
                          budget="scratch-e")
    assert graph[node].job.resolved(ran).key == by_hand.key
    assert by_hand.key == FinetuneJob(prune_run_id=base, prunes=study.finetune_prunes[0],
                                      budget="scratch-e", recipe=RecipeChoice(preset="liu")).key


@pytest.mark.parametrize("sets, fragment", [
    ("finetune.prunes=[5]", "finetune.prunes item 5 is not a saved checkpoint"),
    ("finetune.params_budgets=[0]", "finetune.params_budgets item 0: must be at least 1"),
    ("finetune.prunes=[20]", "goes beyond prune.prunes"),
    ("finetune.criteria=[\"random\"]", "are not in prune.criteria"),
    ("finetune.epochs=3", "finetune.epochs applies to budgets"),
    ("finetune.preset=\"wrn\"", "must be one of liu, base"),
    ("finetune.lr=-1", "finetune.lr must be at least 0"),
])
def test_a_bad_finetune_section_is_one_error_naming_the_key(sets, fragment):
    from mlprunes.errors import StageError

    with pytest.raises(StageError) as err:
        parse_study(preset_text("tiny"), "tiny", [sets])
    assert fragment in str(err.value)


def test_two_seeds_with_finetune_points_answer_question_2_at_equal_epochs(store, tmp_path):
    """The tiny study on two seeds: its fine-tune runs are reused by a second pipeline, and
    question 2 has the scratch runs against them, paired by seed, at equal epochs."""
    client = MlflowClient()
    sets = ("finetune.prunes=[12];run.seeds=[0,1];evaluate.enabled=false;family.budgets=[];"
            "baselines.reduced=[]")
    first = cli("pipeline", "--preset", "tiny", "--no-progress", "--set", sets).run_id
    second = cli("pipeline", "--preset", "tiny", "--no-progress", "--set", sets).run_id
    steps = read_csv(read_artifact_text(second, "pipeline_runs.csv", tmp_path / "p"))
    tuned = [s for s in steps if s["step"].startswith("finetune-e-fisher-p12")]
    assert len(tuned) == 2 and {s["how"] for s in tuned} == {"reused"}
    compare_id = client.get_run(second).data.tags["mlprunes.compare_run_id"]
    answers = json.loads(read_artifact_text(compare_id, "answers.json", tmp_path / "a"))
    q2 = next(a for a in answers if a["question"] == 2)["comparisons"]
    as_pruned = next(c for c in q2 if "as pruned" in c["second"])
    equal = next(c for c in q2 if "fine-tuned" in c["second"])
    assert equal["first"].startswith("Fisher arch. from scratch")
    assert equal["second"].startswith("Fisher pruned, then fine-tuned (Scratch-E's epochs)")
    assert equal["seeds"] == [0, 1] and equal["difference"]["n"] == 2
    assert equal["note"].startswith("equal epochs: 1 from scratch")
    scratch = {r.data.params["seed"]: r.data.metrics["test_error"] for r in all_runs()
               if r.data.tags.get("mlprunes.stage") == "scratch"
               and r.data.tags.get("mlflow.parentRunId") == first}
    assert equal["first_values"] == [scratch["0"], scratch["1"]]
    assert (equal["difference"]["low"] is None) == (
        equal["first_values"][0] - equal["second_values"][0]
        == equal["first_values"][1] - equal["second_values"][1])
    assert "epochs" in equal["first_budget"] and "TMACs" in equal["second_budget"]
    assert as_pruned["name"] != equal["name"]
    report = read_artifact_text(compare_id, "report.html", tmp_path / "r")
    assert "Fisher pruned, then fine-tuned (Scratch-E&#x27;s epochs)" in report
    assert "Caveats" in report and "the paper&#x27;s: 1.66x for WRN-40-2" in report

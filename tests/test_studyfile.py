"""Study files: every preset is one, every bad field is one clear line, overrides reach the
jobs, a study's keys do not depend on how it was given, and a study file for an image folder
runs end to end (also through `mlflow run -e main`)."""

import subprocess

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from mlprunes import arch
from mlprunes.cli import main
from mlprunes.errors import StageError
from mlprunes.jobs import RunConfig
from mlprunes.study.plans import study_graph
from mlprunes.study.studyfile import (PRESET_NAMES, load_preset, load_study_file, parse_study,
                                      study_toml)
from tests.stage_helpers import all_runs, cli, read_artifact_text
from tests.test_datasets import write_tree
from tests.test_mlflow_integration import BIN, REPO, env_with_venv


def keys(plan) -> dict[str, str]:
    """Every reusable job's key, inputs standing in as fixed run IDs."""
    graph = study_graph(plan, plan.name, RunConfig(progress=False),
                        arch.make_spec(**plan.arch, num_classes=10))
    ran = {name: f"run-{name}" for name in graph.names}
    return {n.name: n.job.resolved(ran).key for n in graph if n.job.reusable}


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_each_preset_round_trips_through_study_show_into_the_same_jobs_and_keys(name,
                                                                               tmp_path):
    shown = CliRunner().invoke(main, ["study", "show", name])
    assert shown.exit_code == 0
    (tmp_path / "mine.toml").write_text(shown.stdout)
    from_file = load_study_file(tmp_path / "mine.toml")
    assert from_file == load_preset(name)
    assert keys(from_file) == keys(load_preset(name))
    # The resolved form (what a pipeline run logs) reads back as the same study.
    assert parse_study(study_toml(from_file), "resolved") == from_file


def test_a_study_given_three_ways_makes_the_same_keys(tmp_path):
    """A preset; a file with the same values spelled out another way; a preset changed by
    --set to what another file says: equal studies, equal keys, so runs are reused."""
    demo = load_preset("demo")
    top, *sections = study_toml(demo).split("\n\n")
    # The sections in another order, numbers spelled another way, defaults left out.
    spelled = "\n\n".join([top, *reversed(sections)]).replace("width = 1\n", "width = 1.0\n")
    spelled = spelled.replace("keep_one = false\n", "").replace("data_seed = 0\n", "")
    (tmp_path / "again.toml").write_text(spelled)
    assert keys(load_study_file(tmp_path / "again.toml")) == keys(demo)
    changed = load_preset("demo", ["prune.prunes=100", "scratch.prunes=[60, 100]",
                                   "finetune.prunes=[60, 100]"])
    (tmp_path / "hundred.toml").write_text(   # [scratch] and [finetune] both say [170]
        study_toml(demo).replace("prunes = 170", "prunes = 100")
        .replace("prunes = [170]", "prunes = [60, 100]"))
    assert keys(changed) == keys(load_study_file(tmp_path / "hundred.toml"))
    assert keys(changed) != keys(demo)


def test_overrides_reach_the_jobs():
    plan = load_preset("tiny", ["prune.prunes=10", "scratch.prunes=[4, 8]", "train.lr=0.05",
                                "prune.lr=0.002", "prune.criteria=[\"fisher\", \"random\"]",
                                "scratch.budgets=[\"scratch-e\", \"scratch-b\"]",
                                "family.budgets=[0.5, 20000]", "run.seeds=[3, 4]",
                                "baselines.depths=[16]; evaluate.batch_size=32"])
    graph = study_graph(plan, "tiny", RunConfig(progress=False),
                        arch.make_spec(**plan.arch, num_classes=10))
    assert graph["base-s3"].job.recipe.lr == 0.05 and graph["base-s3"].job.run.seed == 3
    assert graph["base-s4"].job.run.seed == 4
    prune = graph["prune-random-s4"].job
    assert prune.prunes == 10 and prune.recipe.lr == 0.002 and prune.run.seed == 4
    scratch = sorted(n for n in graph.names if n.startswith("scratch") and n.endswith("-s3"))
    assert scratch == ["scratch-b-fisher-p4-s3", "scratch-b-fisher-p8-s3",
                       "scratch-b-random-p4-s3", "scratch-b-random-p8-s3",
                       "scratch-fisher-p4-s3", "scratch-fisher-p8-s3",
                       "scratch-random-p4-s3", "scratch-random-p8-s3"]
    assert graph["scratch-b-fisher-p8-s3"].job.budget == "scratch-b"
    assert graph["scratch-b-fisher-p8-s3"].job.max_epoch_factor is None   # no cap by default
    assert graph["reduced-depth16-s3"].job.spec.depth == 16
    assert graph["family-s3"].job.budgets[1] == 20000  # a count, not a fraction
    assert graph["evaluate-base-s3"].job.batch_size == 32
    capped = load_preset("tiny", ["scratch.budgets=['scratch-e', 'scratch-b']",
                                  "scratch.max_epoch_factor=2", "family.budget=scratch-b"])
    graph = study_graph(capped, "tiny", RunConfig(progress=False),
                        arch.make_spec(**capped.arch, num_classes=10))
    assert graph["scratch-b-fisher-p12"].job.max_epoch_factor == 2.0
    assert graph["scratch-fisher-p12"].job.max_epoch_factor is None     # Scratch-E: no factor
    assert graph["family"].job.max_epoch_factor == 2.0
    assert parse_study(study_toml(capped), "written", default_name="tiny") == capped
    assert graph.names[-1] == "compare" and len(graph["compare"].needs) == len(graph) - 1


BAD = [
    ("prune.prunes=0", "preset tiny: prune.prunes must be at least 1, got 0"),
    ("data.datset=x", "preset tiny: unknown key 'data.datset'; [data] takes dataset,"),
    ("prune.criteria=['fisher', 'magic']", "prune.criteria item 'magic': must be one of"),
    ("train.lr=-1", "preset tiny: train.lr must be at least 0, got -1"),
    ("train.lr=nan", "preset tiny: train.lr must be a finite number, got nan"),
    ("train.epochs=0", "preset tiny: train.epochs must be at least 1, got 0"),
    ("train.milestones=[0.5, 1.5]", "train.milestones item 1.5: must be less than 1"),
    ("train.gamma=0", "preset tiny: train.gamma must be more than 0, got 0"),
    ("train.schedule=linear", "train.schedule must be one of step, cosine, constant"),
    ("network.depth=11", "preset tiny: [network] is not a valid network"),
    ("network.family=alexnet", "network.family must be wrn, densenet, resnet, vgg, "
                               "\"torchvision:NAME\" or \"package.module:factory\", got "
                               "'alexnet'"),
    ("network.family=resnet", "[network] is not a valid network: invalid architecture: "
                              "width: applies to wrn and densenet only"),
    ("network.arch=vgg", "preset tiny: [network] names its network twice (arch and family)"),
    ("network.growth=4", "preset tiny: [network] is not a valid network"),
    ("bogus.x=1", "preset tiny: unknown section [bogus]"),
    ("scratch.prunes=[99]", "scratch.prunes [99] go beyond prune.prunes = 12"),
    ("scratch.budgets=['scratch-c']", "scratch.budgets item 'scratch-c': must be one of"),
    ("family.budgets=[inf]", "family.budgets item inf: must be a finite number"),
    ("family.budgets=[-0.5]", "family.budgets item -0.5: must be more than 0"),
    ("run.seeds=[]", "preset tiny: run.seeds must not be empty"),
    ("run.seeds=[1, 1]", "preset tiny: run.seeds has repeated items"),
    ("run.log_model=3", "preset tiny: run.log_model must be true or false, got 3"),
    ("baselines.reduced=[{depht = 3}]", "unknown network field(s) depht"),
    ("baselines.depths=[12]", "preset tiny: baseline {'depth': 12} is not a valid network"),
    ("data.dataset=mnist", "data.dataset must be one of"),
    ("data.val_split=1.5", "preset tiny: data.val_split must be at most 0.9"),
    ("prune.keep_one=yes", "prune.keep_one must be true or false, got 'yes'"),
    ("evaluate.batch_size=0", "evaluate.batch_size must be at least 1, got 0"),
    ("descripton=x", "preset tiny: unknown key 'descripton'"),
    ("prune.prunes", "--set 'prune.prunes': expected SECTION.KEY=VALUE"),
    ("baselines.depths=[16]; baselines.reduced=[{depth = 16}]", "{'depth': 16} is given twice"),
    ("prune.prunes=100000", "prune.prunes = 100000 is more than the 112 channels wrn-10-1"),
    ("family.budgets=[1.5]", "a parameter count is a whole number"),
    ("family.budgets=[1e-9]", "less than one of the base network's"),
    ("network.width=1e300", "network.width must be at most 64"),
    ("run.seeds=[18446744073709551616]", "must be at most 4294967295"),
    ("data.image_size=100000000", "data.image_size must be at most 8192"),
    ("a.b.c=1", "keys are SECTION.KEY"),
]


@pytest.mark.parametrize("override,expected", BAD, ids=[b[0] for b in BAD])
def test_every_bad_field_is_one_line_naming_the_study_and_the_key(override, expected):
    result = CliRunner().invoke(main, ["study", "check", "--preset", "tiny", "--set", override])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and expected in errors[0], result.output


@pytest.mark.parametrize("text,expected", [
    ("name = 'x'\n[network\n", "is not valid TOML: Expected ']'"),
    ("[prune]\nprunes = 3\n", "needs a [network] section"),
    ("[network]\ndepth = 10\nwidth = 1\n", "[prune] needs prunes"),
    ("[network]\ndepth = 10\nwidth = 1\n[prune]\nprunes = 3\nprune_every = 'often'\n",
     "prune.prune_every must be an integer, got 'often'"),
])
def test_a_bad_file_is_one_line_naming_the_file(tmp_path, text, expected):
    path = tmp_path / "mine.toml"
    path.write_text(text)
    with pytest.raises(StageError, match=f"^{path}: .*" if "TOML" not in expected else None) \
            as raised:
        load_study_file(path)
    assert expected in str(raised.value)
    missing = CliRunner().invoke(main, ["study", "check", str(tmp_path / "none.toml")])
    assert "Error: cannot read study file" in missing.output


IMAGEFOLDER_STUDY = """
name = "my-images"
description = "a WRN-10-1 on my own image folder"

[data]
dataset = "imagefolder"
data_dir = "{data_dir}"
image_size = 8

[network]
family = "wrn"
depth = 10
width = 1

[train]
epochs = 1
batch_size = 16

[prune]
criteria = ["l1"]
prunes = 6
prune_every = 1
val_every = 3
save_every = 3
batch_size = 16

[scratch]
prunes = [6]

[baselines]
reduced = [{{width = 0.5}}]

[evaluate]
enabled = false

[run]
log_model = false
"""


def test_a_study_file_for_an_image_folder_runs_end_to_end(store, tmp_path):
    write_tree(tmp_path / "images")  # three classes of ten images
    study = tmp_path / "my-study.toml"
    study.write_text(IMAGEFOLDER_STUDY.format(data_dir=tmp_path / "images"))
    result = cli("pipeline", "--study", str(study), "--set", "prune.prunes=4",
                 "--set", "scratch.prunes=[4]", "--no-progress")
    pipeline_id = result.run_id
    client = MlflowClient()
    pipeline = client.get_run(pipeline_id)
    assert pipeline.info.status == "FINISHED"
    assert pipeline.data.params["study.data.dataset"] == "imagefolder"
    assert pipeline.data.params["study.prune.prunes"] == "4"  # the override, as it ran
    logged = read_artifact_text(pipeline_id, "study.toml", tmp_path / "logged")
    assert load_study_file(study, ["prune.prunes=4", "scratch.prunes=[4]"]) == \
        parse_study(logged, "logged")
    children = [r for r in all_runs() if r.data.tags.get("mlflow.parentRunId") == pipeline_id]
    stages = sorted(r.data.tags["mlprunes.stage"] for r in children)
    assert stages == ["compare", "prune", "scratch", "train", "train"]
    assert all(r.info.status == "FINISHED" for r in children)
    prune = next(r for r in children if r.data.tags["mlprunes.stage"] == "prune")
    assert prune.data.params["dataset"] == "imagefolder" and prune.data.params["prunes"] == "4"
    assert prune.data.params["num_classes"] == "3"
    # The logged study runs the same study again: everything is reused.
    (tmp_path / "again.toml").write_text(logged)
    again = cli("pipeline", "--study", str(tmp_path / "again.toml"), "--no-progress")
    assert client.get_run(again.run_id).data.metrics["runs_reused"] == 4


def test_the_main_entry_point_runs_a_study_file_with_overrides(store, tmp_path):
    write_tree(tmp_path / "images")
    study = tmp_path / "my-study.toml"
    study.write_text(IMAGEFOLDER_STUDY.format(data_dir=tmp_path / "images"))
    done = subprocess.run(
        [str(BIN / "mlflow"), "run", str(REPO), "-e", "main", "--env-manager", "local",
         "--experiment-name", "study-via-mlflow-run", "-P", f"study={study}",
         "-P", "overrides=prune.prunes=3;scratch.prunes=[3];baselines.reduced=[]"],
        env=env_with_venv(MLFLOW_TRACKING_URI=store), capture_output=True, text=True,
        timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient()
    exp = client.get_experiment_by_name("study-via-mlflow-run")
    runs = client.search_runs([exp.experiment_id])
    (pipeline,) = [r for r in runs if r.data.tags.get("mlprunes.stage") == "pipeline"]
    assert pipeline.info.status == "FINISHED"
    assert pipeline.data.params["study.prune.prunes"] == "3"
    assert sorted(r.data.tags.get("mlprunes.stage") for r in runs) == [
        "compare", "pipeline", "prune", "scratch", "train"]


def test_the_readme_example_study_is_a_valid_study(tmp_path):
    import re

    readme = (REPO / "README.md").read_text()
    example = re.search(r"## Your own study.*?```toml\n(.*?)```", readme, re.S).group(1)
    (tmp_path / "flowers.toml").write_text(example)
    plan = load_study_file(tmp_path / "flowers.toml")
    assert plan.data.dataset == "imagefolder" and plan.seeds == (0, 1, 2)
    # per seed: base, prunes, scratch, fine-tune runs, reduced, family, two evaluations
    assert len(keys(plan)) == 3 * (1 + 3 + 3 * 2 * 3 + 3 * 2 * 3 + 3 + 1 + 2)


def test_numbers_key_by_value_not_spelling_and_any_text_round_trips():
    plain = load_preset("tiny", ["train.lr=1", "data.val_split=0", "train.momentum=0"])
    spelled = load_preset("tiny", ["train.lr=1.0", "data.val_split=0.0", "train.momentum=0.0"])
    assert keys(plain) == keys(spelled)
    assert keys(load_preset("tiny", ["data.val_split=0"])) == keys(load_preset("tiny"))
    odd = load_preset("tiny", ['description="two\\nlines, a \\"quote\\", a tab\\t and ü"'])
    assert "\n" in odd.description and parse_study(study_toml(odd), "resolved") == odd


def test_round_to_and_the_flops_penalty_reach_every_job_they_shape():
    """[network] round_to shapes the base, the reduced baselines (a bottleneck's irregular
    widths included), the prune runs and the family; [prune] flops_penalty the Fisher runs."""
    plan = load_preset("tiny", ["network.round_to=8", "prune.flops_penalty=0.3",
                                "prune.criteria=['fisher', 'l1-mean']",
                                "baselines.bottles=[0.3]", "family.budgets=[0.5]"])
    base = plan.base_spec(10)
    assert base.mids == arch.make_spec(**plan.arch).mids == (16, 32, 64)
    graph = study_graph(plan, "tiny", RunConfig(progress=False), base)
    assert graph["prune-fisher"].job.round_to == 8
    assert graph["prune-fisher"].job.flops_penalty == 0.3
    assert graph["prune-l1-mean"].job.flops_penalty == 0.0      # Fisher's term only
    assert graph["prune-fisher"].job.run_name == "prune-fisher+flops0.3-r8"
    bottle = graph["reduced-bottle0.3"].job.spec
    assert arch.make_spec("wrn", depth=10, width=1, bottle=0.3).mids == (4, 9, 19)
    assert bottle.mids == (8, 8, 16)
    assert graph["family"].job.round_to is None        # the prune run's: the study's 8
    assert parse_study(study_toml(plan), "written", default_name="tiny") == plan
    with pytest.raises(StageError, match="prunes of 8 channels"):
        load_preset("tiny", ["network.round_to=8", "prune.prunes=15"])
    with pytest.raises(StageError, match="wider than itself in some block"):
        load_preset("tiny", ["network.width=0.75", "network.round_to=8", "prune.prunes=4",
                             "scratch.prunes=[4]",
                             "scratch.init='sliced'"])
    with pytest.raises(StageError, match="the criteria have no fisher"):
        load_preset("tiny", ["prune.flops_penalty=0.3", "prune.criteria=['random']"])


def test_input_beyond_its_bounds_is_one_line(store, tmp_path):
    """Each bound a demanding user ran into: one line, in seconds, and no run."""
    import time

    tiny = ["pipeline", "--preset", "tiny", "--no-progress", "--dry-run"]
    deep = tmp_path / "deep.toml"
    deep.write_text('name = "deep"\n[prune]\nprunes = 3\nx = ' + "[" * 100_000 + "]" * 100_000)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b'name = "caf\xe9"\n')
    seeds = "run.seeds=[" + ",".join(map(str, range(1_000_000))) + "]"
    cases = [
        (["pipeline", "--study", str(deep), "--dry-run"],
         f"{deep}: values nested 100000 deep; at most 16 levels are read"),
        (["pipeline", "--study", str(binary), "--dry-run"],
         f"study file {binary} is not UTF-8 text (byte 11: b'\\xe9')"),
        ([*tiny, "--set", "prune.prunes=" + "[" * 50_000 + "1" + "]" * 50_000],
         "--set prune.prunes: values nested 50000 deep"),
        ([*tiny, "--set", seeds], "run.seeds has 1,000,000 items; at most 1,000 are taken"),
        ([*tiny, "--set", "run.seeds=[" + ",".join(map(str, range(999))) + "]",
          "--set", "run.max_jobs=5000"],
         "more than its bound of 5,000; raise it with [run] max_jobs"),
        ([*tiny, "--set", "name='a\u202eb'"],
         "name must hold no control or direction characters, got '\\u202e'"),
        ([*tiny, "--set", 'name="x"\nprune.prunes=3'],
         "--set name: '\"x\"\\nprune.prunes=3' is more than one TOML value"),
    ]
    for args, expected in cases:
        started = time.time()
        result = cli(*args)
        assert result.exit_code != 0 and len(result.error_lines) == 1, (args[-1][:80],
                                                                      result.stderr[-500:])
        assert expected in result.error_lines[0], result.error_lines[0][:300]
        assert "Traceback" not in result.stderr
        assert time.time() - started < 60, args[-1][:80]
    assert all_runs() == []

"""Help that teaches: summaries that fit, options under headings, defaults said for the stage,
one style of boolean (that `mlflow run -P x=true` still reaches), an example per command."""

import click
import pytest
from click.testing import CliRunner

from mlprunes.cli import main
from mlprunes.cli_help import switch_values


def commands(group=main, prefix=()):
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from commands(command, (*prefix, name))
        else:
            yield (*prefix, name), command


def test_every_summary_fits_and_every_command_has_an_example():
    listing = CliRunner().invoke(main, ["--help"], terminal_width=80).stdout
    assert "..." not in listing.split("Commands:")[1]
    for path, command in commands():
        assert len(command.get_short_help_str(limit=60)) <= 60, path
        text = CliRunner().invoke(main, [*path, "--help"], terminal_width=80).stdout
        assert "Examples:" in text or "Example:" in text, path
        assert f"mlprunes {' '.join(path)}" in text.split("Example")[-1], path


def test_every_boolean_is_a_switch():
    for path, command in commands():
        for p in command.params:
            if isinstance(p, click.Option) and (p.is_flag or p.type is click.BOOL):
                assert p.is_bool_flag, (path, p.name)
                assert p.secondary_opts or p.name in ("as_json", "dry_run", "resolved",
                                                      "help", "version"), (path, p.name)
            assert "[true|false]" not in (p.metavar or ""), (path, p.name)


def test_prune_help_groups_options_and_says_what_defaults_mean_for_pruning():
    text = CliRunner().invoke(main, ["prune", "--help"], terminal_width=100).stdout
    headings = [line for line in text.splitlines() if line and not line.startswith(" ")]
    assert headings[1:] == ["Pruning:", "Data:", "Fine-tuning recipe (between prunes):", "Run:",
                            "Examples:"]
    assert "about a tenth of an epoch" in text          # --prune-every for small data sets
    assert "8e-4 wrn / 1e-3 densenet" in text and "200 wrn" not in text
    train = CliRunner().invoke(main, ["train", "--help"], terminal_width=100).stdout
    assert "Training recipe:" in train and "200 wrn / 300 densenet" in train
    assert "Architecture:" in train


@pytest.mark.parametrize("given, read", [
    (["--keep-one", "true", "--prunes", "3"], ["--keep-one", "--prunes", "3"]),
    (["--keep-one", "false"], ["--no-keep-one"]),
    (["--download=yes", "--compile", "0"], ["--download", "--no-compile"]),
    (["--keep-one", "--prunes", "3"], ["--keep-one", "--prunes", "3"]),   # a plain switch
    (["--run-name", "true"], ["--run-name", "true"]),                     # not a switch
    (["--no-keep-one", "false"], ["--keep-one"]),
    (["--", "--keep-one", "true"], ["--", "--keep-one", "true"]),
])
def test_a_switch_given_a_value_as_mlflow_run_passes_it(given, read):
    prune = main.commands["prune"]
    assert switch_values(prune.params, given) == read


def test_a_plain_flag_given_a_value():
    pipeline = main.commands["pipeline"]
    assert switch_values(pipeline.params, ["--dry-run", "true"]) == ["--dry-run"]
    assert switch_values(pipeline.params, ["--dry-run", "false", "--seeds", "1"]) == \
        ["--seeds", "1"]


def test_mlproject_style_values_reach_the_job(monkeypatch):
    seen = {}

    def fake_run(job, resume_run_id=None):
        seen["job"] = job
        return None

    from mlprunes.stages import prune as stage
    monkeypatch.setattr(stage, "run", fake_run)
    monkeypatch.setattr("mlprunes.stages.tracking.check_tracking_store", lambda: None)
    result = CliRunner().invoke(main, ["prune", "--base-run-id", "x", "--prunes", "2",
                                       "--keep-one", "true", "--compile", "false"])
    assert result.exit_code == 0, result.output
    assert seen["job"].keep_one is True and seen["job"].run.compile is False

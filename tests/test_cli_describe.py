import json

from click.testing import CliRunner

from mlprunes.cli import main


def run(*args):
    return CliRunner().invoke(main, list(args))


def test_describe_json_wrn_40_2():
    result = run("describe", "--arch", "wrn", "--depth", "40", "--width", "2", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["params"] == 2_243_546
    assert data["prunable_channels"] == 1344
    assert data["flops"] > 0 and data["arch"]["family"] == "wrn"


def test_describe_densenet_defaults_and_bottleneck():
    data = json.loads(run("describe", "--arch", "densenet", "--json").output)
    assert data["params"] == 769_162 and data["prunable_channels"] == 2304
    half = json.loads(run("describe", "--arch", "densenet", "--bottle", "0.5", "--json").output)
    assert half["prunable_channels"] == 1152 and half["params"] < data["params"]


def test_describe_human_output():
    result = run("describe", "--depth", "16", "--width", "1", "--num-classes", "100")
    assert result.exit_code == 0
    assert "wrn-16-1" in result.output and "params" in result.output


def test_bad_depth_is_one_clear_error_line():
    result = run("describe", "--arch", "densenet", "--depth", "99")
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert lines == ["Error: invalid architecture: depth: DenseNet-BC depth must be 6n+4 with "
                     "n >= 1 (10, 16, 22, 28, 40, ..., 100), got 99"]


def test_wrong_family_option_is_refused():
    result = run("describe", "--arch", "wrn", "--growth", "12")
    assert result.exit_code != 0
    assert "growth: applies to densenet only" in result.output

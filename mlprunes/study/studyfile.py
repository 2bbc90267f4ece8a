"""Study files: a whole study written down as TOML, read with the standard library.

A study file has the sections below, each optional except `[network]` and `[prune]`'s
`prunes`. It is checked in full before anything runs: an unknown key, a value of the wrong
type or out of range is one error naming the file and the key. `--set section.key=VALUE`
changes a field after the file is read (VALUE is TOML: `3`, `0.5`, `"cifar100"`, `[1, 2]`; a
bare word is taken as a string; several may be joined with `;`). The presets are study files shipped in the package
(`mlprunes study show NAME`).

A study's jobs, and so their keys, depend only on the resolved values: the same study given as
a preset, a file or with overrides reuses the same runs.
"""

from __future__ import annotations

import json
import math
import tomllib
import unicodedata
from dataclasses import fields
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable

from mlprunes.arch import FAMILIES, GROUP_RULES, ArchError, canonical_json, make_spec, valid_builder
from mlprunes.counting import count_params
from mlprunes.data import DATASETS
from mlprunes.engine.recipes import PRESETS as RECIPE_PRESETS
from mlprunes.engine.recipes import FINETUNE_PRESET_NAMES, finetune_preset
from mlprunes.engine.recipes import default_preset, preset as recipe_preset
from mlprunes.errors import StageError
from mlprunes.jobs import BUDGETS, CRITERIA, FINETUNE_BUDGETS, DataConfig
from mlprunes.pruning.loop import SHRINK_EVERY
from mlprunes.study.plans import StudyPlan, baseline_network

PRESET_NAMES = ("demo", "tiny", "wrn-40-2", "densenet-bc-100", "resnet-56", "vgg-16",
                "criteria")

# -- what each key may hold ----------------------------------------------------------------------

Check = Callable[[Any], str | None]   # a problem with the value, or None


MAX_DEPTH = 16        # tables and arrays inside one another: a study needs four
MAX_SEEDS = 1_000
MAX_JOBS = 10_000     # a study's jobs, unless its [run] max_jobs says more


def _integer(low: int | None = None, high: int | None = None) -> Check:
    def check(v):
        if isinstance(v, bool) or not isinstance(v, int):
            return f"must be an integer, got {v!r}"
        if low is not None and v < low:
            return f"must be at least {low}, got {v}"
        if high is not None and v > high:
            return f"must be at most {high}, got {v}"
        return None
    return check


def _number(low: float | None = None, high: float | None = None, above: float | None = None,
            below: float | None = None) -> Check:
    """A real number (read as a float: `1` and `1.0` are one value, and key alike)."""
    def check(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return f"must be a finite number, got {v!r}"
        if low is not None and v < low:
            return f"must be at least {low}, got {v}"
        if above is not None and v <= above:
            return f"must be more than {above}, got {v}"
        if high is not None and v > high:
            return f"must be at most {high}, got {v}"
        if below is not None and v >= below:
            return f"must be less than {below}, got {v}"
        return None
    return check


def _boolean(v):
    return None if isinstance(v, bool) else f"must be true or false, got {v!r}"


def _text(v):
    return None if isinstance(v, str) and v.strip() else f"must be a non-empty string, got {v!r}"


# Characters that reorder the text around them (bidirectional controls), which a terminal or a
# run name would carry out of sight. Joiners (U+200C, U+200D), which Persian, Indic scripts and
# emoji need, are not among them.
_BIDI = set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _unprintable(v: str, allowed: str = "") -> str | None:
    """The first control or direction character in `v`, or None."""
    return next((c for c in v if c not in allowed and (
        c in _BIDI or unicodedata.category(c) in ("Cc", "Zl", "Zp"))), None)


def _name(v):
    problem = _text(v)
    if problem is None and (c := _unprintable(v)) is not None:
        problem = f"must hold no control or direction characters, got {c!r} in {v!r}"
    return problem


def _description(v):
    if not isinstance(v, str):
        return f"must be a string, got {v!r}"
    c = _unprintable(v, allowed="\n\t")
    return None if c is None else f"must hold no control or direction characters, got {c!r}"


def _one_of(choices: Iterable[str]) -> Check:
    choices = tuple(choices)

    def check(v):
        return None if v in choices else f"must be one of {', '.join(choices)}, got {v!r}"
    return check


def _list_of(item: Check, *, unique: bool = False, empty: bool = True,
             most: int = 10_000) -> Check:
    def check(v):
        if not isinstance(v, list):
            return f"must be a list, got {v!r}"
        if not v and not empty:
            return "must not be empty"
        if len(v) > most:
            return f"has {len(v):,} items; at most {most:,} are taken"
        for x in v:
            problem = item(x)
            if problem:
                return f"item {x!r}: {problem}"
        if unique and len(set(map(repr, v))) != len(v):
            return f"has repeated items: {v}"
        return None
    return check


def _overrides(v):
    """A list of tables of network fields (the reduced baselines)."""
    if not isinstance(v, list) or not all(isinstance(x, dict) and x for x in v):
        return f"must be a list of tables such as {{depth = 10}}, got {v!r}"
    for x in v:
        unknown = set(x) - set(NETWORK)
        if unknown:
            return f"{x}: unknown network field(s) {', '.join(sorted(unknown))}"
        for key, value in x.items():
            problem = NETWORK[key](value)
            if problem:
                return f"{x}: {key} {problem}"
    return None


_RECIPE = {"preset": _one_of(RECIPE_PRESETS), "batch_size": _integer(1, 65536),
           "lr": _number(0), "momentum": _number(0, below=1),
           "weight_decay": _number(0), "schedule": _one_of(("step", "cosine", "constant")),
           "milestones": _list_of(_number(above=0, below=1)), "gamma": _number(above=0),
           "pad": _one_of(("zero", "reflect"))}
def _network_name(v):
    if v in FAMILIES or valid_builder(v):
        return None
    return (f"must be wrn, densenet, resnet, vgg, \"torchvision:NAME\" or "
            f"\"package.module:factory\", got {v!r}")


def _arguments(v):
    if not isinstance(v, dict):
        return f"must be a table of the builder's keyword arguments, got {v!r}"
    try:
        canonical_json(v)
    except (TypeError, ValueError):
        return f"must hold plain values (numbers, strings, booleans, lists, tables), got {v!r}"
    return None


NETWORK = {"family": _network_name, "arch": _network_name, "depth": _integer(1, 1000),
           "width": _number(above=0, high=64), "growth": _integer(1, 1024),
           "bottle": _number(above=0, high=1), "args": _arguments,
           "groups": _one_of(GROUP_RULES)}

SCHEMA: dict[str, dict[str, Check]] = {
    "": {"name": _name, "description": _description},
    "data": {"dataset": _one_of(DATASETS), "data_dir": _text, "download": _boolean,
             "val_split": _number(0, high=0.9), "image_size": _integer(4, 8192),
             "shapes_train": _integer(2, 10 ** 7), "shapes_test": _integer(1, 10 ** 7),
             "data_seed": _integer(0, 2 ** 32 - 1)},
    "network": {**NETWORK, "round_to": _integer(1, 1024)},
    "train": {**_RECIPE, "epochs": _integer(1, 100000), "bn_l1": _number(0)},
    "prune": {"criteria": _list_of(_one_of(CRITERIA), unique=True, empty=False),
              "prunes": _integer(1), "prune_every": _integer(1), "val_every": _integer(1),
              "save_every": _integer(1), "keep_one": _boolean, "shrink_every": _integer(0),
              "flops_penalty": _number(low=0), "slimming": _number(low=0), **_RECIPE},
    "scratch": {"prunes": _list_of(_integer(1), unique=True),
                "params_budgets": _list_of(_integer(1), unique=True),
                "macs_reductions": _list_of(_number(above=1, high=10 ** 6), unique=True),
                "budgets": _list_of(_one_of(BUDGETS), unique=True, empty=False),
                "max_epoch_factor": _number(low=1), "init": _one_of(("fresh", "sliced"))},
    "finetune": {"prunes": _list_of(_integer(1), unique=True),
                 "params_budgets": _list_of(_integer(1), unique=True),
                 "budgets": _list_of(_one_of(FINETUNE_BUDGETS), unique=True, empty=False),
                 "criteria": _list_of(_one_of(CRITERIA), unique=True, empty=False),
                 **_RECIPE, "preset": _one_of(FINETUNE_PRESET_NAMES),
                 "epochs": _integer(1, 100000)},
    "baselines": {"reduced": _overrides, "depths": _list_of(_integer(1), unique=True),
                  "macs_reductions": _list_of(_number(above=1, high=10 ** 6), unique=True),
                  "widths": _list_of(_number(above=0), unique=True),
                  "growths": _list_of(_integer(1), unique=True),
                  "bottles": _list_of(_number(above=0, high=1), unique=True)},
    "family": {"budgets": _list_of(_number(above=0), unique=True),
               "budget": _one_of(BUDGETS)},
    "evaluate": {"enabled": _boolean, "batch_size": _integer(1, 65536)},
    "run": {"seeds": _list_of(_integer(0, 2 ** 32 - 1), unique=True, empty=False,
                              most=MAX_SEEDS),
            "log_model": _boolean, "max_jobs": _integer(1, 10 ** 7)},
}
_SWEEPS = {"depths": "depth", "widths": "width", "growths": "growth", "bottles": "bottle"}
_RECIPE_REALS = ("lr", "momentum", "weight_decay", "milestones", "gamma")
_REAL = {"data": ("val_split",), "network": ("width", "bottle"),
         "train": (*_RECIPE_REALS, "bn_l1"), "prune": (*_RECIPE_REALS, "slimming"),
         "baselines": ("widths", "bottles", "macs_reductions"), "family": (),
         "scratch": ("max_epoch_factor", "macs_reductions"), "finetune": _RECIPE_REALS}
_PRUNE_SCHEDULE = ("criteria", "prunes", "prune_every", "val_every", "save_every", "keep_one",
                   "shrink_every", "flops_penalty", "slimming")


# -- reading -------------------------------------------------------------------------------------

def preset_text(name: str) -> str:
    """The study file a preset is."""
    if name not in PRESET_NAMES:
        raise StageError(f"unknown preset {name!r}; choose one of {', '.join(PRESET_NAMES)}")
    return resources.files("mlprunes.study").joinpath("presets", f"{name}.toml").read_text()


def load_preset(name: str, sets: Iterable[str] = ()) -> StudyPlan:
    return parse_study(preset_text(name), f"preset {name}", sets, default_name=name)


def load_study_file(path: str | Path, sets: Iterable[str] = ()) -> StudyPlan:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise StageError(f"cannot read study file {path}: {err.strerror or err}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise StageError(f"study file {path} is not UTF-8 text (byte {err.start}: "
                         f"{data[err.start:err.start + 1]!r})") from None
    return parse_study(text, str(path), sets, default_name=path.stem)


def parse_study(text: str, source: str, sets: Iterable[str] = (),
                default_name: str = "study") -> StudyPlan:
    """A study from TOML text with `--set` overrides applied, checked field by field."""
    tree = _toml_within_depth(text, source)
    for given in sets:  # one --set may hold several, separated by ';' (for `mlflow run -P`)
        for item in filter(str.strip, given.split(";")):
            _apply_set(tree, item, source)
    _check(tree, source)
    _as_floats(tree)
    return _plan(tree, source, default_name)


def _toml_within_depth(text: str, source: str) -> dict[str, Any]:
    """TOML parsed, refusing nesting deeper than MAX_DEPTH before the parser recurses into it
    (brackets and braces outside strings and comments, counted without parsing)."""
    depth, deepest, quote, i = 0, 0, None, 0
    while i < len(text):
        c = text[i]
        if quote is not None:
            if c == "\\" and quote in ('"', '"""'):
                i += 2
                continue
            if text.startswith(quote, i):
                i += len(quote)
                if len(quote) == 3:   # a multi-line string may end in up to two more quotes
                    while i < len(text) and text[i] == quote[0] and text.startswith(quote, i - 2):
                        i += 1
                quote = None
                continue
        elif c == "#":
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
            continue
        elif c in "\"'":
            quote = c * 3 if text.startswith(c * 3, i) else c
            i += len(quote)
            continue
        elif c in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "]}":
            depth -= 1
        i += 1
    if deepest > MAX_DEPTH:
        raise StageError(f"{source}: values nested {deepest} deep; at most {MAX_DEPTH} levels "
                         f"are read")
    try:
        tree = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise StageError(f"{source} is not valid TOML: {err}") from None
    except RecursionError:
        raise StageError(f"{source}: values nested too deeply to read") from None
    # Dotted keys (a.b.c = 1) nest without brackets: the tree itself, walked without recursion.
    stack = [(tree, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise StageError(f"{source}: values nested more than {MAX_DEPTH} levels deep")
        children = value.values() if isinstance(value, dict) else value if isinstance(
            value, list) else ()
        stack.extend((child, depth + 1) for child in children
                     if isinstance(child, (dict, list)))
    return tree


def _as_floats(tree: dict[str, Any]) -> None:
    """Every real-valued field as a float, so that `lr = 1` and `lr = 1.0` make one job."""
    for section, table in tree.items():
        if not isinstance(table, dict):
            continue
        for key, value in table.items():
            if key not in _REAL.get(section, ()):
                continue
            if isinstance(value, list):
                table[key] = [float(v) for v in value]
            else:
                table[key] = float(value)
    for overrides in tree.get("baselines", {}).get("reduced", []):
        for key in ("width", "bottle"):
            if key in overrides:
                overrides[key] = float(overrides[key])


def _apply_set(tree: dict[str, Any], item: str, source: str) -> None:
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise StageError(f"--set {item!r}: expected SECTION.KEY=VALUE, e.g. prune.prunes=300")
    raw = raw.strip()
    try:
        parsed = _toml_within_depth(f"v = {raw}", f"--set {key}")
    except StageError as err:
        if "not valid TOML" not in str(err):
            raise
        parsed = {"v": raw}  # a bare word: a string
        if _unprintable(raw) is not None:
            raise StageError(f"--set {key}: a bare word must be one line of printable text, "
                             f"got {raw!r}; quote a TOML string") from None
    if set(parsed) != {"v"}:
        raise StageError(f"--set {key}: {raw!r} is more than one TOML value (give one value "
                         f"per --set, or separate them with ';')")
    value = parsed["v"]
    *sections, name = key.split(".")
    if len(sections) > 1:
        raise StageError(f"--set {item!r}: keys are SECTION.KEY (or a top-level KEY)")
    table = tree.setdefault(sections[0], {}) if sections else tree
    if not isinstance(table, dict):
        raise StageError(f"--set {item!r}: {sections[0]} is not a section of {source}")
    table[name] = value


def _check(tree: dict[str, Any], source: str) -> None:
    for section, value in tree.items():
        if isinstance(value, dict):
            if section not in SCHEMA or not section:
                raise StageError(f"{source}: unknown section [{section}]; known: "
                                 f"{', '.join('[' + s + ']' for s in SCHEMA if s)}")
            for key, v in value.items():
                _check_key(section, key, v, source)
        else:
            _check_key("", section, value, source)
    if "prunes" not in tree.get("prune", {}):
        raise StageError(f"{source}: [prune] needs prunes, the number of channels to prune")
    if "network" not in tree:
        raise StageError(f"{source}: needs a [network] section (family, depth, ...)")


def _check_key(section: str, key: str, value: Any, source: str) -> None:
    where = f"{section}.{key}" if section else key
    known = SCHEMA[section]
    if key not in known:
        raise StageError(f"{source}: unknown key {where!r}; [{section or 'top level'}] takes "
                         f"{', '.join(known)}")
    problem = known[key](value)
    if problem:
        raise StageError(f"{source}: {where} {problem}")


def _named(network: dict[str, Any], source: str, where: str) -> dict[str, Any]:
    """`arch` is the command line's word for a network's `family`: either may name it."""
    if "arch" in network:
        if "family" in network:
            raise StageError(f"{source}: {where} names its network twice (arch and family)")
        network["family"] = network.pop("arch")
    return network


def _plan(tree: dict[str, Any], source: str, default_name: str) -> StudyPlan:
    data = DataConfig(**{f.name: tree["data"][f.name] for f in fields(DataConfig)
                         if f.name in tree.get("data", {})})
    network = _named(dict(tree["network"]), source, "[network]")
    network.setdefault("family", "wrn")
    round_to = network.pop("round_to", 1)
    try:
        base = make_spec(**network, num_classes=10, input_size=data.image_size).rounded(round_to)
    except (ArchError, TypeError, ValueError, OverflowError) as err:
        raise StageError(f"{source}: [network] is not a valid network: {err}") from None
    train = dict(tree.get("train", {}))
    prune = dict(tree.get("prune", {}))
    schedule = {k: prune.pop(k) for k in _PRUNE_SCHEDULE if k in prune}
    for section, overrides, pruning in (("train", train, False), ("prune", prune, True)):
        try:  # the recipe the section makes, checked as a whole (milestones, momentum...)
            recipe_preset(overrides.get("preset", default_preset(base.family)), pruning).override(
                **{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()
                   if k != "preset"})
        except ValueError as err:
            raise StageError(f"{source}: [{section}] {err}") from None
    scratch = tree.get("scratch", {})
    prunes = schedule["prunes"]
    beyond = [n for n in scratch.get("prunes", []) if n > prunes]
    if beyond:
        raise StageError(f"{source}: scratch.prunes {beyond} go beyond prune.prunes = {prunes}")
    finetune = dict(tree.get("finetune", {}))
    finetune_points = {k: finetune.pop(k) for k in ("prunes", "params_budgets", "budgets",
                                                      "criteria") if k in finetune}
    _check_finetune(finetune_points, finetune, schedule, prunes, train,
                    default_preset(base.family), source)
    baselines = [_named(dict(x), source, "a baseline")
                 for x in tree.get("baselines", {}).get("reduced", [])]
    for sweep, field in _SWEEPS.items():
        baselines += [{field: v} for v in tree.get("baselines", {}).get(sweep, [])]
    seen = []
    for overrides in baselines:
        if overrides in seen:
            raise StageError(f"{source}: baseline {overrides} is given twice (baselines.reduced "
                             f"and the sweeps together)")
        seen.append(overrides)
        try:
            make_spec(**baseline_network(network, overrides), num_classes=10,
                      input_size=data.image_size)
        except (ArchError, TypeError, ValueError, OverflowError) as err:
            raise StageError(f"{source}: baseline {overrides} is not a valid network: {err}"
                             ) from None
    keep_one = schedule.get("keep_one", False)
    keeps = keep_one or not base.can_empty_groups   # a traced network's groups keep one
    limit = max(0, (base.prunable_channels - (base.num_blocks * round_to if keeps else 0))
                // round_to)
    if prunes > limit:
        what = f"prunes of {round_to} channels" if round_to > 1 else "channels"
        raise StageError(f"{source}: prune.prunes = {prunes} is more than the {limit} {what} "
                         f"{base.name} can lose" + (" with keep_one" if keep_one else ""))
    if round_to > 1 and scratch.get("init") == "sliced" and any(
            m > f for m, f in zip(base.mids, make_spec(**network, num_classes=10,
                                                       input_size=data.image_size).full_mids())):
        raise StageError(f"{source}: network.round_to = {round_to} makes {base.name} wider than "
                         f"itself in some block ({list(base.mids)}), which scratch.init = "
                         f"\"sliced\" cannot cut from the full network; use init = \"fresh\"")
    if schedule.get("slimming") and "bn-scale" not in schedule.get("criteria", ()):
        raise StageError(f"{source}: prune.slimming trains a base for network slimming's "
                         f"bn-scale criterion; the criteria have no bn-scale")
    if schedule.get("flops_penalty") and "fisher" not in schedule.get("criteria", ("fisher",)):
        raise StageError(f"{source}: prune.flops_penalty weighs Fisher's estimated loss "
                         f"increase against FLOPs; the criteria have no fisher")
    for budget in tree.get("family", {}).get("budgets", []):
        if budget > 1 and budget != int(budget):
            raise StageError(f"{source}: family.budgets item {budget}: a fraction of the base "
                             f"network is at most 1; a parameter count is a whole number")
        if budget <= 1 and int(count_params(base) * budget) < 1:
            raise StageError(f"{source}: family.budgets item {budget}: less than one of the "
                             f"base network's {count_params(base):,} parameters")
    family = tree.get("family", {})
    evaluate = tree.get("evaluate", {})
    run = tree.get("run", {})
    seeds = run.get("seeds")
    return StudyPlan(
        name=tree.get("name", default_name), description=tree.get("description", ""),
        data=data, arch=network,
        train={k: tuple(v) if isinstance(v, list) else v for k, v in train.items()},
        prune_recipe={k: tuple(v) if isinstance(v, list) else v for k, v in prune.items()},
        criteria=tuple(schedule.get("criteria", ("fisher", "l1-mean", "random"))), prunes=prunes,
        prune_every=schedule.get("prune_every", 100), val_every=schedule.get("val_every", 10),
        save_every=schedule.get("save_every", 100), keep_one=schedule.get("keep_one", False),
        shrink_every=schedule.get("shrink_every", SHRINK_EVERY),
        round_to=round_to, flops_penalty=float(schedule.get("flops_penalty", 0.0)),
        slimming=float(schedule.get("slimming", 0.0)),
        scratch_prunes=tuple(scratch.get("prunes", ())),
        scratch_params_budgets=tuple(scratch.get("params_budgets", ())),
        scratch_macs_reductions=tuple(scratch.get("macs_reductions", ())),
        uniform_macs_reductions=tuple(tree.get("baselines", {}).get("macs_reductions", ())),
        scratch_budgets=tuple(scratch.get("budgets", ("scratch-e",))),
        finetune_prunes=tuple(finetune_points.get("prunes", ())),
        finetune_params_budgets=tuple(finetune_points.get("params_budgets", ())),
        finetune_budgets=tuple(finetune_points.get("budgets", ("scratch-e",))),
        finetune_criteria=(tuple(finetune_points["criteria"]) if "criteria" in finetune_points
                           else None),
        finetune_recipe={k: tuple(v) if isinstance(v, list) else v
                         for k, v in finetune.items()},
        max_epoch_factor=scratch.get("max_epoch_factor"), init=scratch.get("init", "fresh"),
        baselines=tuple(baselines), family_budgets=tuple(family.get("budgets", ())),
        family_budget=family.get("budget", "scratch-e"),
        evaluate=evaluate.get("enabled", True),
        evaluate_batch_size=evaluate.get("batch_size", 64),
        seeds=tuple(seeds) if seeds is not None else None,
        log_model=run.get("log_model", True), max_jobs=run.get("max_jobs", MAX_JOBS))


def _check_finetune(points: dict[str, Any], recipe: dict[str, Any], schedule: dict[str, Any],
                    prunes: int, train: dict[str, Any], train_preset: str,
                    source: str) -> None:
    """[finetune]: its points are checkpoints the prune runs save, its criteria some of the
    study's, and its epochs the recipe's only where no budget sets them."""
    save_every = schedule.get("save_every", 100)
    for n in points.get("prunes", []):
        if n > prunes:
            raise StageError(f"{source}: finetune.prunes item {n} goes beyond prune.prunes = "
                             f"{prunes}")
        if n % save_every and n != prunes:
            raise StageError(f"{source}: finetune.prunes item {n} is not a saved checkpoint: "
                             f"the prune runs save every {save_every} prunes and at {prunes}")
    criteria = schedule.get("criteria", ("fisher", "l1-mean", "random"))
    stray = [c for c in points.get("criteria", []) if c not in criteria]
    if stray:
        raise StageError(f"{source}: finetune.criteria {stray} are not in prune.criteria")
    budgets = points.get("budgets", ["scratch-e"])
    if "epochs" in recipe and any(b != "recipe" for b in budgets):
        raise StageError(f"{source}: finetune.epochs applies to budgets = [\"recipe\"]; the "
                         f"budgets {[b for b in budgets if b != 'recipe']} set the epochs "
                         f"themselves")
    try:  # the recipe the section makes, checked as a whole
        base = recipe_preset(train.get("preset", train_preset)).override(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in train.items()
               if k != "preset"})
        finetune_preset(recipe.get("preset", "liu"), base).override(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in recipe.items()
               if k != "preset"})
    except ValueError as err:
        raise StageError(f"{source}: [finetune] {err}") from None


# -- writing -------------------------------------------------------------------------------------

def study_tree(plan: StudyPlan) -> dict[str, Any]:
    """The resolved study as the sections of a study file."""
    data = {f.name: getattr(plan.data, f.name) for f in fields(DataConfig)
            if getattr(plan.data, f.name) is not None}
    tree: dict[str, Any] = {
        "name": plan.name, "description": plan.description, "data": data,
        "network": dict(plan.arch), "train": dict(plan.train),
        "prune": {"criteria": list(plan.criteria), "prunes": plan.prunes,
                  "prune_every": plan.prune_every, "val_every": plan.val_every,
                  "save_every": plan.save_every, "keep_one": plan.keep_one,
                  "shrink_every": plan.shrink_every, **plan.prune_recipe},
        "scratch": {"prunes": list(plan.scratch_prunes),
                    "params_budgets": list(plan.scratch_params_budgets),
                    "macs_reductions": list(plan.scratch_macs_reductions),
                    "budgets": list(plan.scratch_budgets), "init": plan.init},
        "finetune": {"prunes": list(plan.finetune_prunes),
                     "params_budgets": list(plan.finetune_params_budgets),
                     "budgets": list(plan.finetune_budgets), **plan.finetune_recipe},
        "baselines": {"reduced": [dict(b) for b in plan.baselines],
                      "macs_reductions": list(plan.uniform_macs_reductions)},
        "family": {"budgets": list(plan.family_budgets), "budget": plan.family_budget},
        "evaluate": {"enabled": plan.evaluate, "batch_size": plan.evaluate_batch_size},
        "run": {"log_model": plan.log_model},
    }
    if plan.seeds is not None:
        tree["run"]["seeds"] = list(plan.seeds)
    if plan.max_jobs != MAX_JOBS:
        tree["run"]["max_jobs"] = plan.max_jobs
    if plan.round_to != 1:
        tree["network"]["round_to"] = plan.round_to
    if plan.flops_penalty:
        tree["prune"]["flops_penalty"] = plan.flops_penalty
    if plan.slimming:
        tree["prune"]["slimming"] = plan.slimming
    if plan.finetune_criteria is not None:
        tree["finetune"]["criteria"] = list(plan.finetune_criteria)
    if plan.max_epoch_factor is not None:  # TOML has no null: absent means no cap
        tree["scratch"]["max_epoch_factor"] = plan.max_epoch_factor
    return tree


def study_toml(plan: StudyPlan) -> str:
    """The resolved study as a study file (it reads back as the same study)."""
    tree = study_tree(plan)
    lines = [f"{k} = {_toml(v)}" for k, v in tree.items() if not isinstance(v, dict)]
    for section, table in tree.items():
        if isinstance(table, dict):
            lines += ["", f"[{section}]", *(f"{k} = {_toml(v)}" for k, v in table.items())]
    return "\n".join(lines) + "\n"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):  # JSON's string escapes are TOML's basic-string escapes
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML form for {value!r}")


def study_params(plan: StudyPlan) -> dict[str, Any]:
    """The resolved study's fields as flat MLflow params (`study.prune.prunes`, ...)."""
    flat = {}
    for section, value in study_tree(plan).items():
        if isinstance(value, dict):
            flat.update({f"study.{section}.{k}": v for k, v in value.items()})
        else:
            flat[f"study.{section}"] = value
    return flat

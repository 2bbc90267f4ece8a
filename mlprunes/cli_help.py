"""How `mlprunes` commands read their switches and print their help.

- Options print under headings (the command's own first, then architecture, data, recipe,
  run), each group's heading set where the group is defined (`help_group`).
- Every boolean is a switch, `--x/--no-x` (or a plain flag where only one sense makes sense).
  `mlflow run -P x=true` passes extra parameters as `--x true`, so a boolean followed by
  true/false (yes/no, 1/0, on/off) is read as the switch it means.
- A command's examples (`examples(...)`) print after its options.
"""

from __future__ import annotations

import click

TRUE = {"true", "yes", "1", "on"}
FALSE = {"false", "no", "0", "off"}
OWN = "Options"
# The heading of a command's own options, where they have one theme.
HEADINGS = {"prune": "Pruning", "scratch": "From scratch", "finetune": "Fine-tuning",
            "family": "Family",
            "evaluate": "Evaluation", "export": "Export", "compare": "Comparison",
            "pipeline": "Study", "plan": "Study and cost", "train": "Training run"}


def examples(*lines: str):
    """Attach example command lines to a command (printed after its options)."""
    def decorate(fn):
        fn.__mlprunes_examples__ = lines
        return fn
    return decorate


class Command(click.Command):
    def __init__(self, *args, **kwargs):
        callback = kwargs.get("callback")
        self.examples = getattr(callback, "__mlprunes_examples__", ())
        super().__init__(*args, **kwargs)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, switch_values(self.params, args))

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        own = HEADINGS.get(self.name, OWN)
        groups: dict[str, list[tuple[str, str]]] = {own: []}
        for param in self.get_params(ctx):
            if not isinstance(param, click.Option):  # arguments are in the usage line
                continue
            record = param.get_help_record(ctx)
            if record is not None:
                groups.setdefault(getattr(param, "help_group", own), []).append(record)
        for title, records in groups.items():
            if records:
                with formatter.section(title):
                    formatter.write_dl(records)

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        if self.examples:
            with formatter.section("Examples"):
                for line in self.examples:   # unwrapped: a command line is copied whole
                    formatter.write(f"{'':>{formatter.current_indent}}{line}\n")
        super().format_epilog(ctx, formatter)


class Group(click.Group):
    command_class = Command

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.group_class = Group


def switch_values(params, args: list[str]) -> list[str]:
    """Booleans given a value, as `mlflow run -P x=VALUE` passes them (`--x VALUE`): for a
    switch, `--x true` is `--x` and `--x false` is `--no-x` (`--no-x false` is `--x`); for a
    plain flag, `--x true` is `--x` and `--x false` is nothing. Stops at `--`."""
    meaning: dict[str, tuple[str | None, str | None]] = {}   # name -> (when true, when false)
    for p in params:
        if not (isinstance(p, click.Option) and p.is_flag and p.is_bool_flag):
            continue
        on, off = p.opts[0], (p.secondary_opts[0] if p.secondary_opts else None)
        for name in p.opts:
            meaning[name] = (on, off)
        for name in p.secondary_opts:
            meaning[name] = (off, on)
    out, i = [], 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            return out + args[i:]
        name, eq, value = arg.partition("=")
        if not eq:
            name, value = arg, (args[i + 1] if i + 1 < len(args) else "")
        word = value.lower()
        if name in meaning and word in TRUE | FALSE:
            chosen = meaning[name][0] if word in TRUE else meaning[name][1]
            out += [chosen] if chosen else []
            i += 1 if eq else 2
            continue
        out.append(arg)
        i += 1
    return out

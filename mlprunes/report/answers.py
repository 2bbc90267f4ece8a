"""The study's questions, answered at matched size from its runs' records (no MLflow).

Replicates (runs that differ only in seed) are pooled; each comparison gives a difference of
means with a 95% confidence interval and a verdict:

1. pruned + fine-tuned against each reduced baseline, the pruning test curve read at the
   baseline's parameter count (independent groups: Welch's interval); and each network
   fine-tuned after pruning (`finetune`) against each baseline at least its size;
2. each architecture trained from scratch against the network it was pruned to, read on that
   prune run's test curve at its size, as pruned (paired by seed: one prune run makes both);
   and against the same network fine-tuned on after pruning, at equal epochs where the
   fine-tune run took Scratch-E's (paired by seed);
3. each family member against its prune run's test curve at the member's size (paired);
4. measured latency of the compressed pruned network against the reduced network it was timed
   in turn with, at each batch size (paired by seed: each seed's pruned network against the
   reduced network matched to its own size, timed by one evaluate run);
5. (the leaderboard) each criterion at the checkpoint nearest 2x, 4x and 8x fewer MACs
   against random pruning (paired by seed), beside its architectures from scratch and a
   uniform-width network of about those MACs.

Each comparison says what training each side had (`first_budget`, `second_budget`): epochs and
training multiply-accumulates, a pruned network's counting its base's training.

Differences are first minus second as titled: negative error differences favour the first.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from mlprunes.arch import GraphSpec
from mlprunes.report.records import RunRecord, criterion_name, replicate_groups
from mlprunes.report.stats import (Difference, interpolate, mean, paired_difference, std,
                                   welch_difference)

QUESTIONS = {
    1: "Does a pruned and fine-tuned network beat a smaller network trained from scratch with "
       "as many parameters?",
    2: "Is it the pruned weights or the pruned architecture that is valuable?",
    3: "Can one pruning run give a family of architectures, scaled to other sizes?",
    4: "At equal parameters, which runs faster: pruned or reduced?",
    5: "Which criterion prunes best, at 2x, 4x and 8x fewer MACs? (the leaderboard)",
}
REDUCTIONS = (2.0, 4.0, 8.0)   # the leaderboard's, unless scratch runs name others
NOT_REACHED = 1.2              # a checkpoint further than this ratio from the target is not it
NO_INTERVAL = "one seed: no interval"
NO_SPREAD = "no spread over seeds: no interval"
NOT_SIGNIFICANT = "no significant difference"
OUT_OF_RANGE = "not comparable: outside the pruning curve"


@dataclass
class Comparison:
    question: int
    name: str                       # a stable identifier: metric names on the compare run
    first: str                      # what the difference is of: first - second
    second: str
    unit: str                       # "% test error" or "ms"
    at_params: float | None         # the matched size
    first_values: list[float] = field(default_factory=list)
    second_values: list[float] = field(default_factory=list)
    seeds: list[int | None] = field(default_factory=list)
    run_ids: list[str] = field(default_factory=list)
    difference: Difference | None = None
    verdict: str = OUT_OF_RANGE
    note: str = ""
    first_budget: str = ""          # the training each side had: epochs, training MACs
    second_budget: str = ""

    @property
    def title(self) -> str:
        return f"{self.first} vs {self.second}"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["title"] = self.title
        if self.difference is not None:
            out["first_mean"] = mean(self.first_values)
            out["second_mean"] = mean(self.second_values)
            out["first_std"] = std(self.first_values)
            out["second_std"] = std(self.second_values)
        return out


@dataclass
class Answer:
    question: int
    comparisons: list[Comparison]

    @property
    def text(self) -> str:
        return QUESTIONS[self.question]

    @property
    def summary(self) -> str:
        """The verdicts counted, e.g. `reduced better 3, no significant difference 2`."""
        if not self.comparisons:
            return "no runs to answer it"
        counts: dict[str, int] = {}
        for c in self.comparisons:
            counts[c.verdict] = counts.get(c.verdict, 0) + 1
        return ", ".join(f"{verdict} {n}" if len(self.comparisons) > 1 else verdict
                         for verdict, n in sorted(counts.items(), key=lambda kv: -kv[1]))

    def to_dict(self) -> dict[str, Any]:
        return {"question": self.question, "text": self.text, "summary": self.summary,
                "comparisons": [c.to_dict() for c in self.comparisons]}


def verdict(difference: Difference, first: str, second: str, better: str = "better") -> str:
    """`first better`, `second better`, no significant difference, or no interval."""
    if not difference.has_interval:
        return NO_INTERVAL if difference.n < 2 else NO_SPREAD
    if not difference.significant():
        return NOT_SIGNIFICANT
    return f"{first if difference.value < 0 else second} {better}"


def config_label(record: RunRecord) -> str:
    """A run's name without its seed suffix: what its replicates share."""
    return re.sub(r"-s\d+(?=-|$)", "", record.name)


def slug(text: str, *keys: str) -> str:
    """A metric-safe name, unique through a digest of the configurations it compares and
    short enough for MLflow (250 characters with the q<N>_ prefix and _high suffix)."""
    digest = hashlib.sha256("|".join(keys).encode()).hexdigest()[:6]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_").lower()[:180] + "_" + digest


def replicates(records: list[RunRecord], stage: str) -> list[list[RunRecord]]:
    """Runs of a stage grouped by configuration, one per seed."""
    return replicate_groups([r for r in records if r.stage == stage])


def test_curve(record: RunRecord) -> list[tuple[float, float]]:
    return [(p.params, p.error) for p in record.test_curve if p.params]


def is_reduced(record: RunRecord) -> bool:
    return record.stage == "train" and (record.group.startswith("Reduced") or record.group in (
        "Bottleneck", "Uniform width", "Smaller network"))


def answer_all(records: list[RunRecord]) -> list[Answer]:
    answers = [Answer(1, reduced_vs_pruned(records)), Answer(2, scratch_vs_pruned(records)),
               Answer(3, family_vs_pruned(records)),
               Answer(4, latency_pruned_vs_reduced(records))]
    board = leaderboard_vs_random(records)
    return answers + ([Answer(5, board)] if board else [])


def _finish(c: Comparison, difference: Difference, first_word: str, second_word: str,
            better: str = "better") -> Comparison:
    c.difference = difference
    c.verdict = verdict(difference, first_word, second_word, better)
    return c


def spent(record: RunRecord, at_params: float | None = None) -> tuple[float | None,
                                                                     float | None]:
    """The training a network had, in epochs and training MACs; a prune run's read on its test
    curve at `at_params` (the network the comparison takes from it)."""
    if record.stage == "prune" and at_params is not None:
        curve = [p for p in record.test_curve if p.params]
        epochs = interpolate([(p.params, p.epochs) for p in curve], at_params)
        macs = (interpolate([(p.params, p.macs) for p in curve], at_params)
                if all(p.macs is not None for p in curve) else None)
        return epochs, macs
    return record.epochs, record.train_macs


def budget_text(records: list[RunRecord], at_params: list[float | None] | None = None) -> str:
    """The mean training of these networks: `45 epochs, 1.69 TMACs`."""
    ats = at_params or [None] * len(records)
    pairs = [spent(r, at) for r, at in zip(records, ats)]
    epochs = [e for e, _ in pairs if e is not None]
    macs = [m for _, m in pairs if m is not None]
    parts = ([f"{mean(epochs):.3g} epochs"] if epochs else []) + (
        [f"{mean(macs) / 1e12:.3g} TMACs"] if macs else [])
    return ", ".join(parts)


def _comparable(kind, baseline: list[RunRecord], pruned: list[RunRecord]) -> bool:
    """Whether a reduced baseline competes with networks of `kind` (the pruned side's)."""
    spec = baseline[0].spec
    if baseline[0].data != pruned[0].data:  # another dataset or image size
        return False
    return kind is None or spec is None or (
        spec.num_classes == kind.num_classes and (
            # the seed's families compare within a family; a traced network with any smaller
            # network of its study (another depth or builder)
            spec.family == kind.family or (
                isinstance(spec, GraphSpec) and isinstance(kind, GraphSpec))))


def reduced_vs_pruned(records: list[RunRecord]) -> list[Comparison]:
    """Question 1: each prune configuration against each reduced baseline of its network's
    kind, at the baseline's parameter count; then each fine-tuned pruned network against each
    baseline with at least its parameters."""
    out = []
    reduced = replicates([r for r in records if is_reduced(r)], "train")
    for pruned in replicates(records, "prune"):
        kind = next((p.spec for p in pruned if p.spec is not None), None)
        for baseline in reduced:
            if not _comparable(kind, baseline, pruned):
                continue
            sizes = [b.params for b in baseline if b.params]
            if not sizes:
                continue
            at = mean(sizes)
            c = Comparison(1, slug(f"{pruned[0].criterion}_vs_{config_label(baseline[0])}",
                                   pruned[0].replicate, baseline[0].replicate),
                           pruned[0].group, f"{baseline[0].group} ({config_label(baseline[0])})",
                           "% test error", at)
            read = [interpolate(test_curve(p), at) for p in pruned]
            c.second_values = [b.test_error for b in baseline if b.test_error is not None]
            c.seeds = sorted({r.seed for r in pruned + baseline}, key=lambda s: (s is None, s or 0))
            c.run_ids = [r.run_id for r in pruned + baseline]
            c.first_budget = budget_text(pruned, [at] * len(pruned))
            c.second_budget = budget_text(baseline)
            if any(v is None for v in read):  # a mean over the seeds that got small enough
                reached = sum(v is not None for v in read)     # would flatter the curve
                c.note = f"{reached} of {len(read)} prune runs reach this size"
            elif c.second_values:
                c.first_values = read
                _finish(c, welch_difference(c.first_values, c.second_values), "pruned",
                        "reduced")
            out.append(c)
    return out + finetuned_vs_reduced(records, reduced)


def finetuned_vs_reduced(records: list[RunRecord],
                         reduced: list[list[RunRecord]]) -> list[Comparison]:
    """Question 1 with the fine-tuned pruned network as the pruned side: against each reduced
    baseline with at least as many parameters (a fixed network, not a curve to read at the
    baseline's size; independent groups: Welch's interval)."""
    out = []
    for tuned in replicates(records, "finetune"):
        kind = next((t.spec for t in tuned if t.spec is not None), None)
        sizes = [t.params for t in tuned if t.params]
        errors = [t.test_error for t in tuned if t.test_error is not None]
        if not sizes or not errors:
            continue
        for baseline in reduced:
            at = [b.params for b in baseline if b.params]
            second = [b.test_error for b in baseline if b.test_error is not None]
            if not at or not second or not _comparable(kind, baseline, tuned) or (
                    mean(sizes) > mean(at)):
                continue
            c = Comparison(1, slug(f"{config_label(tuned[0])}_vs_{config_label(baseline[0])}",
                                   tuned[0].replicate, baseline[0].replicate),
                           f"{tuned[0].group} ({config_label(tuned[0])})",
                           f"{baseline[0].group} ({config_label(baseline[0])})",
                           "% test error", mean(at), first_values=errors, second_values=second,
                           seeds=sorted({r.seed for r in tuned + baseline},
                                        key=lambda s: (s is None, s or 0)),
                           run_ids=[r.run_id for r in tuned + baseline],
                           note=f"{mean(sizes):,.0f} params fine-tuned, {mean(at):,.0f} reduced",
                           first_budget=budget_text(tuned), second_budget=budget_text(baseline))
            out.append(_finish(c, welch_difference(errors, second), "fine-tuned", "reduced"))
    return out


def _paired_with_prune(records: list[RunRecord], stage: str, question: int,
                       first_word: str, as_pruned: str = "") -> list[Comparison]:
    """Questions 2 and 3: each network made from a prune run against that prune run's test
    curve at the network's size, paired by seed (`as_pruned` said after the prune side)."""
    by_id = {r.run_id: r for r in records}
    out = []
    for made in replicates(records, stage):
        first = made[0]
        source = by_id.get(first.prune_run_id)
        second = (source.group if source is not None else (
            f"{criterion_name(first.criterion)} prune + fine-tune")) + as_pruned
        c = Comparison(question, slug(config_label(first), first.replicate),
                       f"{first.group} ({config_label(first)})", second, "% test error",
                       mean([m.params for m in made if m.params]) if any(
                           m.params for m in made) else None)
        for m in made:
            prune = by_id.get(m.prune_run_id)
            if prune is None or m.test_error is None or not m.params:
                continue
            pruned = interpolate(test_curve(prune), m.params)
            if pruned is None:
                continue
            c.first_values.append(m.test_error)
            c.second_values.append(pruned)
            c.seeds.append(m.seed)
            c.run_ids += [m.run_id, prune.run_id]
        paired = [m for m in made if m.run_id in c.run_ids]
        sources = [by_id[m.prune_run_id] for m in paired]
        c.first_budget = budget_text(paired)
        c.second_budget = budget_text(sources, [m.params for m in paired])
        if c.first_values:
            _finish(c, paired_difference(c.first_values, c.second_values), first_word,
                    "pruned")
        out.append(c)
    return out


AS_PRUNED = " (as pruned, before extra fine-tuning)"


def scratch_vs_pruned(records: list[RunRecord]) -> list[Comparison]:
    """Question 2 both ways: against the network as pruned (its curve at the scratch run's
    size), and against the same network fine-tuned on after pruning."""
    return (_paired_with_prune(records, "scratch", 2, "from scratch", AS_PRUNED)
            + scratch_vs_finetuned(records))


def scratch_vs_finetuned(records: list[RunRecord]) -> list[Comparison]:
    """Question 2 at a stated budget: each scratch configuration against each fine-tune
    configuration of the same prune configuration and prune count, paired by seed (the
    scratch run and the fine-tune run of one prune run). A fine-tune run given Scratch-E's
    epochs makes it a comparison at equal epochs."""
    by_id = {r.run_id: r for r in records}
    out = []
    tuned_groups = replicates(records, "finetune")
    for made in replicates(records, "scratch"):
        for tuned in tuned_groups:
            pairs = _pairs(made, tuned)
            if not pairs:
                continue
            first, second = made[0], tuned[0]
            c = Comparison(2, slug(f"{config_label(first)}_vs_{config_label(second)}",
                                   first.replicate, second.replicate),
                           f"{first.group} ({config_label(first)})",
                           f"{second.group} ({config_label(second)})", "% test error",
                           mean([m.params for m, _ in pairs if m.params] or [0]) or None)
            for m, t in pairs:
                c.first_values.append(m.test_error)
                c.second_values.append(t.test_error)
                c.seeds.append(m.seed)
                c.run_ids += [m.run_id, t.run_id]
            c.first_budget = budget_text([m for m, _ in pairs])
            c.second_budget = budget_text([t for _, t in pairs])
            scratch_epochs = [_train_epochs(m) for m, _ in pairs]
            tuned_epochs = [_train_epochs(t) for _, t in pairs]
            if all(a is not None and b is not None and math.isclose(a, b)
                   for a, b in zip(scratch_epochs, tuned_epochs)):
                c.note = (f"equal epochs: {_epochs_text(scratch_epochs, '')} from scratch, "
                          f"as many fine-tuning after pruning")
            else:
                c.note = (f"{_epochs_text(scratch_epochs)} from scratch, "
                          f"{_epochs_text(tuned_epochs)} fine-tuning after pruning")
            if by_id.get(first.prune_run_id) is None:
                c.note += "; its prune run is not among the runs compared"
            out.append(_finish(c, paired_difference(c.first_values, c.second_values),
                               "from scratch", "fine-tuned"))
    return out


def _pairs(made: list[RunRecord], tuned: list[RunRecord]) -> list[tuple[RunRecord, RunRecord]]:
    """A scratch run and a fine-tune run of one prune run, one prune count and one seed; each
    run in one pair at most."""
    pairs, used = [], set()
    for m in made:
        for t in tuned:
            if (t.run_id not in used and m.prune_run_id and m.prune_run_id == t.prune_run_id
                    and m.prunes is not None and m.prunes == t.prunes and m.seed == t.seed
                    and m.test_error is not None and t.test_error is not None):
                pairs.append((m, t))
                used.add(t.run_id)
                break
    return pairs


def _train_epochs(record: RunRecord) -> float | None:
    """The epochs of this run's own training (a finetune run's without what came before)."""
    return record.own_epochs if record.stage == "finetune" else record.epochs


def _epochs_text(values: list[float | None], unit: str = " epochs") -> str:
    known = sorted({round(v, 6) for v in values if v is not None})
    return "/".join(f"{v:g}" for v in known) + unit if known else "unknown" + unit


def family_vs_pruned(records: list[RunRecord]) -> list[Comparison]:
    return _paired_with_prune(records, "family-member", 3, "family")


def latency_pruned_vs_reduced(records: list[RunRecord]) -> list[Comparison]:
    """Question 4: evaluate runs that timed a pruned network in turn with a reduced one."""
    by_id = {r.run_id: r for r in records}
    out = []
    timed = [r for r in records if r.stage == "evaluate" and r.matched_run_id]
    for runs in _timed_pairs(timed, by_id):
        batches = sorted({1} | {r.batch_size for r in runs if r.batch_size}
                         | {int(k.split("_b")[1]) for r in runs for k in r.latency
                            if k.startswith("compressed_b")})
        matched = by_id.get(runs[0].matched_run_id)
        source = by_id.get(runs[0].source_run_id)
        second = (f"{matched.group} ({matched.spec.name})" if matched is not None
                  and matched.spec is not None else "reduced network")
        first = source.group if source is not None else "pruned network"
        for bs in batches:
            c = Comparison(4, slug(f"{config_label(runs[0])}_b{bs}", runs[0].replicate),
                           f"{first}, batch {bs}",
                           second, "ms", mean([r.params for r in runs if r.params] or [0]))
            for r in runs:
                a, b = r.latency.get(f"compressed_b{bs}"), r.latency.get(f"matched_b{bs}")
                if a is None or b is None:
                    continue
                c.first_values.append(a)
                c.second_values.append(b)
                c.seeds.append(r.seed)
                c.run_ids.append(r.run_id)
            sizes = [(r.params, r.matched_params) for r in runs if r.params and r.matched_params]
            if sizes:
                c.note = (f"{mean([a for a, _ in sizes]):,.0f} params pruned, "
                          f"{mean([b for _, b in sizes]):,.0f} reduced")
            if c.first_values:
                _finish(c, paired_difference(c.first_values, c.second_values), "pruned",
                        "reduced", better="faster")
            else:
                c.verdict = "no latency measured (refused on a busy machine)"
            out.append(c)
    return out


def _timed_pairs(timed: list[RunRecord], by_id: dict[str, RunRecord]) -> list[list[RunRecord]]:
    """Evaluate runs grouped by what they timed (the pruned network's and the reduced one's
    configurations, the batch, the device, a checkpoint asked for), one per seed: seeds whose
    pruned networks reached other sizes, each timed beside the reduced network nearest its own,
    are replicates of one comparison, whatever their own keys. An evaluation whose sources are
    not among the records stands on its own key."""
    def configuration(r: RunRecord) -> str:
        source, matched = by_id.get(r.source_run_id), by_id.get(r.matched_run_id)
        if source is None or matched is None:
            return r.replicate
        return "|".join((source.replicate, matched.replicate, str(r.batch_size), r.device,
                         str(r.prunes)))
    return replicate_groups(timed, configuration)


def answer_metrics(answers: list[Answer]) -> dict[str, float]:
    """Each comparison's difference, interval and n as metrics of the compare run, so MLflow's
    compare view lines them up across studies."""
    metrics = {}
    for answer in answers:
        for c in answer.comparisons:
            if c.difference is None:
                continue
            stem = f"q{c.question}_{c.name}"
            metrics[f"{stem}_diff"] = c.difference.value
            metrics[f"{stem}_n"] = float(c.difference.n)
            if c.difference.has_interval:
                metrics[f"{stem}_low"] = c.difference.low
                metrics[f"{stem}_high"] = c.difference.high
    return metrics


def answers_markdown(answers: list[Answer]) -> str:
    """The answers as a run description (markdown): each question, its verdicts counted, and
    each comparison's difference with its interval."""
    lines = []
    for a in answers:
        lines.append(f"{a.question}. **{a.text}** {a.summary}.")
        for c in a.comparisons:
            at = f" at {c.at_params:,.0f} params" if c.at_params else ""
            d = c.difference
            if d is not None and d.has_interval:
                figure = f"{d.value:+.2f} {c.unit} [{d.low:+.2f}, {d.high:+.2f}], n={d.n}: "
            elif d is not None:
                figure = f"{d.value:+.2f} {c.unit}, n={d.n}: "
            else:
                figure = ""
            trained = (f" (training: {c.first_budget or '?'} vs {c.second_budget or '?'})"
                       if c.first_budget or c.second_budget else "")
            lines.append(f"   - {c.title}{at}: {figure}{c.verdict}{trained}")
    return "\n".join(lines)


# -- the leaderboard: criteria at fewer MACs -----------------------------------------------------

@dataclass
class BoardRow:
    """One criterion at one MACs reduction, over seeds: its pruned network's test error at the
    checkpoint nearest the target, the same architectures from scratch, and the uniform-width
    network nearest the target's MACs."""
    criterion: str
    reduction: float
    base: str = ""                  # the base configuration it pruned (its replicate key)
    network: str = ""               # that base's network and data
    config: str = ""                # the prune configuration (its replicate key) and name
    label: str = ""
    seeds: list[int | None] = field(default_factory=list)
    errors: list[float] = field(default_factory=list)
    reached: list[float] = field(default_factory=list)     # each checkpoint's actual reduction
    scratch: list[float] = field(default_factory=list)
    uniform: float | None = None
    uniform_reduction: float | None = None
    run_ids: list[str] = field(default_factory=list)

    def interval(self) -> tuple[float, float | None, float | None]:
        """The mean error and its 95% t interval (none from one seed or no spread)."""
        from mlprunes.report.stats import t_quantile

        m = mean(self.errors)
        if len(self.errors) < 2 or std(self.errors) == 0:
            return m, None, None
        half = t_quantile(len(self.errors) - 1) * std(self.errors) / len(self.errors) ** 0.5
        return m, m - half, m + half

    def to_dict(self) -> dict[str, Any]:
        m, low, high = self.interval()
        return {**asdict(self), "mean": m, "low": low, "high": high,
                "scratch_mean": mean(self.scratch) if self.scratch else None}


def at_reduction(record: RunRecord, reduction: float) -> tuple[float, float] | None:
    """A prune run's (test error, reduction reached) at its checkpoint nearest its base's MACs
    over `reduction`, read at a checkpoint, never the best of several; None when no checkpoint
    comes within NOT_REACHED of it."""
    curve = [p for p in record.test_curve if p.flops]
    if len(curve) < 2 or curve[0].prunes != 0:   # no base point (its run deleted): no scale
        return None
    base = curve[0].flops
    target = base / reduction
    point = min(curve[1:], key=lambda p: abs(math.log(p.flops / target)))
    if max(point.flops / target, target / point.flops) > NOT_REACHED:
        return None
    return point.error, base / point.flops


def leaderboard(records: list[RunRecord]) -> list[BoardRow]:
    """Every prune configuration at each reduction (the scratch runs' `macs_reduction`s, or
    2x, 4x and 8x), with its scratch runs at that reduction and the uniform-width baseline of
    its data nearest the target."""
    by_id = {r.run_id: r for r in records}
    named = sorted({r.macs_reduction for r in records
                    if r.stage == "scratch" and r.macs_reduction})
    reductions = tuple(named) or REDUCTIONS
    uniform = [r for r in records if r.stage == "train" and r.group in (
        "Bottleneck", "Uniform width") and r.flops and r.test_error is not None]
    rows = []
    for runs in replicates(records, "prune"):
        base = by_id.get(runs[0].base_run_id)
        for reduction in reductions:
            row = BoardRow(runs[0].criterion, reduction,
                           base.replicate if base is not None else "",
                           _network(base) + "|" + runs[0].data, runs[0].replicate,
                           config_label(runs[0]))
            for r in runs:
                read = at_reduction(r, reduction)
                if read is None:
                    continue
                row.errors.append(read[0])
                row.reached.append(read[1])
                row.seeds.append(r.seed)
                row.run_ids.append(r.run_id)
            ids = set(row.run_ids)
            row.scratch = [s.test_error for s in records if s.stage == "scratch"
                           and s.prune_run_id in ids and s.test_error is not None
                           and s.macs_reduction == reduction and s.budget == "scratch-e"
                           and s.init == "fresh"]
            if base is not None and base.flops:
                target = base.flops / reduction
                near = [u for u in uniform if u.data == base.data and _same_kind(u, base)
                        and max(u.flops / target, target / u.flops) <= NOT_REACHED]
                if near:
                    best = min(near, key=lambda u: abs(math.log(u.flops / target)))
                    same = [u.test_error for u in near if u.replicate == best.replicate]
                    row.uniform, row.uniform_reduction = mean(same), base.flops / best.flops
            if row.errors:
                rows.append(row)
    return rows


def _network(base: RunRecord | None) -> str:
    return base.spec.name if base is not None and base.spec is not None else ""


def _same_kind(uniform: RunRecord, base: RunRecord) -> bool:
    """A uniform network of the base's kind: its family and depth (a traced network: its
    builder), so that one study's baselines are not another network's."""
    a, b = uniform.spec, base.spec
    if a is None or b is None:
        return True
    return a.family == b.family and a.depth == b.depth


def leaderboard_vs_random(records: list[RunRecord]) -> list[Comparison]:
    """Question 5: each criterion against random pruning at each reduction, paired by seed
    (the two prune runs of one base), the leaderboard row's figures in the note."""
    rows = leaderboard(records)
    # Random pruning of the same base; else of a base of the same network on the same data
    # (bn-scale prunes a base trained for it, beside the plain base random prunes).
    randoms = {(row.base, row.reduction): row for row in rows if row.criterion == "random"}
    randoms_on = {(row.network, row.reduction): row for row in rows
                  if row.criterion == "random"}
    out = []
    for row in rows:
        if row.criterion == "random":
            continue
        m, low, high = row.interval()
        spread = f" [{low:.2f}, {high:.2f}]" if low is not None else ""
        note = (f"{criterion_name(row.criterion)} {m:.2f}%{spread} at "
                f"{mean(row.reached):.2f}x fewer MACs")
        if row.scratch:
            note += f"; its architectures from scratch {mean(row.scratch):.2f}%"
        if row.uniform is not None:
            note += f"; uniform width {row.uniform:.2f}% at {row.uniform_reduction:.2f}x"
        c = Comparison(5, slug(f"{row.criterion}_x{row.reduction:g}", row.config,
                               f"{row.reduction:g}"),
                       f"{criterion_name(row.criterion)} at {row.reduction:g}x fewer MACs "
                       f"({row.label})",
                       f"Random at {row.reduction:g}x fewer MACs", "% test error", None,
                       note=note)
        rand = randoms.get((row.base, row.reduction)) or randoms_on.get((row.network,
                                                                          row.reduction))
        if rand is not None:
            theirs = dict(zip(rand.seeds, rand.errors))
            for seed, error, run_id in zip(row.seeds, row.errors, row.run_ids):
                if seed in theirs:
                    c.first_values.append(error)
                    c.second_values.append(theirs[seed])
                    c.seeds.append(seed)
                    c.run_ids.append(run_id)
        if c.first_values:
            _finish(c, paired_difference(c.first_values, c.second_values), row.criterion,
                    "random")
        else:
            c.verdict = "no random prune run to compare with"
        out.append(c)
    return out

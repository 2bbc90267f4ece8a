"""The study's four questions, answered at matched size from its runs' records (no MLflow).

Replicates (runs that differ only in seed) are pooled; each comparison gives a difference of
means with a 95% confidence interval and a verdict:

1. pruned + fine-tuned against each reduced baseline, the pruning test curve read at the
   baseline's parameter count (independent groups: Welch's interval);
2. each architecture trained from scratch against the network it was pruned to, read on that
   prune run's test curve at its size (paired by seed: one prune run makes both);
3. each family member against its prune run's test curve at the member's size (paired);
4. measured latency of the compressed pruned network against the reduced network it was timed
   in turn with, at each batch size (paired: one evaluate run times both).

Differences are first minus second as titled: negative error differences favour the first.
"""

from __future__ import annotations

import hashlib
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
}
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
    return [Answer(1, reduced_vs_pruned(records)), Answer(2, scratch_vs_pruned(records)),
            Answer(3, family_vs_pruned(records)), Answer(4, latency_pruned_vs_reduced(records))]


def _finish(c: Comparison, difference: Difference, first_word: str, second_word: str,
            better: str = "better") -> Comparison:
    c.difference = difference
    c.verdict = verdict(difference, first_word, second_word, better)
    return c


def reduced_vs_pruned(records: list[RunRecord]) -> list[Comparison]:
    """Question 1: each prune configuration against each reduced baseline of its network's
    kind, at the baseline's parameter count."""
    out = []
    reduced = replicates([r for r in records if is_reduced(r)], "train")
    for pruned in replicates(records, "prune"):
        kind = next((p.spec for p in pruned if p.spec is not None), None)
        for baseline in reduced:
            spec = baseline[0].spec
            if baseline[0].data != pruned[0].data:  # another dataset or image size
                continue
            if kind is not None and spec is not None and (
                    spec.num_classes != kind.num_classes or (
                        # the seed's families compare within a family; a traced network with
                        # any smaller network of its study (another depth or builder)
                        spec.family != kind.family and not (
                            isinstance(spec, GraphSpec) and isinstance(kind, GraphSpec)))):
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
            if any(v is None for v in read):  # a mean over the seeds that got small enough
                reached = sum(v is not None for v in read)     # would flatter the curve
                c.note = f"{reached} of {len(read)} prune runs reach this size"
            elif c.second_values:
                c.first_values = read
                _finish(c, welch_difference(c.first_values, c.second_values), "pruned",
                        "reduced")
            out.append(c)
    return out


def _paired_with_prune(records: list[RunRecord], stage: str, question: int,
                       first_word: str) -> list[Comparison]:
    """Questions 2 and 3: each network made from a prune run against that prune run's test
    curve at the network's size, paired by seed."""
    by_id = {r.run_id: r for r in records}
    out = []
    for made in replicates(records, stage):
        first = made[0]
        source = by_id.get(first.prune_run_id)
        second = source.group if source is not None else (
            f"{criterion_name(first.criterion)} prune + fine-tune")
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
        if c.first_values:
            _finish(c, paired_difference(c.first_values, c.second_values), first_word,
                    "pruned")
        out.append(c)
    return out


def scratch_vs_pruned(records: list[RunRecord]) -> list[Comparison]:
    return _paired_with_prune(records, "scratch", 2, "from scratch")


def family_vs_pruned(records: list[RunRecord]) -> list[Comparison]:
    return _paired_with_prune(records, "family-member", 3, "family")


def latency_pruned_vs_reduced(records: list[RunRecord]) -> list[Comparison]:
    """Question 4: evaluate runs that timed a pruned network in turn with a reduced one."""
    by_id = {r.run_id: r for r in records}
    out = []
    timed = [r for r in records if r.stage == "evaluate" and r.matched_run_id]
    for runs in replicates(timed, "evaluate"):
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
            lines.append(f"   - {c.title}{at}: {figure}{c.verdict}")
    return "\n".join(lines)

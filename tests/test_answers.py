"""Means, spreads, intervals, curve interpolation and the four answers, on numbers worked out
by hand and runs built in the test with known values."""

import math

import pytest

from mlprunes import arch
from mlprunes.report.answers import (NO_INTERVAL, NO_SPREAD, NOT_SIGNIFICANT, OUT_OF_RANGE,
                                     answer_all, answer_metrics)
from mlprunes.report.records import CurvePoint, RunRecord, assign_groups
from mlprunes.report.stats import (common_grid, interpolate, mean, mean_curve,
                                   paired_difference, std, welch_difference)
from mlprunes.report.table import configurations

T2 = 4.302652729749462          # Student's t, 97.5% quantile, 2 degrees of freedom


def test_mean_and_sample_std():
    assert mean([1, 2, 3, 4]) == 2.5
    assert std([1, 2, 3, 4]) == pytest.approx(math.sqrt(5 / 3))  # squares 2.25+.25+.25+2.25
    assert std([7.0]) == 0.0


def test_paired_interval_by_hand():
    # differences 1, 2, 3: mean 2, sd 1, half-width t(2) * 1 / sqrt(3)
    d = paired_difference([10, 12, 14], [9, 10, 11])
    assert (d.value, d.n, d.paired) == (2, 3, True)
    assert d.low == pytest.approx(2 - T2 / math.sqrt(3))
    assert d.high == pytest.approx(2 + T2 / math.sqrt(3))
    assert not d.significant()          # [-0.48, 4.48] holds zero
    tight = paired_difference([12, 12.2, 11.8], [10, 10, 10])   # sd 0.2
    assert tight.low == pytest.approx(2 - T2 * 0.2 / math.sqrt(3))
    assert tight.significant()
    assert not paired_difference([3.0], [1.0]).has_interval


def test_welch_interval_by_hand():
    # means 2 and 5.5; variances of the means 1/3 and (5/3)/4; Welch-Satterthwaite
    # df = 0.75^2 / ((1/3)^2/2 + (5/12)^2/3) = 4.959..., whose t quantile is 2.57696
    d = welch_difference([1, 2, 3], [4, 5, 6, 7])
    assert d.value == -3.5 and d.n == 3 and not d.paired
    assert d.high - d.value == pytest.approx(2.5769584 * math.sqrt(0.75), rel=1e-6)
    assert d.significant()
    same = welch_difference([2, 2], [3, 3])       # no spread: nothing to size an interval
    assert same.value == -1 and not same.has_interval and not same.significant()
    assert not paired_difference([3, 4], [2, 3]).has_interval
    assert not welch_difference([1.0], [2.0, 3.0]).has_interval


def test_interpolation_on_a_log_scale_and_no_extrapolation():
    curve = [(1000, 20.0), (100, 10.0)]
    assert interpolate(curve, math.sqrt(100 * 1000)) == pytest.approx(15.0)
    assert interpolate(curve, 550, log_x=False) == pytest.approx(15.0)
    assert interpolate(curve, 100) == 10.0 and interpolate(curve, 1000) == 20.0
    assert interpolate(curve, 99) is None and interpolate(curve, 1001) is None


def test_mean_curve_covers_only_where_every_replicate_has_values():
    a = [(100, 10.0), (1000, 20.0)]
    b = [(200, 14.0), (2000, 24.0)]
    grid = common_grid([a, b], points=3)
    assert grid == pytest.approx([200, math.sqrt(200 * 1000), 1000])
    band = mean_curve([[(100, 10.0), (1000, 20.0)], [(100, 14.0), (1000, 24.0)]], points=2)
    assert band.xs == [100, 1000] and band.n == 2
    assert band.means == pytest.approx([12.0, 22.0])
    assert band.stds == pytest.approx([math.sqrt(8), math.sqrt(8)])


# -- the four answers on a study built by hand ------------------------------------------------

BASE = arch.wrn(16, 1)


def point(prunes, params, error):
    return CurvePoint(prunes, params, params * 2, error, 1.0)


def study(scratch_errors=(30.0, 33.0, 29.0), l1_scratch=(60.0, 61.0, 62.0)):
    """Three seeds of a base, a Fisher and an L1 prune run, a reduced width, a Fisher scratch
    run at 40k params, an L1 one, a one-seed family member and three matched evaluations."""
    records = []
    for s in range(3):
        base = RunRecord(f"base{s}", f"train-base-wrn-16-1-s{s}", "train", spec=BASE,
                         params=175_000, test_error=20.0 + s, seed=s, replicate="BASE")
        # Fisher: test error 20 at 160k params, 30 at 40k: at 80k (the reduced width, half way
        # on a log scale) it reads 25 + s.
        fisher = RunRecord(f"fisher{s}", f"prune-fisher-s{s}", "prune", criterion="fisher",
                           base_run_id=base.run_id, seed=s, replicate="FISHER",
                           test_curve=[point(0, 160_000, 20.0 + s), point(100, 40_000, 30.0 + s)])
        l1 = RunRecord(f"l1{s}", f"prune-l1-s{s}", "prune", criterion="l1",
                       base_run_id=base.run_id, seed=s, replicate="L1",
                       test_curve=[point(0, 160_000, 20.0), point(100, 40_000, 70.0)])
        width = RunRecord(f"width{s}", f"train-reduced-width0.5-s{s}", "train",
                          spec=arch.wrn(16, 0.5), params=80_000, test_error=[21.0, 22.0, 23.0][s],
                          seed=s, replicate="WIDTH")
        scratch = RunRecord(f"scratch{s}", "scratch-fisher-p100", "scratch", criterion="fisher",
                            prune_run_id=fisher.run_id, params=40_000,
                            test_error=scratch_errors[s], seed=s, replicate="SCRATCH")
        scratch_l1 = RunRecord(f"scratchl1{s}", "scratch-l1-p100", "scratch", criterion="l1",
                               prune_run_id=l1.run_id, params=40_000, test_error=l1_scratch[s],
                               seed=s, replicate="SCRATCH-L1")
        timed = RunRecord(f"eval{s}", f"evaluate-s{s}", "evaluate", source_run_id=fisher.run_id,
                          matched_run_id=width.run_id, params=79_000, matched_params=80_000,
                          latency={"compressed_b1": 2.0 + 0.1 * s, "matched_b1": 1.0 + 0.05 * s,
                                   "compressed_b64": 9.0 + s, "matched_b64": 9.0 - s},
                          seed=s, replicate="EVAL")
        records += [base, fisher, l1, width, scratch, scratch_l1, timed]
    records.append(RunRecord("member0", "member-60000", "family-member", criterion="fisher",
                             prune_run_id="fisher0", params=80_000, test_error=24.0, seed=0,
                             replicate="MEMBER"))
    return assign_groups(records)


def by_first(answer, text):
    return next(c for c in answer.comparisons if text in c.first)


def test_question_1_reads_the_pruning_curve_at_the_baselines_size():
    q1 = answer_all(study())[0]
    fisher = by_first(q1, "Fisher")
    assert fisher.at_params == 80_000
    assert fisher.first_values == pytest.approx([25.0, 26.0, 27.0])   # 20+s .. 30+s, half way
    assert fisher.second_values == [21.0, 22.0, 23.0]
    assert fisher.difference.value == pytest.approx(4.0)
    assert not fisher.difference.paired                 # independent groups: Welch
    # both sides sd 1, n 3: se sqrt(2/3), df 4, t(4) = 2.776445
    assert fisher.difference.low == pytest.approx(4 - 2.7764451 * math.sqrt(2 / 3))
    assert fisher.verdict == "reduced better"
    l1 = by_first(q1, "L1")
    assert l1.first_values == pytest.approx([45.0] * 3)


def test_question_2_pairs_each_scratch_run_with_its_own_prune_run():
    q2 = answer_all(study())[1]
    fisher = by_first(q2, "Fisher")
    assert fisher.second_values == pytest.approx([30.0, 31.0, 32.0])  # its seed's curve at 40k
    assert fisher.first_values == [30.0, 33.0, 29.0]
    assert fisher.difference.paired and fisher.difference.value == pytest.approx(-1 / 3)
    assert fisher.verdict == NOT_SIGNIFICANT            # differences 0, 2, -3
    l1 = by_first(q2, "L1")                             # paired with the L1 curve (70 at 40k)
    assert l1.second_values == pytest.approx([70.0] * 3)
    assert l1.verdict == "from scratch better"


def test_question_3_with_one_seed_has_no_interval():
    q3 = answer_all(study())[2]
    (member,) = q3.comparisons
    assert member.first_values == [24.0] and member.second_values == pytest.approx([25.0])
    assert member.difference.value == pytest.approx(-1.0)
    assert member.verdict == NO_INTERVAL


def test_question_4_compares_latency_timed_in_turn_at_each_batch_size():
    q4 = answer_all(study())[3]
    b1, b64 = sorted(q4.comparisons, key=lambda c: len(c.first))
    assert b1.first.endswith("batch 1") and b64.first.endswith("batch 64")
    assert b1.difference.value == pytest.approx(1.05) and b1.verdict == "reduced faster"
    assert b64.first_values == [9.0, 10.0, 11.0] and b64.second_values == [9.0, 8.0, 7.0]
    assert b64.verdict == NOT_SIGNIFICANT               # differences 0, 2, 4
    assert "79,000 params pruned, 80,000 reduced" in b1.note


def test_a_seed_run_twice_counts_once_and_other_data_is_not_compared():
    records = study()
    again = RunRecord("width0-again", "train-reduced-width0.5-s0", "train",
                      spec=arch.wrn(16, 0.5), params=80_000, test_error=50.0, seed=0,
                      replicate="WIDTH", start_time=10)
    other = RunRecord("cifar-width", "train-reduced-width0.5", "train", spec=arch.wrn(16, 0.5),
                      params=80_000, test_error=5.0, seed=0, replicate="CIFAR",
                      data="cifar10:32")
    q1 = answer_all(assign_groups(records + [again, other]))[0]
    fisher = [c for c in q1.comparisons if "Fisher" in c.first]
    assert len(fisher) == 1                       # the CIFAR baseline is not the shapes curve's
    assert fisher[0].second_values == [50.0, 22.0, 23.0]   # seed 0's newest run, once


def test_a_baseline_only_some_seeds_reach_is_not_compared():
    records = study()
    for r in records:
        if r.run_id == "fisher2":
            r.test_curve = [point(0, 160_000, 22.0), point(100, 90_000, 30.0)]  # stops early
    fisher = by_first(answer_all(records)[0], "Fisher")
    assert fisher.verdict == OUT_OF_RANGE and fisher.note == "2 of 3 prune runs reach this size"


def test_no_spread_over_seeds_has_no_interval():
    records = study(scratch_errors=(31.0, 32.0, 33.0))   # each 1 point above its pruned network
    fisher = by_first(answer_all(records)[1], "Fisher")
    assert fisher.difference.value == pytest.approx(1.0) and fisher.verdict == NO_SPREAD


def test_a_baseline_outside_the_pruning_curve_is_not_compared():
    records = study()
    for r in records:
        if r.replicate == "WIDTH":
            r.params = 10_000                            # smaller than any pruned network
    fisher = by_first(answer_all(records)[0], "Fisher")
    assert fisher.first_values == [] and fisher.verdict == OUT_OF_RANGE
    assert fisher.difference is None


def test_answers_become_metrics_and_configurations_pool_replicates():
    answers = answer_all(study())
    metrics = answer_metrics(answers)
    stem = next(k for k in metrics if k.startswith("q1_fisher_vs_")).rsplit("_", 1)[0]
    assert metrics[f"{stem}_diff"] == pytest.approx(4.0) and metrics[f"{stem}_n"] == 3
    assert metrics[f"{stem}_low"] < 4 < metrics[f"{stem}_high"]
    rows = {row["configuration"]: row for row in configurations(study())}
    width = rows["train-reduced-width0.5"]
    assert (width["n"], width["seeds"]) == (3, "0,1,2")
    assert width["test_error_mean"] == 22.0 and width["test_error_std"] == 1.0


# -- fine-tuned after pruning, and seeds of other sizes ---------------------------------------

def with_finetune(tuned_errors=(27.0, 29.0, 24.0), budget="scratch-e", epochs=30.0):
    """The hand-built study with the Fisher scratch runs at 100 prunes (30 epochs), and the
    same network of each seed fine-tuned on (test errors as given)."""
    records = study()
    for r in records:
        if r.stage == "scratch":
            r.prunes, r.epochs, r.train_macs = 100, 30.0, 1e12
        if r.stage == "prune":
            r.test_curve = [CurvePoint(p.prunes, p.params, p.flops, p.error, 30 + p.prunes / 10,
                                       2e12 + p.prunes * 1e10) for p in r.test_curve]
    for s in range(3):
        records.append(RunRecord(f"tuned{s}", f"finetune-e-fisher-p100-s{s}", "finetune",
                                 criterion="fisher", budget=budget, prune_run_id=f"fisher{s}",
                                 prunes=100, params=40_000, test_error=tuned_errors[s], seed=s,
                                 epochs=40.0 + epochs, prior_epochs=40.0, own_epochs=epochs,
                                 train_macs=4e12,
                                 replicate="TUNED"))
    return assign_groups(records)


def test_question_2_also_pairs_scratch_with_the_fine_tuned_network_at_equal_epochs():
    q2 = answer_all(with_finetune())[1]
    as_pruned = next(c for c in q2.comparisons if "Fisher arch" in c.first
                     and "as pruned" in c.second)
    assert as_pruned.second_values == pytest.approx([30.0, 31.0, 32.0])   # kept as it was
    assert as_pruned.second.endswith("(as pruned, before extra fine-tuning)")
    # Read at 40k params on the curve: 30 + 100/10 epochs, 2e12 + 100 x 1e10 MACs.
    assert as_pruned.second_budget == "40 epochs, 3 TMACs"
    tuned = next(c for c in q2.comparisons if "fine-tuned" in c.second)
    assert tuned.first.startswith("Fisher arch. from scratch")
    assert tuned.second.startswith("Fisher pruned, then fine-tuned (Scratch-E's epochs)")
    assert tuned.first_values == [30.0, 33.0, 29.0] and tuned.second_values == [27.0, 29.0, 24.0]
    assert tuned.seeds == [0, 1, 2] and tuned.difference.paired
    # differences 3, 4, 5: mean 4, sd 1
    assert tuned.difference.value == pytest.approx(4.0)
    assert tuned.difference.low == pytest.approx(4 - T2 / math.sqrt(3))
    assert tuned.verdict == "fine-tuned better"
    assert tuned.note == "equal epochs: 30 from scratch, as many fine-tuning after pruning"
    assert tuned.first_budget == "30 epochs, 1 TMACs"
    assert tuned.second_budget == "70 epochs, 4 TMACs"
    assert tuned.name != as_pruned.name


def test_question_2_says_when_the_epochs_differ_and_pairs_only_one_prune_run():
    records = with_finetune(budget="recipe", epochs=40.0)
    records = [r for r in records if r.run_id != "tuned2"]
    records.append(RunRecord("tuned-other", "finetune-fisher-p100-s2", "finetune",
                             criterion="fisher", budget="recipe", prune_run_id="fisher2",
                             prunes=80, params=50_000, test_error=10.0, seed=2, epochs=80.0,
                             prior_epochs=40.0, own_epochs=40.0, replicate="TUNED"))
    tuned = next(c for c in answer_all(assign_groups(records))[1].comparisons
                 if "fine-tuned" in c.second)
    assert tuned.seeds == [0, 1]                  # seed 2's fine-tune run is of 80 prunes
    assert tuned.note == "30 epochs from scratch, 40 epochs fine-tuning after pruning"


def test_question_1_takes_fine_tuned_networks_against_baselines_at_least_their_size():
    q1 = answer_all(with_finetune(tuned_errors=(27.0, 28.0, 29.0)))[0]
    tuned = next(c for c in q1.comparisons if c.first.startswith("Fisher pruned, then"))
    assert tuned.second.startswith("Reduced width")
    assert tuned.first_values == [27.0, 28.0, 29.0] and tuned.second_values == [21.0, 22.0, 23.0]
    assert not tuned.difference.paired and tuned.verdict == "reduced better"
    assert tuned.note == "40,000 params fine-tuned, 80,000 reduced"
    records = with_finetune()
    for r in records:
        if r.stage == "finetune":
            r.params = 90_000                      # larger than the baseline: not compared
    assert not [c for c in answer_all(records)[0].comparisons
                if c.first.startswith("Fisher pruned, then")]


def test_question_4_pools_seeds_whose_pruned_networks_reached_other_sizes():
    records = study()
    for s, r in enumerate(r for r in records if r.stage == "evaluate"):
        r.params, r.matched_params = [42_246, 41_526, 40_230][s], [45_210, 41_000, 39_500][s]
        # each its own evaluate key, as when a busy machine's evaluation dropped it
        r.replicate = r.run_id
    b1, b64 = sorted(answer_all(records)[3].comparisons, key=lambda c: len(c.first))
    assert b1.seeds == [0, 1, 2] and b1.difference.n == 3 and b1.difference.has_interval
    assert b64.first_values == [9.0, 10.0, 11.0]
    assert "41,334 params pruned, 41,903 reduced" in b1.note


def test_equal_epochs_are_said_whatever_the_float_sums_and_pairs_keep_to_one_seed():
    records = with_finetune(epochs=0.1 + 0.2)        # own epochs not exactly 0.3
    for r in records:
        if r.stage == "scratch":
            r.epochs = 0.3
        if r.stage == "finetune":
            r.epochs = 0.7 + 0.1 + 0.2                # prior 40 + 0.3, summed otherwise
    tuned = next(c for c in answer_all(records)[1].comparisons if "fine-tuned" in c.second)
    assert tuned.note == "equal epochs: 0.3 from scratch, as many fine-tuning after pruning"
    # Seed 0's prune run fine-tuned again under seed 1 is not seed 0's scratch run's pair.
    records = [r for r in with_finetune() if r.run_id != "tuned1"]
    records.append(RunRecord("tuned-x", "finetune-e-fisher-p100-s1", "finetune",
                             criterion="fisher", budget="scratch-e", prune_run_id="fisher0",
                             prunes=100, params=40_000, test_error=5.0, seed=1, epochs=70.0,
                             own_epochs=30.0, replicate="TUNED"))
    tuned = next(c for c in answer_all(assign_groups(records))[1].comparisons
                 if "fine-tuned" in c.second)
    assert tuned.seeds == [0, 2] and 5.0 not in tuned.second_values


# -- the leaderboard (question 5) ----------------------------------------------------------------

def leaderboard_study():
    """Two seeds of a base (1,000 MACs), a Fisher and a random prune run whose checkpoints
    reach 2x and 4x fewer MACs, scratch runs of Fisher's architectures at 2x, and a uniform
    network at 480 MACs."""
    records = []
    for s in range(2):
        base = RunRecord(f"base{s}", f"train-base-s{s}", "train", spec=BASE, params=175_000,
                         flops=1000, test_error=20.0, seed=s, replicate="BASE")
        curves = {"fisher": [30.0 + s, 40.0 + s], "random": [33.0 + 2 * s, 50.0 + s]}
        for criterion, (at2, at4) in curves.items():
            records.append(RunRecord(
                f"{criterion}{s}", f"prune-{criterion}-s{s}", "prune", criterion=criterion,
                base_run_id=base.run_id, seed=s, replicate=criterion.upper(), test_curve=[
                    CurvePoint(0, 175_000, 1000, 20.0, 30.0),
                    CurvePoint(10, 120_000, 700, 25.0, 31.0),
                    # the checkpoint nearest 500 MACs, then one nearest 250
                    CurvePoint(20, 80_000, 520, at2, 32.0), CurvePoint(30, 50_000, 330, 35.0, 33.0),
                    CurvePoint(40, 30_000, 240, at4, 34.0),
                    CurvePoint(50, 20_000, 90, 99.0, 35.0)]))
        records.append(RunRecord(f"scratch{s}", "scratch-fisher-x2", "scratch",
                                 criterion="fisher", budget="scratch-e", prune_run_id=f"fisher{s}",
                                 macs_reduction=2.0, params=80_000, flops=520,
                                 test_error=[28.0, 27.0][s], seed=s, replicate="SCRATCH"))
        if s == 0:   # a scratch run at 4x too: the reductions the study names are 2 and 4
            records.append(RunRecord("scratch4", "scratch-fisher-x4", "scratch",
                                     criterion="fisher", budget="scratch-e",
                                     prune_run_id="fisher0", macs_reduction=4.0, params=30_000,
                                     flops=240, test_error=36.0, seed=0, replicate="SCRATCH4"))
        records.append(RunRecord(f"uniform{s}", "train-reduced-bottle0.4", "train",
                                 spec=arch.wrn(16, 1, bottle=0.4), params=70_000, flops=480,
                                 test_error=[26.0, 24.0][s], seed=s, replicate="UNIFORM"))
        records.append(base)
    return assign_groups(records)


def test_the_leaderboard_reads_each_criterion_at_the_checkpoint_nearest_each_reduction():
    from mlprunes.report.answers import leaderboard

    rows = {(r.criterion, r.reduction): r for r in leaderboard(leaderboard_study())}
    fisher2 = rows[("fisher", 2.0)]
    assert fisher2.errors == [30.0, 31.0] and fisher2.seeds == [0, 1]
    assert fisher2.reached == pytest.approx([1000 / 520] * 2)
    m, low, high = fisher2.interval()
    assert m == 30.5 and low == pytest.approx(30.5 - 12.7062047 * 0.5)   # t(1), sd/sqrt(2)
    assert fisher2.scratch == [28.0, 27.0]
    assert fisher2.uniform == 25.0 and fisher2.uniform_reduction == pytest.approx(1000 / 480)
    assert rows[("fisher", 4.0)].errors == [40.0, 41.0]          # 240 MACs, not 330 nor 90
    assert rows[("fisher", 4.0)].scratch == [36.0]               # seed 0's alone
    assert rows[("fisher", 4.0)].uniform is None                 # 480 MACs: not near 250
    assert {r for _, r in rows} == {2.0, 4.0}                    # the reductions named
    from mlprunes.report.answers import at_reduction
    fisher0 = next(r for r in leaderboard_study() if r.run_id == "fisher0")
    assert at_reduction(fisher0, 10.0) == (99.0, pytest.approx(1000 / 90))  # 90 vs 100: near
    assert at_reduction(fisher0, 8.0) is None                   # 90 vs 125: beyond 1.2x
    fisher0.test_curve = fisher0.test_curve[1:]                 # its base's point gone
    assert at_reduction(fisher0, 2.0) is None


def test_question_5_pairs_each_criterion_with_random_by_seed():
    answers = answer_all(leaderboard_study())
    q5 = answers[4]
    assert q5.question == 5 and "criterion prunes best" in q5.text
    at2 = next(c for c in q5.comparisons if c.first == "Fisher at 2x fewer MACs (prune-fisher)")
    assert at2.second == "Random at 2x fewer MACs"
    assert at2.first_values == [30.0, 31.0] and at2.second_values == [33.0, 35.0]
    assert at2.difference.paired and at2.difference.value == pytest.approx(-3.5)
    assert "its architectures from scratch 27.50%" in at2.note
    assert "uniform width 25.00% at 2.08x" in at2.note
    assert not [c for c in q5.comparisons if c.first.startswith("Random")]
    # no prune run with a test curve: no leaderboard, no fifth answer
    assert len(answer_all([r for r in study() if r.stage != "prune"])) == 4

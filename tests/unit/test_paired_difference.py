"""The eval's paired comparison of the default with the best baseline: the mean difference per query, its
bootstrap interval and the randomization test's p-value."""

from __future__ import annotations

import pytest

from ragtrace_tools.evaluation import DEFAULT_SYSTEM, against_best_baseline, paired_difference


def test_the_same_scores_differ_by_nothing() -> None:
    scores = {f"q{i}": i / 10 for i in range(10)}

    result = paired_difference(scores, dict(scores), "same")

    assert (result.difference, result.low, result.high, result.p) == (0.0, 0.0, 0.0, 1.0)


def test_better_on_every_query_is_certain() -> None:
    baseline = {f"q{i}": 0.5 for i in range(30)}
    system = {q: 0.6 for q in baseline}

    result = paired_difference(system, baseline, "baseline")

    assert result.difference == pytest.approx(0.1) and result.low == pytest.approx(0.1)
    assert result.high == pytest.approx(0.1) and result.queries == 30
    # Only flipping every sign the same way reaches the observed mean: 2 in 2^30, never drawn.
    assert result.p < 0.001


def test_a_difference_within_the_noise_is_not_called_one() -> None:
    # 41 queries: 21 won by 0.5, 20 lost by 0.5: mean +0.0122, a split any coin gives.
    baseline = {f"q{i}": 0.5 for i in range(41)}
    system = {q: (1.0 if i < 21 else 0.0) for i, q in enumerate(baseline)}

    result = paired_difference(system, baseline, "baseline")

    assert result.difference == pytest.approx(0.5 / 41, abs=1e-4)
    assert result.low < 0 < result.high
    assert result.p > 0.5
    assert paired_difference(system, baseline, "baseline") == result  # the same in every run


def test_the_default_is_set_against_the_best_of_the_baselines() -> None:
    systems = {
        DEFAULT_SYSTEM: {"a": 0.7, "b": 0.5},
        "baseline weak": {"a": 0.1, "b": 0.1},
        "baseline strong": {"a": 0.8, "b": 0.6},
        "ragtrace vector": {"a": 1.0, "b": 1.0},  # not a baseline: never the one compared with
    }

    result = against_best_baseline(systems, ["baseline weak", "baseline strong"])

    assert result.baseline == "baseline strong"
    assert result.difference == pytest.approx(-0.1)

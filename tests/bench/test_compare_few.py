"""`bench compare` of one run a side whose timings have too few samples for the within-run rank test to reach alpha:
3 a side (checkpointing at smoke and quick size on CPU) give a smallest p of 0.1 at alpha 0.01. Such a row is "too
few", neither noisy nor same, never gates, and the summary, the page and the JSON name it where it moved."""

import html
import itertools
import json
import math

import numpy as np
import pytest
from scipy.stats import mannwhitneyu, rankdata

from bench.compare import compare
from bench.stats import TOO_FEW, _min_p, compare_samples
from tests.bench.test_compare import one
from tests.bench.test_compare_contended import LOAD
from tests.optional import needs
from tests.runs import write_run

# A 2 s sleep added to one checkpointing variant at smoke size on CPU: 3 samples a side, x9.09.
SLOW_BASE, SLOW_NEW = [228.4, 225.0, 231.0], [2076.0, 1900.0, 2200.0]


def case(variant: str, samples: list[float], **metrics) -> dict:
    return {"suite": "toy", "variant": variant, "params": {"n": 1},
            "metrics": {"step_time_ms": sorted(samples)[len(samples) // 2], **metrics},
            "samples": {"step_time_ms": samples}}


def smallest_p_by_every_split(b, n) -> float:
    """The smallest p of scipy's test over every way to deal the pooled values into sides of these sizes.

    For the same pooled values and side sizes the test's p depends on the split only through the first side's sum of
    (mid)ranks, its U statistic: scipy's test runs on one split of each rank sum that occurs, not on all C(18, 9)
    splits of the 9-a-side case (48620 runs of the test, a minute of CPU)."""
    pooled = np.concatenate([b, n])
    ranks = rankdata(pooled)
    splits = np.array(list(itertools.combinations(range(len(pooled)), len(b))))
    _, first = np.unique(ranks[splits].sum(axis=1).round(6), return_index=True)
    out = math.inf
    for chosen in splits[first]:
        mask = np.zeros(len(pooled), bool)
        mask[chosen] = True
        out = min(out, mannwhitneyu(pooled[mask], pooled[~mask], alternative="two-sided").pvalue)
    return out


@pytest.mark.parametrize("b, n, expected", [
    ([1.0, 2.0, 3.0], [4.0, 5.0, 6.0], 0.1),  # exact test: 2 / C(6, 3)
    ([1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0], 2 / 70),
    ([5.0, 1.0, 9.0, 3.0, 7.0], [2.0, 8.0, 4.0, 10.0, 6.0], 2 / 252),  # interleaved: the bound, not this p
    ([1.0, 2.0, 2.0], [4.0, 5.0, 6.0], None),  # a tie: the normal approximation with its tie correction
    ([1.0, 4.0, 4.0], [4.0, 5.0, 6.0, 6.0], None),  # ties across the sides, unequal sizes
    ([10.0 + i for i in range(9)], [30.0 + i for i in range(9)], None),  # 9 a side: asymptotic
])
def test_the_smallest_p_is_that_of_the_most_extreme_split(b, n, expected):
    b, n = np.asarray(b), np.asarray(n)
    got = _min_p(b, n)
    assert got == pytest.approx(smallest_p_by_every_split(b, n), rel=1e-12)
    if expected is not None:
        assert got == pytest.approx(expected)


def test_the_smallest_p_of_equal_samples_is_none():
    assert math.isnan(_min_p(np.full(3, 5.0), np.full(3, 5.0)))
    assert compare_samples([5.0] * 3, [5.0] * 3).change == "same"  # nothing to split: more samples would not help


@pytest.mark.parametrize("k, change", [(3, TOO_FEW), (4, TOO_FEW), (5, "up")])
def test_a_x9_change_is_too_few_where_the_test_cannot_reach_alpha(k, change):
    # smallest p 0.1 at 3v3, 0.029 at 4v4 (both >= alpha 0.01), 0.0079 at 5v5
    base, new = np.linspace(225, 231, k), np.linspace(1900, 2200, k)
    t = compare_samples(base, new)
    assert t.change == change and t.sizes == (k, k) and t.ratio > 8
    assert (t.min_p >= 0.01) == (change == TOO_FEW)
    assert compare_samples(base, base * 1.001).change == (TOO_FEW if change == TOO_FEW else "same")


@pytest.fixture
def few(tmp_path):
    """One run a side: a x9.09 slower case and an unchanged one with 3 samples each, one with 30."""
    base = [case("slow", SLOW_BASE), case("calm", [100.0, 101.0, 99.0]),
            case("many", [100.0 + 0.1 * i for i in range(30)])]
    new = [case("slow", SLOW_NEW), case("calm", [100.5, 100.2, 99.5]),
           case("many", [100.05 + 0.1 * i for i in range(30)])]
    return write_run(tmp_path, "r1", base), write_run(tmp_path, "s1", new)


def test_three_samples_a_side_read_too_few_not_noisy(few):
    c = compare(*few)
    slow, calm, many = (one(c, v) for v in ("slow", "calm", "many"))
    assert slow.verdict == TOO_FEW and slow.ratio == pytest.approx(9.09, abs=0.01)
    assert slow.min_p == pytest.approx(0.1) and slow.samples_per_side == "3v3" and slow.p_value == pytest.approx(0.1)
    assert calm.verdict == TOO_FEW  # neither "same": its test could not have called a change either
    assert many.verdict == "same" and many.samples_per_side == "30v30" and many.min_p < 1e-6
    assert c.regressions.empty and not c.failed
    said = [line for line in c.summary_lines() if line.startswith("too few samples")]
    assert len(said) == 1 and "at alpha 0.01 (3v3 samples: its smallest p is 0.1" in said[0]
    assert "in 2 timings" in said[0] and "beyond the threshold all the same (1): toy/slow/n=1 step_time_ms x9.089" in \
        said[0] and "toy/calm" not in said[0]
    assert any(line.startswith("timings: ") and "2 too few" in line and "noisy" not in line
               for line in c.summary_lines())


def test_too_few_does_not_fail_the_gate_and_json_says_what_the_summary_says(few, tmp_path, capsys):
    from bench.cli import main

    out = tmp_path / "c.json"
    assert main(["compare", str(few[0]), str(few[1]), "--fail-on-regression", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    said = next(line for line in text.splitlines() if line.startswith("too few samples"))
    d = json.loads(out.read_text())
    assert d["too_few"]["said"] == said and d["too_few"]["timings"] == 2 and not d["gate"]["failed"]
    assert d["too_few"]["moved"] == [{"case_id": "toy/slow/n=1", "metric": "step_time_ms",
                                      "ratio": pytest.approx(9.089, abs=1e-3), "samples_per_side": "3v3",
                                      "min_p": pytest.approx(0.1)}]
    slow = next(r for r in d["rows"] if r["case_id"] == "toy/slow/n=1")
    assert slow["verdict"] == TOO_FEW and slow["min_p"] == pytest.approx(0.1)


@needs("plotly")
def test_the_page_says_what_the_summary_says(few, tmp_path):
    from reports.compare_page import write_compare_html

    c = compare(*few)
    said = next(line for line in c.summary_lines() if line.startswith("too few samples"))
    page = write_compare_html(c, tmp_path / "c.html").read_text()
    assert html.escape(said[0].upper() + said[1:]) in page


@pytest.mark.parametrize("allow, verdict, masked", [(True, TOO_FEW, None), (False, "contended", TOO_FEW)])
def test_a_contended_case_with_too_few_samples(tmp_path, allow, verdict, masked):
    # the case reproduced: both runs disturbed, compared under --allow-contended, printed "noisy ... x9.088 p=0.1"
    c = compare(write_run(tmp_path, "r1", [case("slow", SLOW_BASE, **LOAD)]),
                write_run(tmp_path, "s1", [case("slow", SLOW_NEW, **LOAD)]), allow_contended=allow)
    row = one(c, "slow")
    # no gate on the row; without --allow-contended NEW's only timing was contended in its every run: that fails
    assert row.verdict == verdict and row.masked == masked and c.gating.empty and c.failed == (not allow)
    lines = c.summary_lines()
    shown = [line for line in lines if "toy/slow/n=1  step_time_ms" in line]
    assert len(shown) == 1 and "p=0.1 (its smallest possible at 3v3 samples: 0.1)" in shown[0]
    assert shown[0].startswith(f"  {verdict} ")
    assert ("(the test said too few)" in "\n".join(lines)) == (not allow)
    assert any(line.startswith("too few samples") for line in lines) == allow

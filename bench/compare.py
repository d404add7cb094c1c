"""Statistical comparison of two runs (or two sets of runs): per case and metric, the ratio NEW/BASE and a verdict.

The unit of analysis is the run. Two runs of the same code on the same machine differ by a run-level offset
(process placement, clocks, allocator state, other tenants) that no number of samples within one run can see:
treating samples as independent, 8 back-to-back smoke runs of identical code called 66 of 140 timing comparisons
faster or slower. So each run contributes one value per case and metric (the median of its samples), and samples
are never pooled across runs.

Verdicts, by kind of metric:
What a metric is comes from the specs its suite declared, which each run directory carries in run.json
(bench.metrics.specs_of); a metric no run declares gets the generic defaults of its unit suffix.

- timed (samples, or a clocked metric with a direction: measured, or derived from a measured one) with >= 2 runs on
  a side: faster | slower | same | noisy from `compare_runs`, which tests the run values against their spread. The
  row's base and new are the centres that test compared, the medians of the log run values taken back (an even
  number of runs: the geometric mean of the middle two, where the arithmetic median is their mean), so that its
  ratio is new / base: in the text, the page and the JSON alike, never base 10, new 10, x1.25.
- sampled with exactly one run per side: faster | slower | same | noisy from `compare_samples`, the within-run test.
  It cannot see the run-to-run term, so `Comparison.summary_lines` says so and asks for more runs. Where its rank
  test cannot reach alpha with so few samples (3 a side: its smallest p is 0.1, at alpha 0.01), "too few": not
  judged, not gated, and named in the summary where it moved beyond the threshold (`Comparison.too_few`).
- deterministic (bytes, FLOP counts, quality): same | better | worse by the metric's direction, compared exactly
  on the median over runs (`changed` when the metric has no direction; fractions to 1e-9 relative, EXACT_RTOL, so
  that a float sum's last digits are no change). Where the runs of a side disagree on it, it is not deterministic
  on that machine: its run values are weighed against their run-to-run spread, with no threshold and on their own
  scale (`compare_spread`: better | worse | same | noisy), and `varies` names the side and the range of its values.
- clocked without samples and one run per side (rates, energy, timing ratios and shares), or info (a timing's
  spread, clocks, flags): n/a. Only the ratio is reported; comparing it exactly would flag every A/A run.
- contended: a timed verdict (the first two rules) of a case that something outside it disturbed (its record's
  `contended` flag; bench.interference) in runs of a side, whatever the test said: a load that tripled a timing is
  not a regression of the code. Where both sides have undisturbed runs of the case left, the test is made again on
  those alone, and its verdict stands (the row's `contended` column starts with JUDGED_UNDISTURBED and names the
  runs left out). `allow_contended` keeps the test's verdict over every run. The `contended` column says why either
  way. A ratio to the reference variant (speedup_x, time_overhead_x) is disturbed in a run where its reference case
  was contended too (bench.verdicts.reference_disturbed). Exact metrics are compared exactly regardless.
A derived row (a rate, TFLOP/s, % of peak) that moved with the measured metric it comes from names it in `follows`,
and the summary lists it under that row (bench.verdicts.follows).

The gate (`Comparison.failed`, --fail-on-regression) weighs the timings judged from several runs a side together:
each row's verdict keeps its own false alarms near alpha/2, and over the 40 timings of a night that made 16-18% of
A/A nights of 3 or 5 runs against 1 fail. A slower timing fails the gate only where its Holm-adjusted one-sided p,
over all those timings with their spreads moderated across them (bench.stats.family_p), is below alpha: family-wise,
an A/A comparison fails about alpha of the time whatever its number of timings. A rate of a timing is no test of its
own. From one run a side the gate judges exact metrics only; it fails on a NEW run most of whose timings were
contended in every run (it measured the load), on an unfinished or damaged one, and where the sides share no case.
Reads run directories only: no torch."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bench.compare_text import (  # noqa: F401 - re-exported: the sentences' tests import them from here
    CONTENDED_ALLOWED,
    CONTENDED_HEAD,
    NEW_CONTENDED,
    NEW_DISTURBED,
    NOT_SIGNIFICANT,
    NOTHING_SHARED,
    ONE_RUN_CAVEAT,
    ONE_RUN_GATE,
    ONE_RUN_UNGATED,
    ONE_SIDE,
    UNJUDGED_SLOWER,
    VARIES_HEAD,
    count_timings,
    plain_records,
    row_line,
    summary_lines,
    too_few_json,
    too_few_lines,
)
from bench.metrics import default, specs_of
from bench.sides import check_sides, environments, load
from bench.stats import TOO_FEW
from bench.verdicts import (  # noqa: F401 - RETRAINED, UNKNOWN_WEIGHTS re-exported for the tests
    IMPROVEMENT,
    JUDGED_UNDISTURBED,
    REGRESSION,
    RETRAINED,
    UNKNOWN_WEIGHTS,
    Side,
    follows,
    gate,
    judge,
    nonfinite_changes,
    per_run,
    reference_disturbed,
)

# gate_p: the Holm-adjusted one-sided p that NEW is worse, over the timings the gate weighs together (bench.verdicts
# .gate); a rate that follows its timing takes the timing's; NaN for every other row (none gates on it).
# samples_per_side, min_p: the within-run test's sample counts ("3v3") and smallest attainable p (bench.verdicts.judge).
ROW_COLUMNS = ["case_id", "suite", "variant", "metric", "base", "new", "ratio", "direction", "verdict", "p_value",
               "ci_low", "ci_high", "runs_per_side", "samples_per_side", "min_p", "run_spread", "contended", "varies",
               "follows", "masked", "gate_p"]
STATUS_COLUMNS = ["case_id", "suite", "variant", "base_status", "new_status", "change", "reason"]
ABSENT = "absent"

@dataclass
class Comparison:
    """The result of `compare`: per-metric rows, per-case status changes and the environment diff."""

    rows: pd.DataFrame
    """One row per case and metric present on both sides (ok on both): ROW_COLUMNS."""
    status_rows: pd.DataFrame
    """Cases not ok on either side or present on one side only: STATUS_COLUMNS; change is added, removed, still
    <status> or "<base> -> <new>"."""
    env_diff: list[tuple[str, str | None, str | None]]
    """(field, base, new) for each environment field that differs."""
    same_env: bool
    """Both sides have the same env_id(s) and measured on the same GPU models: an A/B of code or settings rather than
    of hardware or software."""
    env_fields: list[tuple[str, str | None, str | None]] = field(default_factory=list)
    """Every environment field, differing or not."""
    base_runs: list[str] = field(default_factory=list)
    new_runs: list[str] = field(default_factory=list)
    threshold: float = 0.05
    alpha: float = 0.01
    allow_contended: bool = False
    """Contended timings kept the test's verdict (`--allow-contended`) instead of "contended"."""
    unfinished: list[tuple[str, str]] = field(default_factory=list)
    """(side, run) of each run whose run.json says it did not finish (killed, out of --budget, resumed for fewer
    cases): its missing cases show as removed or added, and are not judged."""
    damaged: list[tuple[str, str, str]] = field(default_factory=list)
    """(side, run, why) of each finished run whose records.jsonl lost records since (bench.sides.damage)."""
    family: int = 0
    """The timings judged from several runs a side that the gate weighs together (bench.verdicts.gate): a slower
    one fails it only where significant over all of them (gate_p < alpha: Holm, family-wise)."""
    new_contended: int = 0
    """NEW's timings (no rate of one counted apart) with every NEW run contended: judged on no run of NEW."""
    timings: int = 0
    """NEW's timings, as counted for new_contended."""
    one_side: list[tuple[str, str, str]] = field(default_factory=list)
    """(case_id, metric, side) of each metric with a direction that a case ok on both sides has on one side only (a
    ratio whose reference case one side lacks, say): not compared, and said."""
    rates: set[int] = field(default_factory=set)
    """Positions in `rows` of the tested rows that are a rate, TFLOP/s or % of peak of a tested timing of their own
    case (bench.verdicts.consequences): counted under that timing, never as timings of their own."""
    nonfinite: list[dict] = field(default_factory=list)
    """Metrics NaN or infinite on one side and finite on the other (bench.verdicts.nonfinite_changes); those `worse`
    in NEW fail --fail-on-regression."""
    imported: bool = False
    """Every run on both sides is a `bench import` of a file pytest-benchmark wrote (run.json imported_from.origin):
    more runs come from pytest, not `bench run`."""

    @property
    def regressions(self) -> pd.DataFrame:
        return self.rows[self.rows["verdict"].isin(REGRESSION)]

    @property
    def one_run_regressions(self) -> pd.DataFrame:
        """Timings called slower from one run a side: shown, not gated (`gating`); see ONE_RUN_CAVEAT."""
        r = self.regressions
        return r[r.index.isin(self.tested.index) & (r["runs_per_side"] == "1v1")]

    @property
    def not_significant(self) -> pd.DataFrame:
        """Timings called slower from several runs a side that are not significant over the family of timings the
        comparison judged (gate_p >= alpha, or none: a rate that moved without its timing): shown, not gated. Each
        row's verdict holds its own false alarms near alpha/2; over 40 timings a night that made 16-18% of A/A nights
        of 3 or 5 runs against 1 fail the gate."""
        r = self.regressions
        several = r[r.index.isin(self.tested.index) & (r["runs_per_side"] != "1v1")]
        return several[~(several["gate_p"] < self.alpha)]

    @property
    def gating(self) -> pd.DataFrame:
        """The regressions --fail-on-regression fails on: every exact metric that got worse, and the timings called
        slower from several runs a side that are significant over all the timings judged (`not_significant`); not
        the timings judged from one run a side, which an A/A pair of runs calls slower by the dozen on a shared
        machine (a run-level offset the test cannot see)."""
        return self.regressions.drop(self.one_run_regressions.index).drop(self.not_significant.index)

    @property
    def improvements(self) -> pd.DataFrame:
        return self.rows[self.rows["verdict"].isin(IMPROVEMENT)]

    @property
    def contended(self) -> pd.DataFrame:
        """Timed rows of cases disturbed on either side and not judged on undisturbed runs of both: verdict
        "contended", or their test's under allow_contended."""
        c = self.rows["contended"]
        return self.rows[c.notna() & ~c.fillna("").str.startswith(JUDGED_UNDISTURBED)]

    @property
    def unjudged_slower(self) -> pd.DataFrame:
        """Contended rows whose test, from several runs a side, said slower (`masked`), significant over the family
        as a clean slower must be (gate_p < alpha): a disturbed run cannot show that nothing regressed, so
        --fail-on-regression fails on them (rerun on a quiet machine, or --allow-contended). From one run a side they
        are shown only, as a clean one-run slower is (ONE_RUN_UNGATED)."""
        c = self.contended
        return c[c["masked"].isin(REGRESSION) & (c["runs_per_side"] != "1v1") & (c["gate_p"] < self.alpha)]

    @property
    def new_disturbed(self) -> bool:
        """Most of NEW's timings were contended in every NEW run (and not --allow-contended): the run measured the
        load, not the code, and --fail-on-regression fails on it as on an unfinished NEW run (NEW_DISTURBED)."""
        return not self.allow_contended and 2 * self.new_contended > self.timings

    @property
    def nothing_shared(self) -> bool:
        """No case is on both sides (no shared case_id): nothing was compared, and --fail-on-regression fails."""
        return self.rows.empty and bool(self.status_rows["change"].isin(["added", "removed"]).all())

    @property
    def newly_failing(self) -> pd.DataFrame:
        """Cases ok in BASE that ran out of memory, timed out or errored in NEW: regressions of another kind."""
        s = self.status_rows
        return s[(s["base_status"] == "ok") & s["new_status"].isin(["oom", "timeout", "error"])]

    @property
    def tested(self) -> pd.DataFrame:
        """Rows whose verdict comes from a statistical test (`compare_runs`, `compare_samples`): timings and rates."""
        r = self.rows
        return r[(r["p_value"].notna() | r["run_spread"].notna()) & r["varies"].isna()]

    @property
    def timing_rows(self) -> pd.DataFrame:
        """The tested rows that are timings, as the gate counts them (`timings`): `tested` but its `rates`."""
        return self.tested.drop(self.rates, errors="ignore")

    def count(self, rows: pd.DataFrame) -> str:
        """How many timings `rows` hold: "3", or "16 timings, 32 rows with their rates" (`rates`)."""
        n = len(rows.drop(self.rates, errors="ignore"))
        return f"{n}" if n == len(rows) else f"{n} timing{'s' * (n != 1)}, {len(rows)} rows with their rates"

    @property
    def too_few(self) -> pd.DataFrame:
        """Timings whose within-run test could not reach alpha with their samples (verdict "too few"): neither
        same nor noisy, not gated; the summary names those that moved beyond the threshold."""
        return self.rows[self.rows["verdict"] == TOO_FEW]

    @property
    def varying(self) -> pd.DataFrame:
        """Rows of exact metrics whose runs differ on a side, so weighed on their spread like a timing."""
        return self.rows[self.rows["varies"].notna()]

    @property
    def one_run_per_side(self) -> bool:
        """Some timing was judged from one run per side, blind to run-to-run variation (see ONE_RUN_CAVEAT)."""
        return bool((self.tested["runs_per_side"] == "1v1").any())

    @property
    def nonfinite_worse(self) -> list[dict]:
        """The metrics NEW measured NaN, or infinite the wrong way, where BASE has a value: the gate fails on them."""
        return [x for x in self.nonfinite if x["worse"]]

    @property
    def failed(self) -> bool:
        """What --fail-on-regression fails on: a gating regression, a newly failing case or a metric gone NaN
        (nonfinite's worse), a contended timing that looked slower (unjudged_slower), an unfinished, damaged or mostly
        contended NEW run (new_disturbed), or sides with no case in common (nothing_shared): a NEW run that measured
        nothing, or the load, passes nothing."""
        return bool(len(self.gating) or len(self.newly_failing) or len(self.unjudged_slower) or self.new_disturbed
                    or self.nothing_shared or any(s[0] == "new" for s in self.unfinished + self.damaged)
                    or bool(self.nonfinite_worse))

    def to_json(self) -> dict:
        """The comparison for scripts (`bench compare -o FILE.json`): every row and status row (NaN as null), the
        environment diff, the unfinished runs, what --fail-on-regression would fail on, and the timings whose
        within-run test had too few samples to decide (`too_few`), with the summary's line on them."""
        return {"base_runs": self.base_runs, "new_runs": self.new_runs, "threshold": self.threshold,
                "alpha": self.alpha, "same_env": self.same_env, "environment": self.env_verdict,
                "env_diff": [{"field": f, "base": b, "new": n} for f, b, n in self.env_diff],
                "unfinished": [{"side": side, "run": run} for side, run in self.unfinished],
                "damaged": [{"side": side, "run": run, "why": why} for side, run, why in self.damaged],
                "allow_contended": self.allow_contended,
                "gate": {"failed": self.failed, "regressions": len(self.regressions), "gating": len(self.gating),
                         "one_run": len(self.one_run_regressions), "newly_failing": len(self.newly_failing),
                         "contended": len(self.contended), "unjudged_slower": len(self.unjudged_slower),
                         "varying": len(self.varying), "family": self.family,
                         "not_significant": len(self.not_significant), "new_contended": self.new_contended,
                         "timings": self.timings, "new_disturbed": self.new_disturbed,
                         "nothing_shared": self.nothing_shared},
                "rows": plain_records(self.rows), "status_rows": plain_records(self.status_rows),
                "one_side": [{"case_id": c, "metric": m, "side": side} for c, m, side in self.one_side],
                "nonfinite": self.nonfinite,
                "too_few": too_few_json(self.rows, self.threshold, self.alpha)}

    @property
    def env_verdict(self) -> str:
        return "same environment (A/B of code or settings)" if self.same_env else "hardware or software comparison"

    def summary_lines(self) -> list[str]:
        """What `bench compare` prints: the verdicts counted, the rules that held some back, the listed rows."""
        return summary_lines(self)

def compare(base: list[str | Path], new: list[str | Path], threshold: float = 0.05, alpha: float = 0.01,
            allow_contended: bool = False, only: Collection[str] | None = None) -> Comparison:
    """Compare run directories BASE against NEW. Several per side join by case_id: shards add cases, repeated runs
    of a case become that case's runs (bench.verdicts.judge gives the rule each metric gets; `allow_contended`
    judges the timings of contended cases as any other). `only`: the case ids compared, where NEW ran a selection of
    BASE's cases on purpose (the others would show as removed)."""
    if not 0 <= threshold < 1 or not 0 < alpha < 1:
        raise ValueError(f"threshold must lie in [0, 1) and alpha in (0, 1), got {threshold} and {alpha}")
    base, new = ([side] if isinstance(side, (str, Path)) else side for side in (base, new))
    b_cases, b_metas, b_names, b_damaged = load(base)
    n_cases, n_metas, n_names, n_damaged = load(new)
    check_sides((b_metas, base), (n_metas, new))
    specs = specs_of(b_metas + n_metas)
    rows, status, one_side, nonfinite = [], [], [], []
    for case_id in sorted(b_cases.keys() | n_cases.keys()):
        if only is not None and case_id not in only:
            continue
        b, n = b_cases.get(case_id), n_cases.get(case_id)
        either = b or n
        if b is not None and n is not None and b.status == n.status == "ok":
            for metric in sorted(b.runs.keys() & n.runs.keys()):
                rows.append({"case_id": case_id, "suite": b.suite, "variant": b.variant, "metric": metric,
                             **judge(metric, b, n, threshold, alpha, specs.get(b.suite, {}), allow_contended)})
            went = nonfinite_changes(case_id, b, n, specs.get(b.suite, {}))
            nonfinite += went
            one_side += [(case_id, m, "base" if m in b.runs else "new") for m in sorted(b.runs.keys() ^ n.runs.keys())
                         if (specs.get(b.suite, {}).get(m) or default(m)).direction and m not in
                         {x["metric"] for x in went}]
        else:
            bs, ns = b.status if b else ABSENT, n.status if n else ABSENT
            change = ("added" if b is None else "removed" if n is None
                      else f"still {bs}" if bs == ns else f"{bs} -> {ns}")
            reason = (n.error if n and n.status != "ok" else None) or (b.error if b else None)
            status.append({"case_id": case_id, "suite": either.suite, "variant": either.variant,
                           "base_status": bs, "new_status": ns, "change": change, "reason": reason})
    suites = {k: v for m in b_metas + n_metas for k, v in (m.get("suites") or {}).items() if isinstance(v, dict)}
    sides = (Side(b_cases, per_run(base, b_names)), Side(n_cases, per_run(new, n_names)))
    reference_disturbed(rows, sides, suites, specs, threshold, alpha, allow_contended)
    follows(rows, specs)
    family, new_contended, timings, rates = gate(rows, specs, suites)
    env_fields, env_diff, same_env = environments(b_metas, n_metas)
    unfinished = [(side, name) for side, metas, names in (("base", b_metas, b_names), ("new", n_metas, n_names))
                  for meta, name in zip(metas, names) if "finished_at" in meta and not meta["finished_at"]]
    return Comparison(pd.DataFrame(rows, columns=ROW_COLUMNS), pd.DataFrame(status, columns=STATUS_COLUMNS),
                      env_diff, same_env, env_fields, b_names, n_names, threshold, alpha, allow_contended, unfinished,
                      [("base", *d) for d in b_damaged] + [("new", *d) for d in n_damaged], family,
                      new_contended, timings, one_side, rates, nonfinite,
                      all((m.get("imported_from") or {}).get("origin") == "pytest" for m in b_metas + n_metas))


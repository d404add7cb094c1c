"""The dashboard's noise band in simulation: how often stable series are flagged, and how soon a 30% step is, with a
young series' spread its own or moderated by its environment's (reports/noise.py quotes this script's output).

    python ci/dashboard_band.py [REPS]

Each rep draws an environment of 40 mature series (30 nights, lognormal noise), fits its prior (noise.prior_of), and
judges a new series of that environment (reports.regressions' rule, threshold 5%, window 7): 12 and 30 stable nights
(flagged at any night: a false flag), and a 30% step (10-15% for a quiet series) after 4, 6 and 10 nights (flagged
within 5 nights of it).
Pure numpy and the rule itself; ~30 s per 1000 reps on one core.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from reports import noise, regressions  # noqa: E402 - after the checkout is on the path

THRESHOLD, WINDOW, STEP = 0.05, 7, 0.3
SCENARIOS = {  # name: (the environment's noise, the new series' noise), each a draw from the generator
    "40 at 5%, new at 5%": (lambda g: [0.05] * 40, lambda g: 0.05),
    "40 at 1-10%, new alike": (lambda g: list(np.exp(g.uniform(math.log(0.01), math.log(0.10), 40))),
                               lambda g: float(np.exp(g.uniform(math.log(0.01), math.log(0.10))))),
    "40 at 2%, new at 8%": (lambda g: [0.02] * 40, lambda g: 0.08),
    "40 at 1-10%, new at 10%": (lambda g: list(np.exp(g.uniform(math.log(0.01), math.log(0.10), 40))),
                                lambda g: 0.10),
    "40 at 5%, new at 1% (a 10% step)": (lambda g: [0.05] * 40, lambda g: 0.01),
    "40 at 10%, new at 1% (a 15% step)": (lambda g: [0.10] * 40, lambda g: 0.01),
}
STEPS = {"40 at 5%, new at 1% (a 10% step)": 0.10, "40 at 10%, new at 1% (a 15% step)": 0.15}  # else STEP


def series(g, n: int, sigma: float, step_at: int | None = None, step: float = STEP) -> list[float]:
    values = 100 * np.exp(sigma * g.standard_normal(n))
    if step_at is not None:
        values[step_at:] *= 1 + step
    return values.tolist()


def flagged_at(values: list[float], prior) -> list[int]:
    """Nights at which the series is flagged: that night and the one before both bad."""
    bad = [bool(p and p["kind"]) for p in regressions._judge(values, "lower", THRESHOLD, WINDOW, prior=prior)]
    return [t for t in range(1, len(bad)) if bad[t] and bad[t - 1]]


def simulate(environment, new, reps: int, moderated: bool, step: float = STEP) -> dict[str, float]:
    g = np.random.default_rng(0)  # the same draws for both rules
    counts = dict.fromkeys(("false, 12 nights", "false, 30 nights", "step after 4", "step after 6", "step after 10"), 0)
    for _ in range(reps):
        prior = noise.prior_of([series(g, 30, s) for s in environment(g)], WINDOW)
        prior = prior if moderated else (0.0, 0.0)
        sigma = new(g)
        counts["false, 12 nights"] += bool(flagged_at(series(g, 12, sigma), prior))
        counts["false, 30 nights"] += bool(flagged_at(series(g, 30, sigma), prior))
        for at in (4, 6, 10):
            counts[f"step after {at}"] += any(t >= at for t in flagged_at(series(g, at + 5, sigma, at, step), prior))
    return {k: v / reps for k, v in counts.items()}


if __name__ == "__main__":
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    for name, (environment, new) in SCENARIOS.items():
        own, mod = (simulate(environment, new, reps, m, STEPS.get(name, STEP)) for m in (False, True))
        print(f"{name}: " + "; ".join(f"{k} {own[k]:.1%} -> {mod[k]:.1%}" for k in own), flush=True)

"""Diffusion and flow samplers: the quality each loses per model call saved, against exact answers.

With the exact model of a Gaussian-mixture target (model=exact) every difference from the target is the sampler's
discretization error; with a small learned MLP (model=learned) it adds to the model's, the realistic case. The
reference is DDPM's 1000-step ancestral sampler: the report reads, per sampler, the smallest NFE whose sliced W2
comes within 10% of it. The `nfe_budget` param is a budget of model calls per sample: a sampler runs the most steps
that fit it (Heun pays 2 calls a step, its last step 1) and records the calls it made as the `nfe` metric. A budget
that buys the same run as a smaller one is not a case (`applies`), nor is one the sampler does not take. Learned
models carry their training budget in their params (train_steps, hidden); they are trained once per machine and
cached, and at smoke and quick sizes ship with the package (impls/weights).

Quality is measured on `n` fresh samples: sliced W2 (256 directions) against 10,000 exact target samples (the
held-out digits for the digits model) beside its sampling-noise floor, MMD (RBF sum, on the first 1000),
mode_weight_err (total variation between the mixture weights, or digit classes, the samples land in and the true
ones) and mean_loglik under the true mixture. The time
is one batch of n samples; on CPU on one thread, since a step's work is too small to share.

Hugging Face diffusers' schedulers, the samplers users pick, are variants too (`diffusers_*`, declared in `libraries`):
the same model, schedule and n, configured on the model's schedule and, where diffusers takes them, on our grids
(impls/samplers/diffusers_schedulers.py says which reproduce which of ours). Each starts from the noise of the sampler
of ours it sits beside (PAIRED_WITH), so the two differ by the sampler alone: diffusers_ddpm, which is our ddpm, reads
the same numbers. Without diffusers (pip install -e ".[ecosystem]") they are recorded as skipped.

torchdiffeq's ODE solvers, what flow-matching and score-SDE users integrate with, are variants too (`torchdiffeq_*`,
impls/samplers/torchdiffeq_solvers.py), declared and paired the same way: euler on our uniform grid (our flow_euler,
to float rounding), rk4 (Kutta's 3/8 rule, 4 calls a step) on our EDM grid, and dopri5, adaptive. dopri5's model calls
are an outcome of its tolerance, not a budget: its cases are named by `tol` (rtol = atol) instead of `nfe_budget`,
and a figure places them on the NFE axis by the calls counted (`nfe`; `steps` are the accepted ones, beside
`rejected_steps`). Without torchdiffeq they are recorded as skipped.

torchsde's SDE solvers (`torchsde_*`, impls/samplers/torchsde_solvers.py) solve the reverse-time VP SDE that sde_em
solves, on its uniform grid, from its x_T, declared and paired (with sde_em) the same way: euler (Euler-Maruyama:
sde_em's samples from the same noise) and srk (Roessler's SRA1, strong order 1.5 on additive noise, 3 calls a step).
sdeint calls the model once more per solve, to check the drift's shape: NFE = 1 + calls a step x steps, so no run
fits a budget of 1.
Without torchsde they are recorded as skipped.
"""

from __future__ import annotations

import zlib

import torch

from bench.metrics import Metric, timing
from bench.suite import Measurement, Suite, register, requires
from bench.timing import time_fn
from impls.cache import load_or_build
from impls.libraries import ECOSYSTEM
from impls.samplers import SAMPLERS, diffusers_schedulers, torchdiffeq_solvers, torchsde_solvers
from impls.samplers.base import GRID_NFE, prior_noise
from impls.samplers.learned import LearnedConfig, classify_digits, digit_labels, digits, digits_count, load_or_train
from impls.samplers.metrics import (
    BANDWIDTHS,
    PROJECTIONS,
    mean_log_likelihood,
    mmd,
    mmd_reference,
    mode_weight_err,
    reference_quantiles,
    sliced_w2_at,
)
from impls.samplers.nflow import FlowConfig
from impls.samplers.nflow import load_or_train as load_or_train_flow
from impls.samplers.params import ExactModel
from impls.samplers.schedules import SCHEDULES
from impls.samplers.targets import make_target

# (target, model) pairs per size, NFE budgets, samples per batch, and training budgets of the learned models. Digits
# compare against the 360 held-out images, so they sample as many.
GRIDS = {
    "smoke": {"pairs": (("gmm2d", "exact", 500), ("gmm2d", "learned", 500)), "nfe": (1, 4, 16, 64),
              "tol": (1e-1, 1e-3), "train": {"steps": 300, "hidden": 64}},
    # n: exact samples of this size sit ~0.04 (gmm2d, 4000) to ~0.06 (2000) sliced W2 from the target, +-40%: a
    # sampler's error below that cannot be read, so quick spends more samples on the exact model, whose error is the
    # sampler's alone, and its budget on n rather than on 128 and 256 NFE.
    # nfe: no 2, which no quick figure reads: no sampler first matches DDPM there (reflow already does at 1).
    # only: at 1000 NFE (~3 s a case, a third of a quick run) only the runs a quick figure reads: DDPM's, the reference
    # "NFE to match" is read against, and the learned model's DDIM, which first matches it there. The others rank
    # nothing at these n: ddim_eta0.5, the exact model's DDIM, and diffusers' DDPM and DDIM (ours to float32 rounding
    # at 1000 steps) land under the exact model's noise floor (0.034 to 0.041 against 0.069), and on the learned model
    # within 5% of DDPM (0.104 to 0.109), the model's own error. Full runs them all.
    "quick": {"pairs": (("gmm2d", "exact", 4000), ("gmm2d", "learned", 2000)), "nfe": (1, 4, 8, 16, 32, 64, 1000),
              "only": {1000: {"exact": ("ddpm",), "learned": ("ddpm", "ddim")}}, "tol": (1e-1, 1e-2, 1e-3, 1e-4),
              "train": {"steps": 1500, "hidden": 128}},
    "full": {"pairs": (("gmm2d", "exact", 20000), ("gmm16", "exact", 20000), ("gmm64", "exact", 20000),
                       ("gmm2d", "learned", 20000), ("digits", "learned", 0)), "nfe": GRID_NFE,
             "tol": (1e-1, 1e-2, 1e-3, 1e-4, 1e-5), "train": {"steps": 4000, "hidden": 256}},
}
# tol: the adaptive solvers' grid points, rtol = atol (their cases' only param besides the pair's); 1e-5 is
# score_sde's for the probability-flow ODE. On quick's gmm2d pairs dopri5 measured NFE 14, 26, 50, 86, 86 for 1e-1 to
# 1e-5 with the exact model (n = 4000; sliced W2 0.92, 0.083, then 0.070, the ODE's endpoint from ode_heun's x_T), and
# 20, 38, 62, 194, 536 with the learned one (n = 2000), whose roughness the error control pays for in calls, recorded
# as counted. Quick leaves out 1e-5 (536 calls: 1.1 s a batch on one thread).
# Budgets past this run only on DDPM's discrete grid (ddpm, ddim), where 1000 is the chain's own length: the
# continuous solvers are within ~1e-3 of their ODE's solution by 256 calls on these targets (tests/impls).
CONTINUOUS_MAX_NFE = 256
MMD_POINTS = 1000  # MMD is O(N^2): it compares the first 1000 samples with the first 1000 reference samples
# Sliced W2 compares n samples with 10,000 exact ones (less noise than a same-size reference adds); n exact samples
# sit sliced_w2_floor (mean over 6 draws, and its sd) from that reference: below it, no sampler can be told apart.
REF_POINTS = 10_000
FLOOR_DRAWS = 6


def _seed(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
REFLOW = "reflow_euler"
NFLOW = "nflow"
DIFFUSERS = diffusers_schedulers.specs()
TORCHDIFFEQ = torchdiffeq_solvers.specs()  # the fixed-grid ones; the adaptive ones are ADAPTIVE
ADAPTIVE = torchdiffeq_solvers.ADAPTIVE
TORCHSDE = torchsde_solvers.specs()
SPECS = {**SAMPLERS, **DIFFUSERS, **TORCHDIFFEQ, **TORCHSDE}  # every fixed-grid sampler variant's spec: ours and the
# libraries'
# the sampler of ours each library variant takes its x_T from
PAIRED_WITH = {**diffusers_schedulers.PAIRED_WITH, **torchdiffeq_solvers.PAIRED_WITH, **torchsde_solvers.PAIRED_WITH}


@register
class Samplers(Suite):
    name = "samplers"
    # CPU: a step works on a few thousand points: on 2 cores an intra-op thread pool costs more in wake-ups than it
    # gives (gmm16's exact model: 6 ms a call on one thread, 160 ms on two beside another busy process).
    cpu_threads = 1
    description = "steps for quality: sample quality per NFE against exact answers, and the wall time"
    variants = {
        "ddpm": "reference: DDPM ancestral (Ho et al. 2020), 1000 steps on the discrete grid; fewer by striding",
        "ddim": "DDIM, eta 0: deterministic (Song et al. 2021)",
        "ddim_eta0.5": "DDIM, eta 0.5",
        "sde_em": "reverse VP SDE, Euler-Maruyama",
        "ode_euler": "probability-flow ODE, Euler, EDM time steps (rho 7)",
        "ode_heun": "probability-flow ODE, Heun (Karras et al. 2022): 2 calls a step",
        "dpm_solver_2m": "DPM-Solver++(2M) (Lu et al. 2022): second order, 1 call a step",
        "flow_euler": "rectified flow / flow matching, Euler on the straight-path ODE",
        "flow_heun": "rectified flow, Heun",
        REFLOW: "2-rectified flow (reflow, Liu et al. 2023), Euler: a learned model retrained on its own pairs",
        NFLOW: "RealNVP normalizing flow (Dinh et al. 2017): one pass, NFE 1",
        "diffusers_ddpm": "diffusers DDPMScheduler, fixed_small variance, custom timesteps on our discrete grid",
        "diffusers_ddim": "diffusers DDIMScheduler, eta 0, trailing timestep spacing, set_alpha_to_one",
        "diffusers_dpmpp_2m": "diffusers DPMSolverMultistepScheduler, dpmsolver++ order 2 (2M), linspace timestep "
                              "spacing",
        "diffusers_euler": "diffusers EulerDiscreteScheduler, Karras sigmas (rho 7)",
        "diffusers_heun": "diffusers HeunDiscreteScheduler, Karras sigmas: 2 calls a step, the last 1",
        "diffusers_unipc": "diffusers UniPCMultistepScheduler, bh2 order 2, linspace timestep spacing",
        "diffusers_flow_euler": "diffusers FlowMatchEulerDiscreteScheduler, shift 1, sigmas on our uniform grid",
        "torchdiffeq_euler": "torchdiffeq odeint, euler, on our uniform grid: rectified flow",
        "torchdiffeq_rk4": "torchdiffeq odeint, rk4 (Kutta's 3/8 rule, 4 calls a step), on our EDM grid: the "
                           "probability-flow ODE",
        "torchdiffeq_dopri5": "torchdiffeq odeint, dopri5 (adaptive Dormand-Prince 5(4), rtol = atol = tol): the "
                              "probability-flow ODE, as score_sde solves it; NFE counted, not budgeted",
        "torchsde_euler": "torchsde sdeint, euler (Euler-Maruyama, Ito), on our uniform grid: the reverse VP SDE, "
                          "1 call a step and 1 to check the drift",
        "torchsde_srk": "torchsde sdeint, srk (Roessler's SRA1 for additive noise, strong order 1.5; 3 calls a step "
                        "and 1 to check the drift), on our uniform grid: the reverse VP SDE",
    }
    not_plannable = ("it records no memory figure to hold a prediction against: a case is a sampling loop of a small "
                     "model (the exact mixture or an MLP), quality against model calls")
    libraries = {**{variant: diffusers_schedulers.label() for variant in DIFFUSERS},
                 **{variant: torchdiffeq_solvers.label() for variant in torchdiffeq_solvers.PAIRED_WITH},
                 **{variant: torchsde_solvers.label() for variant in TORCHSDE}}
    requires = {**{variant: ("diffusers", ECOSYSTEM) for variant in DIFFUSERS},
                **{variant: ("torchdiffeq", ECOSYSTEM) for variant in torchdiffeq_solvers.PAIRED_WITH},
                **{variant: ("torchsde", ECOSYSTEM) for variant in TORCHSDE}}
    # diffusers takes ~2.5 s to import (scipy with it), torchdiffeq 0.7 s (scipy too): imported once by the process
    # cases fork from, not per case. torchsde, ~5 ms once torch is in, is not worth it.
    preload = ("diffusers", *(f"diffusers.schedulers.scheduling_{m}" for m in (
        "ddpm", "ddim", "dpmsolver_multistep", "euler_discrete", "heun_discrete", "unipc_multistep",
        "flow_match_euler_discrete")), "torchdiffeq")
    metrics = (
        Metric("nfe", "exact", None, "model calls per sample the sampler made"),
        Metric("steps", "exact", None, "sampler steps run (an adaptive solver's: those it accepted)"),
        Metric("rejected_steps", "exact", None, "steps an adaptive solver's error control rejected, their calls "
               "counted in nfe (torchdiffeq_dopri5 only)"),
        *timing("sample_time", "sampling one batch of n samples"),
        Metric("sliced_w2", "exact", "lower", "sliced W2 (256 directions) to 10,000 exact target samples"),
        Metric("sliced_w2_floor", "info", None, "sliced W2 of n exact samples to the same reference (mean of 6)"),
        Metric("sliced_w2_floor_sd", "info", None, "sd over the 6 draws of sliced_w2_floor"),
        Metric("mmd", "exact", "lower", "RBF MMD of the first 1000 samples to 1000 reference samples"),
        Metric("mode_weight_err", "exact", "lower", "total variation between the sampled and true mode weights"),
        Metric("mean_loglik", "exact", "higher", "mean log-likelihood of the samples under the true mixture"),
        Metric("shipped_weights", "info", None, "the learned model's weights are the package's (impls/weights: fp16, "
               "trained elsewhere by the same seeded recipe), not trained on this machine (None: the exact model)"),
    )

    def grid(self, size, device):
        g = GRIDS[size]
        cases = []
        for target, model, n in g["pairs"]:
            learned = {"train_steps": g["train"]["steps"], "hidden": g["train"]["hidden"]} if model == "learned" else {}
            for b in g["nfe"]:
                only = g.get("only", {}).get(b, {}).get(model)
                cases.append({"target": target, "model": model, "nfe_budget": b, "n": _n(target, n), **learned,
                              **({"only": "+".join(only)} if only else {})})
            cases += [{"target": target, "model": model, "tol": tol, "n": _n(target, n), **learned} for tol in g["tol"]]
        return cases

    def applies(self, variant, params):
        if "tol" in params or variant in ADAPTIVE:  # an adaptive solver's grid point is a tolerance, not a budget
            return "tol" in params and variant in ADAPTIVE
        budget = params["nfe_budget"]
        if "only" in params and variant not in params["only"].split("+"):  # a grid point for these samplers alone
            return False
        if variant == NFLOW:  # one pass of a learned flow
            return params["model"] == "learned" and budget == 1
        if variant == REFLOW and params["model"] != "learned":  # reflow retrains a learned model on its own pairs
            return False
        spec = SPECS[_sampler(variant)]
        steps = spec.steps_for(budget)
        if steps is None or (budget > CONTINUOUS_MAX_NFE and spec.max_steps is None):
            return False
        # a budget that buys the same run as a smaller one (Heun's 2 calls a step) is no new case
        return not any(b < budget and spec.steps_for(b) == steps for b in GRID_NFE)

    def measure(self, variant, params, device):
        if params["target"] == "digits":
            requires("sklearn", pip="scikit-learn")  # the 8x8 digits ship with scikit-learn
        target, budget, n = params["target"], params.get("nfe_budget"), params["n"]
        if variant == NFLOW:
            flow, source = load_or_train_flow(FlowConfig(data=target, steps=params["train_steps"],
                                                          hidden=params["hidden"]))
            flow = flow.to(device)
            return _measure(lambda g: (flow.sample(n, g), {"nfe": 1, "steps": 1}), params, device, source == "shipped")
        if variant in self.requires:
            requires(self.requires[variant][0], pip=self.requires[variant][1])
        model, shipped = _model(variant, SPECS[_sampler(variant)].family, params, device)
        if variant in DIFFUSERS:  # import diffusers and build the scheduler outside the timed calls, as a pipeline does
            diffusers_schedulers.scheduler(variant, model.schedule)
        if variant in torchdiffeq_solvers.PAIRED_WITH:  # import torchdiffeq and check its contract, untimed
            torchdiffeq_solvers.api()
        if variant in TORCHSDE:  # import torchsde and check its contract, untimed
            torchsde_solvers.api()
        # x_T is common to a sampler's budgets (its quality curve is paired across NFE) but its own: samplers that
        # shared one x_T would share its luck, and deterministic ones would all sit where that one draw lands. A
        # library's variant takes the x_T of the sampler of ours it sits beside, so that the pair differ by the sampler.
        noise = PAIRED_WITH.get(variant, variant)
        x_T = prior_noise(model.schedule, n, _dim(target), _seed(zlib.crc32(noise.encode()))).to(device)
        if variant in ADAPTIVE:
            def solve(g):
                out = torchdiffeq_solvers.solve(variant, model, x_T, params["tol"])
                return out.x, {"nfe": out.nfe, "steps": out.accepted, "rejected_steps": out.rejected}

            return _measure(solve, params, device, shipped)
        spec = SPECS[_sampler(variant)]
        steps = spec.steps_for(budget)

        def run(g):
            out = spec.fn(model, x_T, steps, generator=g) if spec.stochastic else spec.fn(model, x_T, steps)
            return out.x, {"nfe": out.nfe, "steps": steps}

        return _measure(run, params, device, shipped)


def _exact_draws(target: str, n: int) -> list:
    """FLOOR_DRAWS sets of n exact samples: of the mixture, or n real training digits (against the held-out ones)."""
    if target == "digits":
        pool = digits("train")
        return [pool[torch.randperm(len(pool), generator=_seed(100 + i))[:n]] for i in range(FLOOR_DRAWS)]
    return [make_target(target).sample(n, _seed(100 + i)) for i in range(FLOOR_DRAWS)]


def _sampler(variant: str) -> str:
    """The SPECS entry whose family and model `variant` samples with: its own; reflow's is flow_euler; an adaptive
    solver's, which plans no steps, the sampler of ours it is paired with (the same ODE, family and model)."""
    if variant == REFLOW:
        return "flow_euler"
    return PAIRED_WITH[variant] if variant in ADAPTIVE else variant


def _n(target: str, n: int) -> int:
    return digits_count("test") if target == "digits" else n


def _dim(target: str) -> int:
    return digits().shape[1] if target == "digits" else make_target(target).dim


def _model(variant, family, params, device):
    target = params["target"]
    if params["model"] == "exact":
        schedule = SCHEDULES["rectified_flow" if family == "flow" else "vp_linear"]()
        mixture = make_target(target)
        mixture = type(mixture)(*(t.to(device) for t in (mixture.weights, mixture.means, mixture.stds)))
        return ExactModel(mixture, schedule, "velocity" if family == "flow" else "eps"), None
    kind = "reflow" if variant == REFLOW else family
    config = LearnedConfig(data=target, family=kind, steps=params["train_steps"], hidden=params["hidden"])
    model, source = load_or_train(config)
    return model.to(device), source == "shipped"


def _measure(run, params, device, shipped: bool | None) -> Measurement:
    """Time seeded batches of run(generator) -> (x, counts: nfe and steps as the sampler counted them); quality from
    the batch (the same every call) against fresh target samples."""
    out = {}

    def call():
        out["x"], out["counts"] = run(_seed(1))

    with torch.no_grad():
        # 50 ms of calls: a few-step sampler takes ~1 ms, and 136 quick cases each timed for time_fn's default 0.2 s
        # would spend 27 s of a quick run repeating what 50 ms already measures
        timing = time_fn(call, device, warmup=0 if device == "cpu" else 1, min_reps=1, max_reps=20, min_time_s=0.05)
    x, counts = out["x"].float(), out["counts"]
    if not torch.isfinite(x).all():
        raise RuntimeError(f"the sampler produced non-finite samples at {counts['nfe']} NFE")
    target, n = params["target"], params["n"]
    if target == "digits":
        ref = digits("test")
        true = torch.bincount(digit_labels("test"), minlength=10).double() / len(ref)
        got = torch.bincount(classify_digits(x.cpu()), minlength=10).double() / len(x)
        quality = {"mode_weight_err": float(0.5 * (got - true).abs().sum()), "mean_loglik": None}
    else:
        mixture = make_target(target)
        ref = mixture.sample(REF_POINTS, _seed(2))
        quality = {"mode_weight_err": mode_weight_err(x.cpu(), mixture),
                   "mean_loglik": mean_log_likelihood(x.cpu(), mixture)}
    # the same for every case of a (target, n): computed once per machine, like trained weights. The reference's
    # quantiles at n levels are what sliced W2 reads of it; sorting its projections took 0.1-0.3 s a case.
    ref_q = load_or_build("samplers-ref", {"target": target, "n": n, "ref": REF_POINTS, "projections": PROJECTIONS},
                          lambda: {"q": reference_quantiles(ref, n)})["q"]
    floor = load_or_build("samplers-floor", {"target": target, "n": n, "ref": REF_POINTS, "draws": FLOOR_DRAWS},
                          lambda: {"floor": torch.tensor([sliced_w2_at(d, ref_q) for d in _exact_draws(target, n)])})
    floor = floor["floor"]
    mmd_ref = load_or_build("samplers-mmd-ref", {"target": target, "points": MMD_POINTS, "ref": REF_POINTS,
                                                 "bandwidths": list(BANDWIDTHS)},
                            lambda: mmd_reference(ref[:MMD_POINTS]))
    ref = ref.to(device)
    metrics = {**counts, **timing.metrics("sample_time"), "sliced_w2": sliced_w2_at(x, ref_q),
               "sliced_w2_floor": float(floor.mean()), "sliced_w2_floor_sd": float(floor.std()),
               "mmd": mmd(x[:MMD_POINTS], ref[:MMD_POINTS], reference=mmd_ref), **quality, "shipped_weights": shipped}
    return Measurement(metrics, timing.samples("sample_time"), timed=timing)

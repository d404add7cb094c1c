"""Multi-token prediction (DeepSeek-V3 §2.2): what D sequential MTP modules cost in training and buy in decoding.

Each variant trains the same main model on the same batches of a structured synthetic language (impls/mtp/data.py),
with D = 0 (plain), 1 or 2 MTP modules, and the weights are cached per config (smoke and quick CPU ones ship with
the package, impls/weights; shipped_weights says so). Training: step_time_ms, peak_mem_bytes
and step_flops of one AdamW step of a fresh model (ratios against plain: time, memory and FLOPs overhead) and the
main head's loss at the end of training and on held-out text (does MTP hurt or help next-token prediction).
Decoding, batch 1, over a KV cache: the first MTP module drafts the token after next and the main model verifies it
(impls/mtp/speculative.py). acceptance_rate is teacher-forced on held-out sequences; decode_acceptance_rate is what
greedy decoding from held-out prompts met; speedup_x is speculative over plain greedy decoding of the same trained main
model with the same cache, and matches_greedy says the two emitted the same tokens when decoding in fp32 (bf16 rounds a
2-token verify and a 1-token step differently, which can flip a near-tie; greedy_divergence_token and
divergence_logit_margin record where the timed decoders parted, if they did, and by how much). Both decoders are timed
whole, by wall clock (synchronized on CUDA). DeepSeek-V3 reports 85-90% acceptance and 1.8x decode tokens/s with a
61-layer main model and one MTP block: a draft is cheap there, and less so on a 4-layer model whose every op is
launch-bound on a CPU.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from bench.flops import flop_counter_mode
from bench.memory import peak_bytes
from bench.metrics import Metric, timing
from bench.suite import Measurement, Relative, Suite, Workload, build_module, register, run_dtype
from bench.timing import Timing, time_fn, time_interleaved
from bench.work import Work, rates
from impls.mtp.data import LanguageConfig
from impls.mtp.mtp import MTPConfig, MTPModel, mtp_loss
from impls.mtp.reference import LMConfig
from impls.mtp.speculative import acceptance_rate, greedy_decode, speculative_decode
from impls.mtp.train import TrainConfig, heldout, load_or_train

DEPTHS = {"plain": 0, "mtp": 1, "mtp_d2": 2}
LAMBDA = 0.3  # DeepSeek-V3's weight for its first 10T tokens (0.1 after)
# Named shapes: (vocab, d_model, heads, layers) and the language's phrase count.
SHAPES = {
    "tiny": {"vocab": 32, "d_model": 32, "heads": 2, "layers": 2, "phrases": 16},
    "small": {"vocab": 64, "d_model": 64, "heads": 4, "layers": 4, "phrases": 48},
    "base": {"vocab": 4096, "d_model": 1024, "heads": 16, "layers": 12, "phrases": 2048},
}
GRIDS = {
    # smoke: ~1 s of training per variant on a busy 2-core CPU; the numbers only show the plumbing works
    "smoke": ("tiny", {"seq": 17, "batch": 8, "steps": 30, "lr": 3e-3, "train_tokens": 20_000, "prompts": 2,
                       "prompt_len": 8, "new_tokens": 16}),
    # quick: 150 steps of 16 x 32 tokens, 3-8 s per variant on one thread of a busy 2-core VM; held-out main loss
    # ~0.92 nats (200 steps at lr 3e-3 reached the same), where the language's floor is ~0.35
    "quick": ("small", {"seq": 33, "batch": 16, "steps": 150, "lr": 4e-3, "train_tokens": 200_000, "prompts": 4,
                        "prompt_len": 16, "new_tokens": 32}),
    # full: ~160M parameters, 16k tokens a step (24.6M in all, drawn from 8M tokens of text); sized for one H200,
    # not yet timed on one
    "full": ("base", {"seq": 513, "batch": 32, "steps": 1500, "lr": 1e-3, "train_tokens": 8_000_000, "prompts": 8,
                      "prompt_len": 64, "new_tokens": 256}),
}
HELDOUT_SEQS = 64
DECODE_ROUNDS = 4  # timed calls of each decoder, alternating greedy and speculative


@register
class MTP(Suite):
    name = "mtp"
    # CPU: every op here is tiny: on a busy 2-core VM a second intra-op thread made a quick training step ~20x
    # slower (0.7 s against 35 ms)
    cpu_threads = 1
    description = "multi-token prediction: training overhead vs draft acceptance and speculative decode speed-up"
    variants = {
        "plain": "reference: next-token loss only (D=0), plain greedy decoding with a KV cache",
        "mtp": "DeepSeek-V3 MTP, D=1, lambda 0.3; its module drafts for speculative decoding",
        "mtp_d2": "MTP with D=2 sequential modules (lambda/2 each); the first module drafts",
    }
    relative = (
        Relative("time_overhead_x", "step_time_ms"),
        Relative("mem_overhead_x", "peak_mem_bytes"),
        Relative("flops_overhead_x", "step_flops"),
        Relative("heldout_loss_x", "heldout_loss"),
    )
    metrics = (
        # training
        *timing("step_time", "one AdamW step of a fresh model"),
        Metric("peak_mem_bytes", "exact", "lower", "peak bytes of one step beyond weights and optimizer state"),
        Metric("step_flops", "exact", "lower", "FLOPs of one training step (torch's FLOP counter)"),
        *rates("step_time", "train_", tokens=True, flops=True, what="a training step's, step_flops"),
        Metric("final_loss", "exact", "lower", "main head's loss, mean of the last 10% of training steps", unit="nats"),
        Metric("heldout_loss", "exact", "lower", "main head's loss on held-out text", unit="nats"),
        Metric("mtp_heldout_loss", "exact", "lower", "MTP modules' mean loss on held-out text (D > 0)", unit="nats"),
        Metric("acceptance_rate", "exact", "higher", "share of MTP drafts the main model accepts, teacher-forced"),
        Metric("shipped_weights", "info", None, "the weights and their training curve (final_loss) are the package's "
               "(impls/weights: fp16, trained elsewhere by the same seeded recipe), not trained on this machine"),
        # decoding
        *timing("greedy_time", "plain greedy decoding of all prompts (interleaved with speculative)"),
        *rates("greedy_time", "greedy_", tokens=True, what="generated by plain greedy decoding"),
        *timing("speculative_time", "speculative decoding of all prompts (interleaved with greedy)"),
        *rates("speculative_time", "decode_", tokens=True, what="generated by speculative decoding; for the plain "
               "model, by greedy decoding over greedy_time"),
        Metric("speedup_x", "derived", "higher", "greedy_time_ms / speculative_time_ms", unit="x",
               inputs=("greedy_time_ms", "speculative_time_ms")),
        Metric("decode_acceptance_rate", "exact", "higher", "share of MTP drafts accepted while decoding greedily"),
        Metric("tokens_per_forward", "exact", "higher", "tokens emitted per main-model forward, speculative decoding"),
        Metric("matches_greedy", "info", None, "speculative decoding emitted greedy decoding's tokens (fp32)"),
        Metric("greedy_divergence_token", "info", None, "first generated token where the timed decoders differ, or -1"),
        Metric("divergence_logit_margin", "info", None, "top-1 minus top-2 logit at that token (None if none)"),
    )

    def grid(self, size, device):
        shape, dims = GRIDS[size]
        return [{"shape": shape, **SHAPES[shape], **dims, "dtype": run_dtype(device)}]

    def workload(self, variant, params, device, target=None):
        return training_workload(config(variant, params), device, getattr(torch, params["dtype"]))

    def measure(self, variant, params, device):
        return _measure(variant, params, device)


def config(variant: str, params: dict) -> TrainConfig:
    model = LMConfig(vocab=params["vocab"], d_model=params["d_model"], n_heads=params["heads"],
                     n_layers=params["layers"])
    language = LanguageConfig(vocab=params["vocab"], phrases=params["phrases"])
    return TrainConfig(model=model, mtp=MTPConfig(depth=DEPTHS[variant], lam=LAMBDA), language=language,
                       seq=params["seq"], batch=params["batch"], steps=params["steps"], lr=params["lr"],
                       train_tokens=params["train_tokens"])


def _measure(variant, params, device) -> Measurement:
    cfg = config(variant, params)
    dtype = getattr(torch, params["dtype"])
    model, curves, source = load_or_train(cfg, device, dtype)
    metrics, timing, train_work = _training_cost(cfg, device, dtype)
    tail = max(1, len(curves["main_loss_curve"]) // 10)
    metrics["final_loss"] = sum(curves["main_loss_curve"][-tail:]) / tail  # mean of the last 10% of steps
    metrics["shipped_weights"] = source == "shipped"
    samples = curves if cfg.mtp.depth else {"main_loss_curve": curves["main_loss_curve"]}
    text = heldout(cfg, HELDOUT_SEQS, params["seq"]).to(device)
    with torch.no_grad(), torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype != torch.float32):
        _, main, per_depth = mtp_loss(model, text)
        metrics["heldout_loss"] = main.item()
        metrics["mtp_heldout_loss"] = sum(x.item() for x in per_depth) / len(per_depth) if per_depth else None
        metrics["acceptance_rate"] = acceptance_rate(model, text) if cfg.mtp.depth else None
    prompts = text[:params["prompts"], :params["prompt_len"]]
    # the correctness flag from fp32 decoding of the trained (fp32) weights, before the cast to the timed dtype
    fp32_matches = None
    if cfg.mtp.depth and dtype != torch.float32:
        fp32_matches = _fp32_agreement(model, prompts, params["new_tokens"])
    decode_metrics, timings, work = _decode(model.to(dtype), prompts, params["new_tokens"], device, fp32_matches)
    metrics.update(decode_metrics)
    return Measurement(metrics, samples, timed=timing, timings={"step_time": timing, **timings},
                       work=[train_work, *work])


def _training_cost(cfg: TrainConfig, device, dtype) -> tuple[dict, Timing, Work]:
    """One AdamW step of a fresh model on a seeded batch: peak bytes beyond weights and optimizer state and FLOPs,
    its timing, and its work."""
    w = training_workload(cfg, device, dtype)
    step = w.step
    step()  # warm-up: AdamW's state and lazy initialisation stay out of the peak
    peak = peak_bytes(step, device, w.clear)
    with flop_counter_mode() as flops:
        step()
    timing = time_fn(step, device)
    work = Work("step_time", "train_", tokens=cfg.batch * (cfg.seq - 1), flops=flops.get_total_flops(),
                dtype=str(dtype).removeprefix("torch."))
    return {"peak_mem_bytes": peak, "step_flops": flops.get_total_flops()}, timing, work


def training_workload(cfg: TrainConfig, device, dtype) -> Workload:
    """The AdamW step `_training_cost` measures: a fresh, seeded model (fp32 weights, autocast to `dtype`)."""
    torch.manual_seed(cfg.seed)
    model = build_module(lambda: MTPModel(cfg.model, cfg.mtp), device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    batch = torch.randint(cfg.model.vocab, (cfg.batch, cfg.seq), generator=torch.Generator().manual_seed(0))
    batch = batch.to(device)

    def clear():
        opt.zero_grad(set_to_none=True)

    def step():
        clear()  # first: the peak is then the step's own, gradients included, whether or not `clear` ran before
        # no autocast context at all in fp32: torch refuses one for the meta device, even disabled (a plan runs its
        # own there: bench.plan_autocast)
        with torch.autocast(torch.device(device).type, dtype=dtype) if dtype != torch.float32 else nullcontext():
            loss = mtp_loss(model, batch)[0]
        loss.backward()
        opt.step()

    return Workload(step, modules=(model,), optimizer=opt, clear=clear)


def _decode(model: MTPModel, prompts, n: int, device,
            fp32_matches: bool | None) -> tuple[dict, dict[str, Timing], list[Work]]:
    """Greedy decoding of the main model from each prompt, and speculative decoding with the MTP draft, timed in
    interleaved rounds (bench.timing.time_interleaved) so that a load change on a shared machine falls on both
    alike. A whole decode is hundreds of small host-launched forwards: its wall time is the cost."""
    out = {}

    def greedy():
        out["greedy"] = [greedy_decode(model.main, p[None], n) for p in prompts]

    def speculative():
        out["speculative"] = [speculative_decode(model, p[None], n) for p in prompts]

    fns = {"greedy": greedy} if model.mtp_cfg.depth == 0 else {"greedy": greedy, "speculative": speculative}
    t = time_interleaved(fns, device, DECODE_ROUNDS)
    total = len(prompts) * n
    g = t["greedy"]
    work = [Work("greedy_time", "greedy_", tokens=total)]
    if model.mtp_cfg.depth == 0:
        return {}, {"greedy_time": g}, [*work, Work("greedy_time", "decode_", tokens=total)]
    s, runs = t["speculative"], out["speculative"]
    drafted, accepted = sum(st.drafted for _, st in runs), sum(st.accepted for _, st in runs)
    divergence, margin = _divergence(model, [a for a, _ in runs], out["greedy"], prompts.shape[1])
    metrics = {
        "speedup_x": g.median_ms / s.median_ms,
        "decode_acceptance_rate": accepted / drafted if drafted else None,
        "tokens_per_forward": total / sum(st.main_forwards for _, st in runs),
        # Speculative decoding is greedy decoding token for token in exact arithmetic, but in bf16 the 2-token verify
        # forward and greedy's 1-token forward round their GEMMs differently, so a near-tie between the top two
        # logits can flip, and everything after follows a different prefix. The flag therefore comes from fp32
        # decoding of the same weights (the timed runs themselves on CPU, which decode in fp32); the timed runs'
        # first divergence and the logit margin there say whether a bf16 difference is such a tie.
        "matches_greedy": divergence < 0 if fp32_matches is None else fp32_matches,
        "greedy_divergence_token": divergence,
        "divergence_logit_margin": margin,
    }
    work.append(Work("speculative_time", "decode_", tokens=total))
    return metrics, {"greedy_time": g, "speculative_time": s}, work


def _fp32_agreement(model: MTPModel, prompts, n: int) -> bool:
    """Whether speculative decoding emits greedy decoding's tokens from every prompt, decoding in fp32 (untimed)."""
    model = model.float()
    return all(torch.equal(speculative_decode(model, p[None], n)[0], greedy_decode(model.main, p[None], n))
               for p in prompts)


def _divergence(model: MTPModel, speculative: list, greedy: list, prompt_len: int) -> tuple[int, float | None]:
    """(index of the first generated token where the two decoders differ, lowest over prompts, or -1; the main
    model's top-1 minus top-2 logit for that token in greedy's sequence, from a full forward in the run dtype, or
    None). A margin of a few ulps of the logits (bf16: 2^-8 relative) is a rounding tie, not a wrong token."""
    first = [(int((a[0, prompt_len:] != b[0, prompt_len:]).nonzero()[0, 0]), b)
             for a, b in zip(speculative, greedy) if not torch.equal(a, b)]  # (token index, greedy's sequence)
    if not first:
        return -1, None
    i, seq = min(first, key=lambda pair: pair[0])
    with torch.no_grad():
        top = model.main(seq[:, :prompt_len + i])[0, -1].float().topk(2).values  # logits for generated token i
    return i, (top[0] - top[1]).item()

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from impls.checkpointing import VARIANTS, Transformer, TransformerConfig
from impls.checkpointing.check import saved_bytes
from impls.checkpointing.reference import forward, loss_fn, make_batch
from impls.checkpointing.sqrt import segments
from tests.optional import CUDA, needs_cuda

ODD = TransformerConfig(d_model=48, n_heads=3, n_layers=5)  # head_dim 16, seq 42 below: no power of two anywhere
DEEP = TransformerConfig(d_model=32, n_heads=2, n_layers=8)  # enough layers for sqrt to split into 3 segments



def step(variant, model, x, target):
    """Loss and the gradients of the input and every parameter after one forward+backward."""
    model.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    loss = loss_fn(variant(model, x), target)
    loss.backward()
    return loss.detach(), [x.grad, *(p.grad for p in model.parameters())]


def setup(cfg, device="cpu", dtype=torch.float32, batch=2, seq=16):
    torch.manual_seed(0)
    model = Transformer(cfg).to(device, dtype)
    return (model, *make_batch(cfg, batch, seq, device, dtype))


class OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts: dict[str, int] = {}
        self.pinned = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.counts[name] = self.counts.get(name, 0) + 1
        self.pinned += bool((kwargs or {}).get("pin_memory"))
        return func(*args, **(kwargs or {}))


def test_variants_registered_in_order():
    assert list(VARIANTS) == ["none", "full", "sqrt", "selective", "offload"]
    assert VARIANTS["none"] is forward


@pytest.mark.parametrize(
    "device, dtype, atol, rtol",
    [
        # On CPU every variant reproduces the reference bit for bit, in fp32 and bf16 alike: recompute reruns the same
        # deterministic kernels on identical inputs, SAC replays saved outputs unchanged, and offload to CPU is a
        # no-op. Any difference at all means the recompute diverged, so no tolerance is granted.
        pytest.param("cpu", torch.float32, 0.0, 0.0, id="cpu-fp32"),
        pytest.param("cpu", torch.bfloat16, 0.0, 0.0, id="cpu-bf16"),
        # On CUDA the memory-efficient attention backward accumulates with atomics, so even two reference runs differ
        # in the last bits: fp32 gradients (~1e-3 here) by ~1e-7 relative, bf16 by one ulp (2^-8 = 0.4%).
        pytest.param("cuda", torch.float32, 1e-6, 1e-4, id="cuda-fp32", marks=CUDA),
        pytest.param("cuda", torch.bfloat16, 1e-3, 2e-2, id="cuda-bf16", marks=CUDA),
    ],
)
@pytest.mark.parametrize("name", [n for n in VARIANTS if n != "none"])
def test_matches_reference(name, device, dtype, atol, rtol):
    model, x, target = setup(ODD, device, dtype, seq=42)
    ref_loss, ref_grads = step(forward, model, x, target)
    loss, grads = step(VARIANTS[name], model, x, target)
    torch.testing.assert_close(loss, ref_loss, atol=atol, rtol=rtol)
    assert len(grads) == len(ref_grads) == 1 + len(list(model.parameters()))
    for g, ref in zip(grads, ref_grads, strict=True):
        assert g is not None
        torch.testing.assert_close(g, ref, atol=atol, rtol=rtol)


def total_flops(name, model, x, target):
    with FlopCounterMode(display=False) as counter:
        step(VARIANTS[name], model, x, target)
    return counter.get_total_flops()


def test_recompute_flops():
    model, x, target = setup(DEEP)
    ref = total_flops("none", model, x, target)
    ratio = {name: total_flops(name, model, x, target) / ref for name in VARIANTS}
    # Forward + backward is 3 forwards of matmul FLOPs. Non-reentrant checkpoint stops recomputing once the last
    # tensor backward needs is rebuilt, so fc2 (4 of the 12 d^2 per token) is never rerun: full = (3 + 8/12) / 3
    # = 1.222 when only matmuls count (the CPU fused SDPA op has no FLOP formula); counted attention moves it a little.
    assert 1.2 <= ratio["full"] <= 1.45
    # sqrt: segments of 3, 2 and 3 blocks, all recomputed but for each segment's last fc2: (3 + 84/96) / 3 = 1.29
    assert [len(s) for s in segments(DEEP.n_layers)] == [3, 2, 3]
    assert ratio["full"] < ratio["sqrt"] <= 1.45
    # SAC hands back the saved matmul and attention outputs during recompute, so none of their FLOPs repeat.
    assert ratio["selective"] == pytest.approx(1.0, abs=1e-9)
    assert ratio["offload"] == pytest.approx(1.0, abs=1e-9)


def op_counts(name, model, x, target):
    with OpCounter() as counter:
        step(VARIANTS[name], model, x, target)
    return counter.counts


def test_selective_replays_saved_matmuls():
    model, x, target = setup(DEEP)
    counts = {name: op_counts(name, model, x, target) for name in ("none", "full", "selective")}
    mms = {name: c.get("mm", 0) + c.get("addmm", 0) for name, c in counts.items()}
    attn = {name: sum(n for op, n in c.items() if "scaled_dot_product" in op) for name, c in counts.items()}
    # full reruns 3 of the 4 Linears per block (fc2 is past early stop): 8 layers * 3 more addmm calls.
    assert mms["full"] == mms["none"] + 3 * DEEP.n_layers
    assert mms["selective"] == mms["none"]
    assert attn["full"] > attn["none"] == attn["selective"] > 0


def test_saved_bytes():
    batch, seq = 2, 16
    model, x, _ = setup(DEEP, batch=batch, seq=seq)
    x.requires_grad_()
    saved = {name: saved_bytes(variant, model, x)["cpu"] for name, variant in VARIANTS.items()}
    # full keeps one fp32 [B, S, D] per block boundary (x itself excluded, the final norm's input included) plus
    # the final LayerNorm's fp32 mean and rstd, each [B, S, 1].
    per_input = batch * seq * DEEP.d_model * 4
    assert saved["full"] == DEEP.n_layers * per_input + 2 * batch * seq * 4
    # sqrt keeps one input per segment: 3 instead of 8 (its price is a whole segment live during recompute)
    assert saved["sqrt"] == len(segments(DEEP.n_layers)) * per_input + 2 * batch * seq * 4
    assert saved["sqrt"] < saved["full"] < saved["none"]
    # selective keeps, per block: its input, qkv (3 D), the attention output (D) and its log-sum-exp ([B, H, S]),
    # proj (D) and fc1 (4 D) outputs; not fc2's. That is 10 [B, S, D] per block where none keeps ~16.
    lse = batch * DEEP.n_heads * seq * 4
    assert saved["selective"] == DEEP.n_layers * (10 * per_input + lse) + 2 * batch * seq * 4
    assert saved["selective"] < saved["none"]
    assert saved["offload"] == saved["none"]  # on CPU the host copies are the tensors themselves


@needs_cuda
def test_offload_moves_activations_to_pinned_host():
    model, x, _ = setup(DEEP, "cuda")
    x.requires_grad_()
    ref = saved_bytes(forward, model, x)
    offloaded = saved_bytes(VARIANTS["offload"], model, x)
    assert offloaded.get("cuda", 0) < ref["cuda"] / 10
    assert offloaded["cpu"] >= ref["cuda"] / 2
    with OpCounter() as counter:  # the host copies are allocated pinned, so copies back can overlap compute
        VARIANTS["offload"](model, x)
    assert counter.pinned > 0


def test_config_checks_itself():
    with pytest.raises(AssertionError):
        TransformerConfig(d_model=48, n_heads=5, n_layers=2)
    with pytest.raises(AssertionError):
        TransformerConfig(d_model=48, n_heads=3, n_layers=0)


def test_make_batch_is_deterministic():
    a = make_batch(ODD, 2, 42, "cpu", torch.float32, seed=3)
    b = make_batch(ODD, 2, 42, "cpu", torch.float32, seed=3)
    c = make_batch(ODD, 2, 42, "cpu", torch.float32, seed=4)
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])

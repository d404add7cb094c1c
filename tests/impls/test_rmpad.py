import pytest
import torch

from impls.rmpad import BACKENDS, Decoder, DecoderConfig, flash, forward_unpadded, nested, segments, supports
from impls.rmpad.lengths import DISTRIBUTIONS, make_lengths, pad_fraction
from impls.rmpad.reference import make_batch
from impls.rmpad.unpad import pad_input, position_ids_from_cu_seqlens, unpad_input
from impls.rmpad.unpadded import logits_unpadded
from tests.optional import needs_cuda

TINY = DecoderConfig(vocab=64, d_model=32, n_heads=2, n_layers=2)  # head_dim 16
LENGTHS = [
    pytest.param([1, 7, 129], id="odd-1-7-129"),
    pytest.param([129], id="one-at-max-no-pad"),
    pytest.param([5, 129, 1, 42], id="one-at-max-padded"),
]



def setup(lengths, device="cpu", dtype=torch.float32):
    torch.manual_seed(0)
    model = Decoder(TINY).to(device, dtype)
    return (model, *make_batch(TINY, lengths, seed=1, device=device))


def train_step(model, fn):
    model.zero_grad(set_to_none=True)
    loss = fn()
    loss.backward()
    return loss.detach(), [p.grad for p in model.parameters()]


# --- unpad / pad ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lengths", LENGTHS)
def test_unpad_then_pad_is_identity(lengths):
    _, _, mask = setup(lengths)
    B, L = mask.shape
    x = torch.randn(B, L, 3, 2) * mask[..., None, None]  # [B, L, 3, 2], zeros at pads as pad_input writes them
    xu, indices, cu_seqlens, max_seqlen = unpad_input(x, mask)
    assert xu.shape == (sum(lengths), 3, 2) and indices.shape == (sum(lengths),)
    assert cu_seqlens.dtype == torch.int32 and cu_seqlens.tolist() == [0, *torch.tensor(lengths).cumsum(0).tolist()]
    assert max_seqlen == max(lengths)
    assert torch.equal(pad_input(xu, indices, B, L), x)


def test_unpad_pad_gradients_flow_to_real_positions_only():
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    x = torch.randn(2, 3, 4, requires_grad=True)
    xu, indices, _, _ = unpad_input(x, mask)
    pad_input(xu * 2, indices, 2, 3).sum().backward()
    assert torch.equal(x.grad, 2 * mask[..., None].float().expand(2, 3, 4))


def test_position_ids_restart_per_sequence():
    cu = torch.tensor([0, 3, 4, 6], dtype=torch.int32)
    assert position_ids_from_cu_seqlens(cu, 6).tolist() == [0, 1, 2, 0, 0, 1]


# --- unpadded model against the padded reference -------------------------------------------------------------------


def test_padded_reference_is_finite_at_pad_rows():
    model, ids, mask = setup([1, 7, 129])
    assert torch.isfinite(model.logits(ids, mask)).all()  # pad query rows see themselves, not an empty key set


@pytest.mark.parametrize(
    "atol, rtol",
    [
        # fp32 on CPU. The two paths run different SDPA calls (one [B, H, L, L] call with a boolean mask vs one causal
        # call per sequence) and sum the cross-entropy in a different order, so results differ by a few fp32 ulps
        # (measured: loss gap 0, gradients <= ~1e-8 on values ~1e-2); 1e-6 / 1e-5 leaves ~100x headroom.
        pytest.param(1e-6, 1e-5, id="cpu-fp32"),
    ],
)
@pytest.mark.parametrize("lengths", LENGTHS)
def test_segments_loss_and_grads_match_reference(lengths, atol, rtol):
    model, ids, mask = setup(lengths)
    ref_loss, ref_grads = train_step(model, lambda: model(ids, mask))
    loss, grads = train_step(model, lambda: forward_unpadded(model, ids, mask, "segments"))
    torch.testing.assert_close(loss, ref_loss, atol=atol, rtol=rtol)
    assert len(grads) == len(ref_grads) == len(list(model.parameters()))
    for g, ref in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, ref, atol=atol, rtol=rtol)


def test_segments_never_hold_a_segments_scores():
    """Each segment reaches SDPA 4-D, so a fused kernel runs: a 3-D one took the math path, whose n x n scores (and
    their softmax) it materialised on every device."""
    from bench.memory import TensorMemoryTracker

    n, heads, dh = 512, 2, 16
    q, k, v = (torch.randn(n, heads, dh, requires_grad=True) for _ in range(3))
    cu = torch.tensor([0, n], dtype=torch.int32)
    with TensorMemoryTracker() as tracked:
        out = segments.varlen_attention(q, k, v, cu, n)
        out.sum().backward()
    scores = heads * n * n * 4
    assert tracked.peak_bytes("cpu") < scores / 2, f"peak {tracked.peak_bytes('cpu')} B: the scores are {scores} B"


@pytest.mark.parametrize("lengths", LENGTHS)
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_forward_at_real_positions_matches_reference(backend, lengths):
    ok, why = supports(backend, "cpu", backward=False)
    if not ok:
        pytest.skip(why)
    model, ids, mask = setup(lengths)
    with torch.no_grad():  # forward only: flex has no CPU backward and refuses inputs that require grad
        ref = unpad_input(model.logits(ids, mask), mask)[0]  # [T, V]
        out = logits_unpadded(model, ids, mask, backend)[0]
    # Same fp32 ulp-level kernel differences as above (measured <= 5e-7 on logits ~1).
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_training_step_matches_reference_where_supported(backend):
    ok, why = supports(backend, "cpu")
    if not ok:
        pytest.skip(why)
    model, ids, mask = setup([1, 7, 129])
    ref_loss, ref_grads = train_step(model, lambda: model(ids, mask))
    loss, grads = train_step(model, lambda: forward_unpadded(model, ids, mask, backend))
    torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=1e-5)  # as in the segments test
    for g, ref in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, ref, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    "backend, message",
    [
        pytest.param("flex", "FlexAttention does not support backward on CPU", id="flex"),
        pytest.param("nested", "not supported when is_causal=True", id="nested-causal"),
    ],
)
def test_cpu_training_unsupported_is_reported_with_torch_reason(backend, message):
    ok, why = supports(backend, "cpu")
    assert not ok, why
    if nested.NO_DRIVER in why:  # a CUDA build of torch 2.11 on a machine without a driver refuses sooner
        pytest.skip(why)
    assert message in why, why


def test_nested_encoder_form_matches_per_sequence_sdpa_forward_and_backward():
    ok, why = nested.supports("cpu", causal=False)
    assert ok, why
    torch.manual_seed(0)
    cu = torch.tensor([0, 1, 8, 137], dtype=torch.int32)  # lengths 1, 7, 129
    q, k, v = (torch.randn(137, 2, 16, requires_grad=True) for _ in range(3))  # [T, H, Dh]
    w = torch.randn(137, 2, 16)  # a loss weight, so every output element gets a distinct gradient
    outs, grads = [], []
    for fn in (nested.varlen_attention, segments.varlen_attention):
        out = fn(q, k, v, cu, 129, causal=False)
        outs.append(out.detach())
        grads.append(torch.autograd.grad((out * w).sum(), (q, k, v)))
    # fp32: jagged math SDPA vs one strided SDPA per sequence differ in reduction order (measured ~2e-6 on grads ~1).
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)
    for g, ref in zip(grads[0], grads[1], strict=True):
        torch.testing.assert_close(g, ref, atol=1e-5, rtol=1e-5)


@needs_cuda
def test_flash_backend():
    ok, why = flash.available()
    if not ok:
        pytest.skip(why)
    model, ids, mask = setup([1, 7, 129], "cuda", torch.bfloat16)
    with torch.no_grad():
        ref = unpad_input(model.logits(ids, mask), mask)[0].float()
        out = logits_unpadded(model, ids, mask, "flash")[0].float()
    # bf16 keeps 8 mantissa bits: kernels that round differently disagree by a few ulps (2^-8 = 0.4%) of ~1 logits.
    torch.testing.assert_close(out, ref, atol=5e-2, rtol=2e-2)


@needs_cuda
@pytest.mark.parametrize("backend", ["segments", "nested", "flex"])
def test_cuda_training_step_matches_reference(backend):
    ok, why = supports(backend, "cuda")
    if not ok:
        pytest.skip(why)
    model, ids, mask = setup([1, 7, 129], "cuda")
    ref_loss, ref_grads = train_step(model, lambda: model(ids, mask))
    loss, grads = train_step(model, lambda: forward_unpadded(model, ids, mask, backend))
    # fp32 on CUDA: memory-efficient / Triton attention kernels tile and accumulate differently from the masked
    # reference call (and backward uses atomics), ~1e-6 relative on these sizes.
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-4)
    for g, ref in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, ref, atol=1e-5, rtol=1e-4)


@needs_cuda
def test_flash_training_step_matches_reference_in_bf16():
    # the suite trains with flash: its backward too, against the padded reference in the same dtype
    ok, why = flash.available()
    if not ok:
        pytest.skip(why)
    model, ids, mask = setup([1, 7, 129], "cuda", torch.bfloat16)
    ref_loss, ref_grads = train_step(model, lambda: model(ids, mask))
    loss, grads = train_step(model, lambda: forward_unpadded(model, ids, mask, "flash"))
    # bf16: two kernels that round differently (2^-8 relative a value) and sum in other orders; held per tensor as
    # a relative L2 error, not per element, where a gradient's near-zero entries make any elementwise rtol fail
    torch.testing.assert_close(loss.float(), ref_loss.float(), atol=0, rtol=2e-2)
    for g, ref in zip(grads, ref_grads, strict=True):
        assert ((g.float() - ref.float()).norm() / ref.float().norm().clamp(min=1e-12)).item() < 5e-2


def test_unknown_backend_names_the_choices():
    with pytest.raises(ValueError, match="segments"):
        supports("nope", "cpu")


# --- lengths ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dist", list(DISTRIBUTIONS))
def test_lengths_deterministic_and_in_range(dist):
    a = make_lengths(dist, 500, 129, seed=3)
    assert a == make_lengths(dist, 500, 129, seed=3)
    assert a != make_lengths(dist, 500, 129, seed=4)
    assert len(a) == 500 and all(isinstance(n, int) and 1 <= n <= 129 for n in a)
    assert make_lengths(dist, 3, 1, seed=0) == [1, 1, 1]


@pytest.mark.parametrize(
    "args, match",
    [
        (("gamma", 4, 16), "uniform, lognormal, zipf, bimodal"),
        (("uniform", 0, 16), "n must be"),
        (("uniform", 4, 0), "max_len must be"),
        (("uniform", 2.5, 16), "n must be"),
    ],
)
def test_lengths_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        make_lengths(*args)


def test_pad_fraction_exact():
    assert pad_fraction([2, 4]) == 0.25  # 6 real tokens in a [2, 4] batch
    assert pad_fraction([4, 4], padded_len=8) == 0.5
    assert pad_fraction([1, 7, 129]) == 1 - 137 / (3 * 129)
    for bad in ([], [0, 3], [3, 1.5]):
        with pytest.raises(ValueError):
            pad_fraction(bad)
    with pytest.raises(ValueError, match="shorter"):
        pad_fraction([5], padded_len=4)


def test_make_batch_is_right_padded_and_rejects_bad_lengths():
    ids, mask = make_batch(TINY, [3, 1], seed=0)
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert (ids[mask == 0] == 0).all() and (ids[mask == 1] > 0).all()
    for bad in ([], [0, 2], [2.0]):
        with pytest.raises(ValueError):
            make_batch(TINY, bad)

"""Attention variants against MHA and MLA's absorbed form against its naive form: outputs, gradients, incremental
decoding against full-sequence causal attention, and cache bytes counted from the tensors against the formula."""

import pytest
import torch

from impls.mla import SHAPES, VARIANTS, KVCache, Shape, build, cache_bytes_per_token, config
from impls.mla.absorbed import AbsorbedMLA
from impls.mla.common import apply_rope, positions, rope_tables
from impls.mla.gqa import GQAConfig
from impls.mla.mla import MLAConfig
from impls.mla.reference import MHA

TINY = SHAPES["tiny"]  # 6 heads of 10 channels, d_c 20, d_rope 4, GQA 2 groups
B, S = 2, 11


def pair(dtype=torch.float32):
    """A naive MLA layer and an absorbed one holding the same weights, the absorbed one absorbed for every call."""
    torch.manual_seed(0)
    naive = build("mla_naive", TINY, dtype=dtype)
    absorbed = AbsorbedMLA(config("mla_absorbed", TINY), dtype=dtype, naive_prefill=False)
    absorbed.load_state_dict(naive.state_dict())
    return naive, absorbed


def inputs(dtype=torch.float32, seq=S):
    return torch.randn(B, seq, TINY.d_model, generator=torch.Generator().manual_seed(1)).to(dtype)


def test_variants_in_order_with_mha_first():
    assert VARIANTS == ("mha", "gqa", "mqa", "mla_naive", "mla_absorbed")
    assert type(build("mha", TINY)) is MHA


@pytest.mark.parametrize("dtype, atol, rtol", [
    # fp32: the two forms sum in different orders (d_head then d_c against d_c alone): ~1e-7 measured
    pytest.param(torch.float32, 1e-5, 1e-4, id="fp32"),
    # bf16 (8 significand bits): the absorbed form rounds the d_c-wide folded query and the latent average, the naive
    # one the up-projected keys and values; outputs up to ~1 differ by ~one ulp there (0.0039 measured)
    pytest.param(torch.bfloat16, 1e-2, 2e-2, id="bf16"),
])
def test_absorbed_equals_naive_for_prefill_and_decode(dtype, atol, rtol):
    naive, absorbed = pair(dtype)
    x = inputs(dtype)
    torch.testing.assert_close(absorbed(x), naive(x), atol=atol, rtol=rtol)
    caches = naive.new_cache(B, S), absorbed.new_cache(B, S)
    for layer, cache in zip((naive, absorbed), caches):
        layer(x[:, :-1], cache)
    torch.testing.assert_close(absorbed(x[:, -1:], caches[1]), naive(x[:, -1:], caches[0]), atol=atol, rtol=rtol)
    for name in ("c_kv", "k_r"):  # both forms cache the very same latents
        assert torch.equal(caches[0].tensors[name], caches[1].tensors[name])


def test_absorbed_prefill_in_query_chunks_equals_naive(monkeypatch):
    # a score budget of 3 query rows per call: the 11-token prefill runs as 4 chunks, each over its causal prefix
    monkeypatch.setattr("impls.mla.absorbed.SCORE_BYTES", 4 * B * TINY.n_heads * S * 3)
    naive, absorbed = pair()
    torch.testing.assert_close(absorbed(inputs()), naive(inputs()), atol=1e-5, rtol=1e-4)


def test_the_absorbed_variant_prefills_naive_and_decodes_absorbed(monkeypatch):
    """build("mla_absorbed") is MLA as deployed: the prefill is the naive form's, bit for bit, and only the one-token
    decode step goes through the absorbed attention."""
    torch.manual_seed(0)
    naive = build("mla_naive", TINY)
    deployed = build("mla_absorbed", TINY)
    deployed.load_state_dict(naive.state_dict())
    absorbed_calls = []
    attend = AbsorbedMLA._attend
    monkeypatch.setattr(AbsorbedMLA, "_attend", lambda self, q_c, *a: absorbed_calls.append(q_c.shape[2])
                        or attend(self, q_c, *a))
    x = inputs()
    caches = naive.new_cache(B, S), deployed.new_cache(B, S)
    assert torch.equal(deployed(x[:, :-1], caches[1]), naive(x[:, :-1], caches[0]))
    assert absorbed_calls == []
    torch.testing.assert_close(deployed(x[:, -1:], caches[1]), naive(x[:, -1:], caches[0]), atol=1e-5, rtol=1e-4)
    assert absorbed_calls == [1]  # the decode step: one query per head


def test_absorbed_gradients_equal_naive():
    # The absorbed form serves decoding, but it is differentiable and must train the same weights the same way.
    naive, absorbed = pair()
    grads = []
    for layer in (naive, absorbed):
        x = inputs().requires_grad_()
        layer(x).square().mean().backward()
        grads.append([x.grad, *(p.grad for p in layer.parameters())])
    for g_naive, g_absorbed in zip(*grads):
        torch.testing.assert_close(g_absorbed, g_naive, atol=1e-6, rtol=1e-4)


def rope(x: torch.Tensor, start: int = 0) -> torch.Tensor:
    """RoPE written out independently of impls/mla/common.py, as a complex multiply in fp64: channel j and j + d/2
    form z_j = x_j + i x_{j+d/2}, rotated by e^{i m theta_j} at position m, theta_j = 10000^(-2j/d) (RoFormer eq. 34,
    in the implementation's rotate-half layout; DeepSeek's reference pairs neighbours 2j, 2j+1, see the test below)."""
    d, n = x.shape[-1], x.shape[-2]
    theta = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)  # [d/2]
    angle = torch.arange(start, start + n, dtype=torch.float64)[:, None] * theta  # [S, d/2]
    z = torch.view_as_complex(torch.stack(x.double().chunk(2, dim=-1), dim=-1).contiguous())  # [..., S, d/2]
    rotated = torch.view_as_real(z * torch.polar(torch.ones_like(angle), angle))  # [..., S, d/2, 2]
    return torch.cat(rotated.unbind(-1), dim=-1)


def test_naive_mla_is_the_papers_attention():
    """fp64 from the weights: q = [q_C, RoPE(q_R)] per head, k = [W_UK c_KV, RoPE(k_R)] with k_R shared by every head,
    v = W_UV c_KV, softmax scale 1/sqrt(d_head + d_rope) (DeepSeek-V2 eqs. 37-47), RoPE from the test's own `rope`."""
    naive, _ = pair()
    cfg = naive.cfg
    x = inputs().double()
    w = {k: v.double() for k, v in naive.state_dict().items()}
    rms = torch.nn.functional.rms_norm
    c_q = rms(x @ w["wq_a.weight"].T, (cfg.d_cq,), w["q_norm.weight"], eps=1e-6)
    q = (c_q @ w["wq_b.weight"].T).view(B, S, cfg.n_heads, cfg.d_head + cfg.d_rope)
    c_kv, k_r = (x @ w["wkv_a.weight"].T).split([cfg.d_c, cfg.d_rope], dim=-1)
    c_kv = rms(c_kv, (cfg.d_c,), w["kv_norm.weight"], eps=1e-6)
    q_r = rope(q[..., cfg.d_head:].transpose(1, 2))  # [B, H, S, d_rope]
    k_r = rope(k_r)  # [B, S, d_rope]: one rotary key for all heads
    kv = (c_kv @ w["wkv_b.weight"].T).view(B, S, cfg.n_heads, -1)
    k_c, v = kv[..., :cfg.d_head], kv[..., cfg.d_head:]
    scores = (torch.einsum("bshd,bthd->bhst", q[..., :cfg.d_head], k_c)
              + torch.einsum("bhsr,btr->bhst", q_r, k_r)) / (cfg.d_head + cfg.d_rope) ** 0.5
    scores = scores.masked_fill(~torch.ones(S, S, dtype=torch.bool).tril(), float("-inf"))
    o = torch.einsum("bhst,bthd->bshd", scores.softmax(-1), v).reshape(B, S, -1) @ w["wo.weight"].T
    torch.testing.assert_close(naive(inputs()).double(), o, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("start, atol", [
    # the implementation's fp32 angles and cos/sin against fp64: 1.4e-7 measured over positions 0-6, 2.5e-7 over 5-11
    pytest.param(0, 1e-6, id="from-0"), pytest.param(5, 1e-6, id="from-5"),
    # at ~1000 rad an fp32 angle carries ~6e-5 rad of rounding: 1.8e-5 measured
    pytest.param(1000, 1e-4, id="from-1000"),
])
def test_rope_is_the_complex_rotation(start, atol):
    x = torch.randn(3, 7, 16, generator=torch.Generator().manual_seed(2))
    cos, sin = rope_tables(positions(start, 7, "cpu"), 16)
    torch.testing.assert_close(apply_rope(x, cos, sin).double(), rope(x, start), atol=atol, rtol=0)


def test_rope_scores_depend_only_on_the_position_offset():
    # q_m . k_n after RoPE is a function of n - m: shifting both positions by the same amount keeps every score
    g = torch.Generator().manual_seed(3)
    q, k = torch.randn(5, 8, generator=g, dtype=torch.float64), torch.randn(5, 8, generator=g, dtype=torch.float64)
    scores = []
    for shift in (0, 3, 40):
        cos, sin = (t.double() for t in rope_tables(positions(shift, 5, "cpu"), 8))
        scores.append(apply_rope(q, cos, sin) @ apply_rope(k, cos, sin).T)  # [5, 5]: query m, key n
    for s in scores[1:]:
        torch.testing.assert_close(s, scores[0], atol=1e-5, rtol=0)  # fp32 tables, fp64 dot products
    assert not torch.allclose(scores[0], q @ k.T, atol=1e-3)  # and it does rotate


def test_rope_halves_equal_deepseeks_interleaved_pairs_up_to_a_channel_permutation():
    # DeepSeek-V3's inference/model.py rotates neighbours (2j, 2j+1) as one complex number; moving channel 2j to j and
    # 2j+1 to j + d/2 turns that layout into this one, so weights trained either way differ by this permutation only
    x = torch.randn(2, 9, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    angle = torch.arange(9, dtype=torch.float64)[:, None] * 10000.0 ** (-torch.arange(0, 8, 2) / 8)
    z = torch.view_as_complex(x.view(2, 9, 4, 2))  # neighbours as (real, imaginary)
    interleaved = torch.view_as_real(z * torch.polar(torch.ones_like(angle), angle)).flatten(-2)
    perm = torch.cat([torch.arange(0, 8, 2), torch.arange(1, 8, 2)])  # halves layout channel c <- interleaved perm[c]
    cos, sin = (t.double() for t in rope_tables(positions(0, 9, "cpu"), 8))
    torch.testing.assert_close(apply_rope(x[..., perm], cos, sin), interleaved[..., perm], atol=1e-6, rtol=0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_decoding_with_the_cache_equals_full_causal_attention(variant):
    torch.manual_seed(0)
    layer = build(variant, TINY)
    x = inputs()
    cache = layer.new_cache(B, S)
    # prefill 6, a chunk of 3 (queries offset into the cache), then one token a step
    steps = [layer(x[:, a:b], cache) for a, b in ((0, 6), (6, 9), (9, 10), (10, 11))]
    assert cache.length == S
    torch.testing.assert_close(torch.cat(steps, dim=1), layer(x), atol=1e-5, rtol=1e-4)


def test_gqa_is_mha_with_keys_and_values_shared_per_group():
    torch.manual_seed(0)
    gqa, mha = build("gqa", TINY), build("mha", TINY)
    group = TINY.n_heads // TINY.kv_heads
    with torch.no_grad():
        mha.wq.weight.copy_(gqa.wq.weight)
        mha.wo.weight.copy_(gqa.wo.weight)
        for name in ("wk", "wv"):  # [H_kv * Dh, D] -> each KV head's rows repeated for the query heads of its group
            w = getattr(gqa, name).weight.view(TINY.kv_heads, TINY.d_head, -1)
            getattr(mha, name).weight.copy_(w.repeat_interleave(group, dim=0).reshape(-1, TINY.d_model))
    x = inputs().requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    out, ref = gqa(x), mha(x_ref)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
    out.square().sum().backward()
    ref.square().sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_counted_cache_bytes_equal_the_formula(variant, dtype):
    layer = build(variant, TINY, dtype=dtype)
    cache = layer.new_cache(3, 5)
    layer(inputs(dtype, seq=5)[:1].expand(3, -1, -1), cache)
    assert cache.bytes_per_token() == cache_bytes_per_token(config(variant, TINY), dtype)
    expected = {"mha": 2 * 6 * 10, "gqa": 2 * 2 * 10, "mqa": 2 * 10, "mla_naive": 20 + 4, "mla_absorbed": 20 + 4}
    assert cache.elements_per_token() == expected[variant]


@pytest.mark.parametrize("variant, elements", [
    ("mha", 32_768), ("gqa", 2_048), ("mqa", 256), ("mla_naive", 576), ("mla_absorbed", 576)])
def test_deepseek_v3_cache_is_576_elements_against_32768_for_mha(variant, elements):
    shape = SHAPES["deepseek_v3"]
    assert (shape.d_model, shape.n_heads, shape.d_head, shape.d_c, shape.d_rope, shape.d_cq) == (
        7168, 128, 128, 512, 64, 1536)
    assert config(variant, shape).cache_elements_per_token == elements
    layer = build(variant, shape, device="meta", dtype=torch.bfloat16)  # ~1 GB of weights at this width: no storage
    cache = layer.new_cache(batch=2, capacity=4)
    assert cache.elements_per_token() == elements
    assert cache.bytes_per_token() == 2 * elements == cache_bytes_per_token(config(variant, shape), torch.bfloat16)


def test_latent_wider_than_the_model_is_refused():
    with pytest.raises(ValueError, match="d_c 80 is larger than the model width d_model 60"):
        MLAConfig(d_model=60, n_heads=6, d_head=10, d_rope=4, d_c=80)
    with pytest.raises(ValueError, match="d_c 80 is larger"):
        Shape(d_model=60, n_heads=6, d_head=10, d_rope=4, d_c=80, d_cq=0, kv_heads=2).mla()
    with pytest.raises(ValueError, match="d_cq"):
        MLAConfig(d_model=60, n_heads=6, d_head=10, d_rope=4, d_c=20, d_cq=61)
    with pytest.raises(ValueError, match="d_rope must be even"):
        MLAConfig(d_model=60, n_heads=6, d_head=10, d_rope=3, d_c=20)


def test_gqa_heads_must_divide_into_groups():
    with pytest.raises(ValueError, match="n_heads 6 must be a multiple of kv_heads 4"):
        GQAConfig(d_model=60, n_heads=6, head_dim=10, kv_heads=4)
    with pytest.raises(ValueError, match="multiple of kv_heads 0"):
        GQAConfig(d_model=60, n_heads=6, head_dim=10, kv_heads=0)


def test_bad_cache_use_is_refused():
    layer = build("mla_naive", TINY)
    cache = layer.new_cache(B, 4)
    with pytest.raises(ValueError, match="cache holds 4 tokens; 0 cached \\+ 5 new do not fit"):
        layer(inputs(seq=5), cache)
    with pytest.raises(ValueError, match="append needs exactly"):
        cache.append(c_kv=torch.zeros(B, 1, TINY.d_c))
    with pytest.raises(ValueError, match="disagree"):
        KVCache({"k": torch.zeros(1, 4, 2), "v": torch.zeros(1, 5, 2)})
    with pytest.raises(ValueError, match="unknown variant"):
        build("mla", TINY)

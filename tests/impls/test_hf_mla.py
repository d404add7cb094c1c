"""transformers' DeepseekV3Attention (impls/mla/hf.py) against our MLA on the same weights: prefill, decode steps over
its DynamicCache, the latents that cache holds, its bytes per token, and the conventions the mapping relies on
(interleaved RoPE, softmax scale, where the norms sit). What the adapter uses and a release moved raises ApiMoved."""

import dataclasses

import pytest
import torch

from impls.libraries import ApiMoved
from impls.mla import SHAPES, build, cache_bytes_per_token, hf
from impls.mla.absorbed import AbsorbedMLA
from impls.mla.mla import MLA, MLAConfig
from tests.optional import needs

pytestmark = needs("transformers")

B, S = 2, 13  # 12 prompt tokens and one decode step; 3 more steps where the test says
# no query latent (q_proj), and odd head counts and widths (shapes' "tiny" has a query latent): 5 heads of 6, d_c 14
NO_CQ = MLAConfig(d_model=42, n_heads=5, d_head=6, d_rope=4, d_c=14, d_cq=0, d_v=10)
CONFIGS = [pytest.param(SHAPES["tiny"].mla(), id="tiny-q_lora"), pytest.param(NO_CQ, id="odd-no-q_lora-dv10")]
# fp32 on CPU: the same ops in the same order on the same weights (the rotary rows only reordered): against the naive
# form 0.0 measured, 6e-8 without a query latent under rope_interleave (its strided rotary slices), on outputs up to
# ~0.3, prefill and four decode steps; against the absorbed form, which sums in another order, 1.8e-7
ATOL, RTOL = 1e-6, 1e-5
DTYPES = [
    pytest.param(torch.float32, ATOL, RTOL, id="fp32"),
    # bf16: the library rounds its cos/sin tables to bf16 (ours rotate in fp32) and its RMSNorm casts the normalised
    # latent before the gain; ~one ulp of outputs up to ~0.3 (4.9e-3 measured, both forms), as absorbed vs naive
    pytest.param(torch.bfloat16, 1e-2, 2e-2, id="bf16"),
]


def ours(cfg: MLAConfig, dtype=torch.float32) -> MLA:
    """Our naive layer, seeded, with norm gains away from 1 so that a misplaced or missing norm shows."""
    torch.manual_seed(0)
    layer = MLA(cfg, dtype=dtype)
    with torch.no_grad():
        for norm in (m for m in layer.modules() if isinstance(m, torch.nn.RMSNorm)):
            norm.weight.uniform_(0.5, 1.5)
    return layer


def inputs(cfg: MLAConfig, dtype=torch.float32):
    return torch.randn(B, S + 3, cfg.d_model, generator=torch.Generator().manual_seed(1)).to(dtype)  # [B, S+3, D]


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("interleave", [True, False], ids=["rope_interleave", "half_split"])
def test_prefill_and_decode_equal_the_naive_and_absorbed_forms(cfg, interleave, dtype, atol, rtol):
    naive = ours(cfg, dtype)
    absorbed = AbsorbedMLA(cfg, dtype=dtype)  # absorbed for every call, the prefill too
    absorbed.load_state_dict(naive.state_dict())
    lib = hf.from_ours(naive, interleave=interleave)
    x = inputs(cfg, dtype)
    caches = {"naive": naive.new_cache(B, S + 3), "absorbed": absorbed.new_cache(B, S + 3), "lib": lib.new_cache()}
    layers = {"naive": naive, "absorbed": absorbed, "lib": lib}
    with torch.no_grad():
        torch.testing.assert_close(lib(x[:, :S]), naive(x[:, :S]), atol=atol, rtol=rtol)  # no cache
        steps = [(0, S - 1)] + [(t, t + 1) for t in range(S - 1, S + 3)]  # the prompt, then four decode steps
        for a, b in steps:
            out = {name: layer(x[:, a:b], caches[name]) for name, layer in layers.items()}
            for name in ("naive", "absorbed"):
                torch.testing.assert_close(out["lib"], out[name], atol=atol, rtol=rtol, msg=lambda m: (
                    f"transformers {hf.version()} DeepseekV3Attention left our {name} form at tokens {a}:{b}: {m}"))
    assert caches["lib"].length == S + 3


@pytest.mark.parametrize("interleave", [True, False], ids=["rope_interleave", "half_split"])
def test_its_cache_holds_our_latents_not_keys_and_values(interleave):
    cfg = SHAPES["tiny"].mla()
    naive = ours(cfg)
    lib = hf.from_ours(naive, interleave=interleave)
    mine, theirs = naive.new_cache(B, S), lib.new_cache()
    with torch.no_grad():
        naive(inputs(cfg)[:, :S], mine), lib(inputs(cfg)[:, :S], theirs)
    held = theirs.tensors()
    assert held["keys"].shape == (B, 1, S, cfg.d_c) and held["values"].shape == (B, 1, S, cfg.d_rope)
    # kv_a_layernorm(c_KV) and the rotated k_R, in our channel order whichever RoPE layout the library reads
    torch.testing.assert_close(held["keys"][:, 0], mine.tensors["c_kv"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(held["values"][:, 0], mine.tensors["k_r"], atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", ["tiny", "deepseek_v3"])
def test_bytes_per_token_counted_from_its_tensors_equal_ours(shape, dtype):
    cfg = SHAPES[shape].mla()
    lib = hf.build(cfg, device="meta", dtype=dtype)
    cache = lib.new_cache()
    with torch.no_grad():
        lib(torch.empty(3, 5, cfg.d_model, device="meta", dtype=dtype), cache)
    assert cache.elements_per_token() == cfg.d_c + cfg.d_rope  # 576 at DeepSeek-V3's sizes
    assert cache.bytes_per_token() == cache_bytes_per_token(cfg, dtype)
    assert cache.total_bytes() == 3 * 5 * cache_bytes_per_token(cfg, dtype)


def test_rewinding_the_cache_restores_the_tensors_the_step_extended():
    cfg = SHAPES["tiny"].mla()
    lib = hf.from_ours(ours(cfg))
    cache, x = lib.new_cache(), inputs(cfg)
    with torch.no_grad():
        lib(x[:, :S], cache)
        prompt = cache.tensors()["keys"]
        first = lib(x[:, S:S + 1], cache)
        assert cache.length == S + 1
        cache.length = S  # the decode step's start: the prompt's own tensors again, not a view of the longer ones
        assert cache.tensors()["keys"] is prompt
        assert torch.equal(lib(x[:, S:S + 1], cache), first)
        longer = cache.tensors()["keys"]
        cache.length = 4  # anywhere else: the first tokens, as views
        assert cache.length == 4 and cache.tensors()["keys"].data_ptr() == longer.data_ptr()
        cache.length = 0
        assert cache.tensors() == {}
        with pytest.raises(ValueError, match="cannot be set to 7"):
            cache.length = 7


def test_conventions_the_mapping_relies_on():
    cfg = SHAPES["tiny"].mla()
    lib = hf.build(cfg)
    assert lib.attn.scaling == pytest.approx(cfg.softmax_scale)  # no YaRN mscale: rope_type "default"
    assert lib.config.rope_interleave is True  # the library's default, DeepSeek-V3's checkpoint layout
    assert lib.config._attn_implementation == "sdpa"
    assert lib.attn.q_a_layernorm.variance_epsilon == lib.attn.kv_a_layernorm.variance_epsilon == 1e-6
    torch.testing.assert_close(lib.rotary.inv_freq, 10000.0 ** -(torch.arange(0, cfg.d_rope, 2).float() / cfg.d_rope))
    assert hf.rope_order(8).tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    # the rotary rows matter: our rows copied unpermuted into the interleaved layout compute something else
    naive = ours(cfg)
    wrong = hf.HFMLA(cfg, interleave=True)
    wrong.attn.load_state_dict(hf.to_library(naive.state_dict(), cfg, interleave=False))
    x = inputs(cfg)[:, :S]
    with torch.no_grad():
        assert (wrong(x) - naive(x)).abs().max() > 1e-3


@pytest.mark.parametrize("cfg", CONFIGS)
def test_weights_map_both_ways(cfg):
    naive = ours(cfg)
    lib = hf.from_ours(naive)
    assert lib.attn.kv_b_proj.weight.data_ptr() == naive.wkv_b.weight.data_ptr()  # shared where nothing moves
    back = hf.our_state_dict(lib)
    assert back.keys() == naive.state_dict().keys()
    for name, t in naive.state_dict().items():
        assert torch.equal(back[name], t), name


def test_the_suite_variant_holds_the_naive_variants_weights():
    torch.manual_seed(0)
    naive = build("mla_naive", SHAPES["tiny"])
    from suites.mla import HF, _layer

    torch.manual_seed(0)  # as the suite seeds its build
    lib = _layer(HF, SHAPES["tiny"], "cpu", torch.float32)
    for name, t in naive.state_dict().items():
        assert torch.equal(hf.our_state_dict(lib)[name], t), name


def test_a_moved_name_is_a_broken_contract_not_a_skip(monkeypatch):
    import importlib

    module = importlib.import_module(hf.MODULE)
    hf.api.cache_clear()
    monkeypatch.delattr(module, "DeepseekV3Attention")
    try:
        with pytest.raises(ApiMoved, match="no DeepseekV3Attention"):
            hf.api()
    finally:
        hf.api.cache_clear()


def test_a_renamed_config_field_is_a_broken_contract(monkeypatch):
    fields = {f.name for f in dataclasses.fields(hf.api().DeepseekV3Config)}
    assert set(hf.config_kwargs(NO_CQ)) <= fields
    hf.api.cache_clear()
    monkeypatch.setattr(hf, "config_kwargs", lambda *a, **k: {"kv_lora_rank_renamed": 1})
    try:
        with pytest.raises(ApiMoved, match="kv_lora_rank_renamed"):
            hf.api()
    finally:
        hf.api.cache_clear()

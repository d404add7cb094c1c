"""MLA: what DeepSeek's Multi-head Latent Attention saves in KV cache against MHA, GQA and MQA, and what each form
costs in prefill and decode time over context length (DeepSeek-V2, arXiv 2405.04434).

Two parts, one `part` param each. cache: the bytes per token of each variant's cache at DeepSeek-V3's sizes (n_h 128,
d_h 128, d_c 512, d_rope 64), counted from a cache built on the meta device (the same tensors, no storage). decode: one
attention layer of a named shape prefills `context` tokens into its cache, then decodes one token over them; the cache
bytes are counted from the tensors it filled, and the absorbed form's output is compared with the naive form's on the
same weights and cache. mla_absorbed prefills in the naive form, as deployments do: the absorbed form over a 32k-token
prompt is 3.4x the attention FLOPs and, within its score budget, thousands of query chunks (impls/mla/absorbed.py);
the tests hold the absorbed prefill equal to the naive one, and the suite times the deployable path.

Beside ours, the MLA users pick: hf_deepseek_v3 is transformers' DeepseekV3Attention at the same shape, dtype and
device, holding the naive layer's weights (impls/mla/hf.py: its rotary rows reordered for its interleaved RoPE), over
its default DynamicCache, timed and counted as ours are; its decode output is compared with our naive form's.
"""

from __future__ import annotations

import torch

from bench.memory import peak_bytes
from bench.metrics import Metric, timing
from bench.suite import Measurement, NotPlannable, Part, Relative, Suite, Workload, register, requires, run_dtype
from bench.timing import time_fn
from bench.work import Work, rates
from impls.libraries import ECOSYSTEM
from impls.mla import SHAPES, KVCache, build, hf

HF = "hf_deepseek_v3"  # the library's variant

GRIDS = {
    "smoke": {"shape": "tiny", "batch": 2, "contexts": (32, 64)},
    # quick: ~20 s on a 2-core CPU for the five variants
    "quick": {"shape": "small", "batch": 1, "contexts": (256, 512, 1024, 2048)},
    # full: one DeepSeek-V3 layer (0.94 GB of MHA weights in bf16); MHA's cache at 32k x 4 sequences is 8.6 GB, the
    # naive form's up-projected keys and values as large again at each decode step
    "full": {"shape": "deepseek_v3", "batch": 4, "contexts": (1024, 4096, 16384, 32768)},
}


@register
class Mla(Suite):
    name = "mla"
    # CPU: a decode step is a handful of small ops, and on a shared 2-core VM the thread pool's wake-ups cost more
    # than they give (a 60-token tiny MHA step: 0.05 ms on one thread, ~70 ms on two beside other busy processes)
    cpu_threads = 1
    description = "KV cache for time: MLA's latent cache against MHA/GQA/MQA, prefill and decode over context length"
    variants = {
        "mha": "reference: multi-head attention, a key and a value per head cached (2 n_h d_h per token)",
        "gqa": "grouped-query attention, keys and values shared by groups of query heads (2 n_kv d_h per token)",
        "mqa": "multi-query attention, one key and value head (2 d_h per token)",
        "mla_naive": "MLA caching the latent c_KV and the shared rotary key k_R (d_c + d_rope per token); per-head "
                     "keys and values up-projected from the cache at every step",
        "mla_absorbed": "MLA as deployed: prefills in the naive form (same weights, same latent cache), then decodes "
                        "with W_UK folded into the query and W_UV into the output, attending over the cached latents; "
                        "its prefill figures are therefore the naive form's",
        HF: "transformers' DeepseekV3Attention on mla_naive's weights (sdpa, rope_interleave with the rotary rows "
            "reordered to match): its DynamicCache holds the latent c_KV and the rotated k_R, not per-head keys and "
            "values (d_c + d_rope per token, as ours), concatenated into new tensors at every step, and each step "
            "up-projects every cached latent, as mla_naive does",
    }
    libraries = {HF: hf.label()}
    requires = {HF: ("transformers", ECOSYSTEM)}
    parts = {
        "cache": Part(tuple(variants), (Relative("kv_cache_saving_x", "kv_cache_bytes_per_token", invert=True),),
                      description="bytes per token of each cache at DeepSeek-V3's sizes, counted on the meta device"),
        "decode": Part(tuple(variants), (Relative("kv_cache_saving_x", "kv_cache_bytes_per_token", invert=True),
                                         Relative("decode_speedup_x", "decode_time_ms", invert=True),
                                         Relative("prefill_speedup_x", "prefill_time_ms", invert=True)),
                       description="prefill and decode time of one layer over context length, against MHA"),
    }
    metrics = (
        # cache (and decode: the cache it filled)
        Metric("kv_cache_bytes_per_token", "exact", "lower", "bytes cached per token per layer, from the tensors"),
        Metric("kv_cache_elements_per_token", "exact", "lower", "elements cached per token per layer"),
        # decode
        *timing("decode_time", "one decode step over the cached context"),
        *rates("decode_time", "decode_", tokens=True, what="one per sequence of the batch"),
        # the cache bytes a decode step reads (weights and transients aside): MHA's decode is bound by them
        *rates("decode_time", "cache_read_", bytes=True, what="the cached context a decode step reads"),
        Metric("peak_mem_bytes", "exact", "lower", "the filled cache's bytes plus the peak bytes a decode step adds"),
        Metric("max_abs_err", "exact", "lower", "largest |variant - naive| decode output on the same weights "
               "(mla_absorbed, over the same cache; hf_deepseek_v3, over a cache our naive form prefilled)"),
        Metric("max_rel_err", "exact", "lower", "max_abs_err over the naive output's max |value| (mla_absorbed and "
               "hf_deepseek_v3)"),
        # prefill
        *timing("prefill_time", "prefilling the prompt into the cache"),
        *rates("prefill_time", "prefill_", tokens=True, what="of the prompt, batch x context"),
    )

    def grid(self, size, device):
        g = GRIDS[size]
        cache = [{"part": "cache", "shape": "deepseek_v3", "dtype": "bfloat16"}]
        return cache + [{"part": "decode", "shape": g["shape"], "batch": g["batch"], "context": c,
                         "dtype": run_dtype(device)} for c in g["contexts"]]

    def workload(self, variant, params, device, target=None):
        if params["part"] == "cache":
            raise NotPlannable("the cache part counts bytes per token on the meta device already; it has no step")
        return _decode_workload(variant, params, device)

    def measure(self, variant, params, device):
        if params["part"] == "cache":
            return _cache(variant, params, device)
        return _decode(variant, params, device)


def _layer(variant, shape, device, dtype):
    """The variant's layer; the library's holds the naive layer's weights, which the caller seeds (on meta: shapes)."""
    if variant != HF:
        return build(variant, shape, device=device, dtype=dtype)
    requires("transformers", pip=ECOSYSTEM)
    if device == "meta":
        return hf.build(shape.mla(), device=device, dtype=dtype)
    return hf.from_ours(build("mla_naive", shape, device=device, dtype=dtype))


def _cache(variant, params, device):
    """Bytes per token of the variant's cache at the shape, counted from the tensors a 4-token prompt filled, on the
    meta device (the library's DynamicCache holds nothing before a call)."""
    shape, dtype = SHAPES[params["shape"]], getattr(torch, params["dtype"])
    layer = _layer(variant, shape, "meta", dtype)
    cache = layer.new_cache(batch=1, capacity=4)
    with torch.inference_mode():
        layer(torch.empty(1, 4, shape.d_model, device="meta", dtype=dtype), cache)
    return Measurement({"kv_cache_bytes_per_token": cache.bytes_per_token(),
                        "kv_cache_elements_per_token": cache.elements_per_token()})


def _decode_parts(variant, params, device):
    """The layer, its cache, the prompt of `context` tokens and the next token, and the prefill and decode calls; on
    meta the input is shapes only."""
    dtype, shape = getattr(torch, params["dtype"]), SHAPES[params["shape"]]
    batch, context = params["batch"], params["context"]
    with torch.inference_mode():
        torch.manual_seed(0)
        layer = _layer(variant, shape, device, dtype)
        if device == "meta":
            x = torch.empty(batch, context + 1, shape.d_model, device=device, dtype=dtype)
        else:
            g = torch.Generator(device).manual_seed(0)
            x = torch.randn(batch, context + 1, shape.d_model, generator=g, device=device, dtype=dtype)  # [B, T+1, D]
        prompt, token = x[:, :context], x[:, context:]
        cache = layer.new_cache(batch, context + 1)

    def prefill():
        with torch.inference_mode():
            cache.length = 0
            return layer(prompt, cache)

    def decode():
        with torch.inference_mode():
            cache.length = context  # every call decodes the token after the same prompt
            return layer(token, cache)

    return layer, cache, prompt, token, prefill, decode


def _rewind(cache, context):
    """A Workload's `clear` for the library's cache, None for ours (written in place). DynamicCache concatenates each
    step's token into new tensors: rewinding it to the prompt before a measured step frees the last step's there, not
    inside the step, where the CUDA allocator would net them out of its peak and the CPU tracker would not."""
    if isinstance(cache, KVCache):
        return None

    def rewind():
        cache.length = context

    return rewind


def _decode_workload(variant, params, device) -> Workload:
    """One decode step over a cache the build prefilled; the case's peak counts the filled cache (`held`)."""
    layer, cache, _, _, prefill, decode = _decode_parts(variant, params, device)
    prefill()
    held = cache.total_bytes()  # the prompt's cache (ours: its whole capacity)
    return Workload(decode, modules=(layer,), held=lambda: held, clear=_rewind(cache, params["context"]))


def _decode(variant, params, device):
    dtype, shape = getattr(torch, params["dtype"]), SHAPES[params["shape"]]
    batch, context = params["batch"], params["context"]
    layer, cache, prompt, token, prefill, decode = _decode_parts(variant, params, device)
    with torch.inference_mode():
        # prefill is the set-up decode needs; a few calls time it (seconds each at 32k), decode gets the full timer
        prefill_timing = time_fn(prefill, device, warmup=1, min_reps=3, min_time_s=0.05)
        held = cache.total_bytes()  # the prompt's cache, as the last prefill left it
        timing = time_fn(decode, device)
        peak = held + peak_bytes(decode, device, _rewind(cache, context))
        out = decode()
        error = {"mla_absorbed": _absorbed_error, HF: _library_error}.get(variant)
        errors = error(layer, cache, prompt, token, out, shape, device, dtype) if error else {}
    per_token = cache.bytes_per_token()
    metrics = {"kv_cache_bytes_per_token": per_token, "kv_cache_elements_per_token": cache.elements_per_token(),
               "peak_mem_bytes": peak, **errors}
    work = [Work("prefill_time", "prefill_", tokens=batch * context), Work("decode_time", "decode_", tokens=batch),
            Work("decode_time", "cache_read_", bytes=batch * context * per_token)]
    return Measurement(metrics, timed=timing, timings={"prefill_time": prefill_timing, "decode_time": timing},
                       work=work)


def _absorbed_error(layer, cache, prompt, token, out, shape, device, dtype) -> dict:
    """The absorbed form's decode output against the naive form's, on the same weights and the same cached latents."""
    naive = build("mla_naive", shape, device=device, dtype=dtype)
    naive.load_state_dict(layer.state_dict())
    cache.length -= 1  # the slot the absorbed step wrote: the naive step rewrites the same latents there
    return _error(out, naive(token, cache))


def _library_error(layer, cache, prompt, token, out, shape, device, dtype) -> dict:
    """The library's decode output against our naive form's on its weights, over a cache ours prefilled."""
    naive = build("mla_naive", shape, device=device, dtype=dtype)
    naive.load_state_dict(hf.our_state_dict(layer))
    ours = naive.new_cache(prompt.shape[0], prompt.shape[1] + 1)
    naive(prompt, ours)
    return _error(out, naive(token, ours))


def _error(out, ref) -> dict:
    diff = (out.double() - ref.double()).abs().max().item()
    scale = ref.double().abs().max().item()
    return {"max_abs_err": diff, "max_rel_err": diff / scale if scale else float(diff > 0)}

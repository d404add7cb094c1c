"""Hugging Face transformers' MLA, the one users pick for DeepSeek-V3: DeepseekV3Attention
(transformers.models.deepseek_v3.modeling_deepseek_v3) built from a DeepseekV3Config of our MLAConfig's sizes and
loaded with our weights, decoding over the library's default cache, DynamicCache.

What its cache holds (read from the library's code, transformers 5.23): the layer writes the cache before it
up-projects, so DynamicCache's one layer keeps the latent, not per-head keys and values: `keys` is kv_a_layernorm(c_KV)
[B, 1, T, kv_lora_rank] and `values` the rotated shared key k_R [B, 1, T, qk_rope_head_dim], d_c + d_rope elements
per token, the tensors our MLA caches. It then up-projects every cached latent to per-head keys and values at each
step (expand_kv, our naive form) and attends with the config's attention implementation (sdpa here). DynamicLayer
concatenates each step's tokens into new tensors (torch.cat), so a decode step copies the whole cache once.

Conventions, against ours (impls/mla/mla.py, common.py):
- Module names: q_a_proj, q_a_layernorm, q_b_proj (q_proj without a query latent), kv_a_proj_with_mqa,
  kv_a_layernorm, kv_b_proj, o_proj for our wq_a, q_norm, wq_b (wq), wkv_a, kv_norm, wkv_b, wo; the same row layouts
  ([q_C | q_R] per head, [c_KV | k_R], [k_C | v] per head), no biases (attention_bias False), RMSNorm eps 1e-6 on c_Q
  and c_KV alike (the library's default, not config.rms_norm_eps), computed in fp32 and cast back.
- RoPE: rope_interleave=True, the library's default and DeepSeek-V3's checkpoint layout, reads each rotary pair
  from neighbouring channels (2j, 2j+1) and writes the rotated pairs half-split, where ours pairs j with j + d_rope/2
  throughout. So the rotary rows of q_b_proj and kv_a_proj_with_mqa are our rows in the order rope_order gives (2j <- j,
  2j+1 <- j + d_rope/2): the rotated q_R and k_R, the cache included, are then ours to the channel. The frequencies
  are ours (rope_theta 10000, no scaling: rope_type "default"); the library casts its cos/sin tables to the
  activations' dtype (bf16 on a GPU), where ours stay fp32.
- Softmax scale: (qk_nope_head_dim + qk_rope_head_dim) ** -0.5, ours; the library multiplies it by YaRN's mscale^2
  only for a non-default rope_type (DeepSeek-V3's released config: yarn, factor 40, mscale_all_dim 1, 1.87x), which
  neither side applies here.
- Mask: none; sdpa's is_causal for a prompt and full attention for one token, as DeepseekV3Model's create_causal_mask
  leaves sdpa an unpadded batch.

transformers is optional (pip install -e ".[ecosystem]") and imported on first use; a release that no longer has a
name or config field used here raises ApiMoved, never a skip.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace

import torch
from torch import Tensor, nn

from impls import libraries
from impls.libraries import ApiMoved
from impls.mla.common import ROPE_BASE
from impls.mla.mla import MLA, MLAConfig
from impls.rmpad import hf as rmpad_hf
from impls.rmpad.hf import label, version

__all__ = ["ApiMoved", "HFCache", "HFMLA", "build", "config", "from_ours", "label", "our_state_dict", "version"]

WRITTEN_FOR = "5.23.0"
LIBRARY = libraries.Library("transformers", WRITTEN_FOR, "impls/mla/hf.py")
_moved = LIBRARY.moved
MODULE = "transformers.models.deepseek_v3.modeling_deepseek_v3"
NAMES = ("DeepseekV3Attention", "DeepseekV3RotaryEmbedding", "DeepseekV3Config")  # from MODULE
FORWARD = ("hidden_states", "position_embeddings", "attention_mask", "past_key_values")  # DeepseekV3Attention's
# our module name -> the library's
RENAME = {"wq_a": "q_a_proj", "q_norm": "q_a_layernorm", "wq_b": "q_b_proj", "wq": "q_proj",
          "wkv_a": "kv_a_proj_with_mqa", "kv_norm": "kv_a_layernorm", "wkv_b": "kv_b_proj", "wo": "o_proj"}


@functools.cache
def api() -> SimpleNamespace:
    """The library's names used here; ApiMoved names the one that is gone. A missing transformers raises
    ModuleNotFoundError naming what to install (callers check for it first and skip)."""
    tf = rmpad_hf.transformers()  # imported quietly (what talks on import has talked), its install line when absent
    try:
        module = importlib.import_module(MODULE)
    except ModuleNotFoundError as e:
        raise _moved(f"{MODULE} is gone") from e
    missing = [n for n in NAMES if not hasattr(module, n)] + ([] if hasattr(tf, "DynamicCache") else ["DynamicCache"])
    if missing:
        raise _moved(f"no {', '.join(missing)}")
    ns = SimpleNamespace(**{n: getattr(module, n) for n in NAMES}, DynamicCache=tf.DynamicCache)
    fields = {f.name for f in dataclasses.fields(ns.DeepseekV3Config)} \
        if dataclasses.is_dataclass(ns.DeepseekV3Config) else set(inspect.signature(ns.DeepseekV3Config).parameters)
    # DeepseekV3Config keeps an unknown keyword as a plain attribute, silently: a renamed field would size nothing
    unknown = set(config_kwargs(MLAConfig(8, 1, 2, 2, 4))) - fields
    if unknown:
        raise _moved(f"DeepseekV3Config has no field {sorted(unknown)}")
    takes = list(inspect.signature(ns.DeepseekV3Attention.forward).parameters)[1:len(FORWARD) + 1]
    if takes != list(FORWARD):
        raise _moved(f"DeepseekV3Attention.forward takes {takes}, not {list(FORWARD)}")
    return ns


def config_kwargs(cfg: MLAConfig, interleave: bool = True) -> dict:
    """DeepseekV3Config fields of one attention layer of our sizes: every head its own KV head (MLA shares the
    latent, not KV heads), plain RoPE at our base, sdpa."""
    return dict(hidden_size=cfg.d_model, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_heads,
                q_lora_rank=cfg.d_cq or None, kv_lora_rank=cfg.d_c, qk_nope_head_dim=cfg.d_head,
                qk_rope_head_dim=cfg.d_rope, v_head_dim=cfg.value_dim, attention_bias=False, num_hidden_layers=1,
                rope_parameters={"rope_type": "default", "rope_theta": ROPE_BASE}, rope_interleave=interleave)


def config(cfg: MLAConfig, interleave: bool = True):
    return api().DeepseekV3Config(**config_kwargs(cfg, interleave), attn_implementation="sdpa")


def rope_order(d_rope: int) -> Tensor:
    """The library's interleaved rotary channel i reads our channel rope_order[i]: 2j <- j, 2j+1 <- j + d_rope/2."""
    half = torch.arange(d_rope // 2)
    return torch.stack([half, half + d_rope // 2], dim=-1).flatten()


def _row_order(cfg: MLAConfig, name: str) -> Tensor | None:
    """The library's rows of our weight `name` (a row index per row), where the rotary rows move; None elsewhere."""
    rope = rope_order(cfg.d_rope)
    if name in ("wq", "wq_b"):  # per head [q_C (d_head) | q_R (d_rope)]
        per = cfg.d_head + cfg.d_rope
        head = torch.cat([torch.arange(cfg.d_head), cfg.d_head + rope])
        return (torch.arange(cfg.n_heads)[:, None] * per + head).flatten()
    if name == "wkv_a":  # [c_KV (d_c) | k_R (d_rope)]
        return torch.cat([torch.arange(cfg.d_c), cfg.d_c + rope])
    return None


def to_library(state: dict[str, Tensor], cfg: MLAConfig, interleave: bool = True) -> dict[str, Tensor]:
    """Our MLA's state dict under the library's names, rotary rows in its order (interleave) or as they are."""
    out = {}
    for key, t in state.items():
        name, rest = key.split(".", 1)
        order = _row_order(cfg, name) if interleave else None
        out[f"{RENAME[name]}.{rest}"] = t if order is None else t.index_select(0, order.to(t.device))
    return out


def from_library(state: dict[str, Tensor], cfg: MLAConfig, interleave: bool = True) -> dict[str, Tensor]:
    """The inverse of to_library: the library's state dict as our MLA's."""
    ours = {v: k for k, v in RENAME.items()}
    out = {}
    for key, t in state.items():
        name, rest = key.split(".", 1)
        order = _row_order(cfg, ours[name]) if interleave else None
        out[f"{ours[name]}.{rest}"] = t if order is None else t.index_select(0, order.argsort().to(t.device))
    return out


class HFCache:
    """The library's DynamicCache for one layer, with our KVCache's reading: `length`, bytes and elements per token
    counted from the tensors it keeps ([B, 1, T, d_c] and [B, 1, T, d_rope]). Setting `length` rewinds it: to 0,
    a fresh cache; to where the last call began, the tensors that call extended (DynamicLayer leaves them as they
    were), so the previous step's are freed there, before the next step, and not inside it."""

    def __init__(self, hf_config):
        self.config = hf_config
        self.cache = api().DynamicCache(config=hf_config)
        self._start: tuple[int, Tensor, Tensor] | None = None  # (length, keys, values) where the last call began

    def tensors(self) -> dict[str, Tensor]:
        layer = self.cache.layers[0] if self.cache.layers else None
        if layer is None or not getattr(layer, "is_initialized", False):
            return {}
        if not all(isinstance(getattr(layer, n, None), Tensor) for n in ("keys", "values")):
            raise _moved("DynamicCache's layer keeps no keys and values tensors")
        return {"keys": layer.keys, "values": layer.values}

    @property
    def length(self) -> int:
        t = self.tensors()
        return t["keys"].shape[-2] if t else 0

    @length.setter
    def length(self, n: int) -> None:
        if n == self.length:
            return
        if n == 0:
            self.cache, self._start = api().DynamicCache(config=self.config), None
        elif self._start is not None and self._start[0] == n:
            layer = self.cache.layers[0]
            layer.keys, layer.values = self._start[1:]
        elif 0 < n < self.length:  # the first n tokens, as views
            layer = self.cache.layers[0]
            layer.keys, layer.values = layer.keys[..., :n, :], layer.values[..., :n, :]
        else:
            raise ValueError(f"the cache holds {self.length} tokens; it cannot be set to {n}")

    def began(self) -> None:
        """Called as a layer's call begins: remember what it will extend."""
        t = self.tensors()
        self._start = (self.length, t["keys"], t["values"]) if t else None

    def total_bytes(self) -> int:
        """Bytes the cache's tensors hold (their storages: a rewound cache's views hold the longer tensors)."""
        return sum(t.untyped_storage().nbytes() for t in self.tensors().values())

    def bytes_per_token(self) -> int:
        """Bytes per cached token of one sequence in this layer, counted from the tensors themselves."""
        total, slots = sum(t.numel() * t.element_size() for t in self.tensors().values()), self._slots()
        assert total % slots == 0, f"{total} bytes do not split into {slots} token slots"
        return total // slots

    def elements_per_token(self) -> int:
        return sum(t.numel() for t in self.tensors().values()) // self._slots()

    def _slots(self) -> int:
        keys = self.tensors()["keys"]
        return keys.shape[0] * keys.shape[-2]


class HFMLA(nn.Module):
    """DeepseekV3Attention and its rotary table, called as our layers are: forward(x) alone is full-sequence causal
    attention; forward(x, cache) appends x's latents to an HFCache and attends over everything cached."""

    def __init__(self, cfg: MLAConfig, interleave: bool = True, device=None, dtype=None):
        super().__init__()
        ns = api()
        self.cfg, self.config = cfg, config(cfg, interleave)
        with torch.device(device or "cpu"), _default_dtype(dtype):
            self.attn = ns.DeepseekV3Attention(self.config, layer_idx=0)
        with torch.device(device or "cpu"):
            self.rotary = ns.DeepseekV3RotaryEmbedding(self.config)  # fp32 frequencies, whatever the weights' dtype

    def new_cache(self, batch: int = 1, capacity: int = 0) -> HFCache:
        """An empty DynamicCache: it grows with each call (batch and capacity are our caches' arguments)."""
        return HFCache(self.config)

    def forward(self, x: Tensor, cache: HFCache | None = None) -> Tensor:
        S, start = x.shape[1], cache.length if cache is not None else 0
        position_ids = torch.arange(start, start + S, device=x.device)[None]  # [1, S]
        cos_sin = self.rotary(x, position_ids)  # [1, S, d_rope] each, in x's dtype
        if cache is not None:
            cache.began()
        out, _ = self.attn(x, cos_sin, None, past_key_values=cache.cache if cache is not None else None)
        return out  # [B, S, d_model]


@contextmanager
def _default_dtype(dtype) -> Iterator[None]:
    """Parameters made in `dtype` from the start (no fp32 copy first): nn.Linear and the library's RMSNorm take no
    dtype argument here."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype or before)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def build(cfg: MLAConfig, device=None, dtype=None, interleave: bool = True) -> HFMLA:
    """The library's layer with its own initialisation (on the meta device: shapes only)."""
    return HFMLA(cfg, interleave, device, dtype)


def from_ours(layer: MLA, interleave: bool = True) -> HFMLA:
    """The library's layer holding `layer`'s weights (shared, the reordered rotary rows aside), on its device and in
    its dtype: the same function as `layer`, up to rounding."""
    w = layer.wkv_a.weight
    hf = HFMLA(layer.cfg, interleave, device="meta", dtype=w.dtype)
    hf.attn.load_state_dict(to_library(layer.state_dict(), layer.cfg, interleave), strict=True, assign=True)
    with torch.device(w.device):
        hf.rotary = api().DeepseekV3RotaryEmbedding(hf.config)
    return hf


def our_state_dict(hf: HFMLA) -> dict[str, Tensor]:
    """The library layer's weights as our MLA's state dict."""
    return from_library(hf.attn.state_dict(), hf.cfg, hf.config.rope_interleave)


if __name__ == "__main__":
    from impls.mla.shapes import SHAPES

    torch.manual_seed(0)
    ours = MLA(SHAPES["tiny"].mla())
    lib = from_ours(ours)
    x = torch.randn(2, 9, SHAPES["tiny"].d_model)
    a, b = ours.new_cache(2, 9), lib.new_cache()
    with torch.no_grad():
        gap = max((ours(x[:, :8], a) - lib(x[:, :8], b)).abs().max().item(),
                  (ours(x[:, 8:], a) - lib(x[:, 8:], b)).abs().max().item())
    print(f"DeepseekV3Attention (transformers {version()}) against our naive MLA, prefill and one decode step: "
          f"max |diff| {gap:.2e}; its cache {b.bytes_per_token()} B/token, ours {a.bytes_per_token()}")

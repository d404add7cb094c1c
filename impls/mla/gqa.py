"""Grouped-query attention (Ainslie et al. 2023, arXiv 2305.13245) and multi-query attention (Shazeer 2019) as one
group: n_heads query heads share n_kv_heads key/value heads, which cuts the cache n_heads / n_kv_heads times."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from impls.mla.reference import MHA, MHAConfig, sdpa


@dataclass(frozen=True)
class GQAConfig(MHAConfig):
    kv_heads: int = 1
    """Key/value heads, each shared by n_heads // kv_heads query heads; 1 is multi-query attention."""

    def __post_init__(self):
        super().__post_init__()
        if self.kv_heads <= 0 or self.n_heads % self.kv_heads:
            raise ValueError(f"n_heads {self.n_heads} must be a multiple of kv_heads {self.kv_heads} "
                             "(each key/value head serves a whole group of query heads)")

    @property
    def n_kv_heads(self) -> int:
        return self.kv_heads


class GQA(MHA):
    """MHA's projections with kv_heads key/value heads; each group of n_heads // kv_heads query heads reads one:
    query head h reads key/value head h // (n_heads // kv_heads) (SDPA's enable_gqa, which equals repeat_interleave
    of the KV heads, HF Llama's repeat_kv layout). RoPE as MHA's (common.apply_rope, whole head)."""

    def attend(self, q: Tensor, k: Tensor, v: Tensor, start: int) -> Tensor:
        return sdpa(q, k, v, start, enable_gqa=self.cfg.kv_heads != self.cfg.n_heads)

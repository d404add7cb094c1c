"""MLA's absorbed decode form (DeepSeek-V2, arXiv 2405.04434 §2.1.2; `attn_impl = "absorb"` in DeepSeek-V3's
inference/model.py): attend directly over the cached latents.

A head's score q_C . k_C = q_C . (W_UK c) = (W_UK^T q_C) . c, so folding W_UK into the query gives a d_c-wide query
that scores every cached latent c_KV at once; the rotary part adds q_R . k_R as a separate dot product, since RoPE
sits between W_KR and the key and cannot be folded. Likewise sum_t p_t (W_UV c_t) = W_UV (sum_t p_t c_t): the softmax
weights average the latents, and W_UV maps the average to the head's output. All heads then read the same
[T, d_c + d_rope] cache, like multi-query attention, and nothing of size T x n_heads x d_head is built. W_UK is folded
at run time rather than into W_UQ ahead of time: the folded [d_c', n_heads x d_c] matrix (1536 x 65,536 at
DeepSeek-V3's sizes) would be 4x the size of W_UQ.

Deployments prefill with the naive form and decode with this one: over many queries the attention is compute-bound,
and an absorbed head scores and averages d_c + d_rope + d_c = 1088 channels against the naive head's
d_head + d_rope + d_v = 320 (3.4x the FLOPs at DeepSeek-V3's sizes). This form still runs for any number of queries,
in query chunks that bound the [H x rows, T] score matrix (8,192 chunks of 4 rows for a 32k-token prefill of 4
sequences at DeepSeek-V3's 128 heads: Python-level loop overhead, not a deployable prefill). `naive_prefill=True`
makes a layer do what deployments do, calls with more than one query going through the naive form's attention over
the same weights and the same latent cache; shapes.build gives the mla_absorbed variant that way.
"""

from __future__ import annotations

import torch
from torch import Tensor

from impls.mla.common import causal_mask
from impls.mla.mla import MLA, MLAConfig

SCORE_BYTES = 256 * 2**20  # fp32 scores held at once by a multi-query call: [B, H x rows, T] x 4 bytes <= 256 MiB


class AbsorbedMLA(MLA):
    """MLA with W_UK folded into the query and W_UV into the output; same parameters and cache as the naive form.

    naive_prefill: calls with more than one query (prefill, chunked prefill) attend in the naive form, and single-token
    decode steps in the absorbed one; False runs every call absorbed.
    """

    def __init__(self, cfg: MLAConfig, device=None, dtype=None, naive_prefill: bool = False):
        super().__init__(cfg, device=device, dtype=dtype)
        self.naive_prefill = naive_prefill

    def attend(self, q_c: Tensor, q_r: Tensor, c_kv: Tensor, k_r: Tensor, start: int) -> Tensor:
        B, H, S, _ = q_c.shape
        if S > 1 and self.naive_prefill:
            return super().attend(q_c, q_r, c_kv, k_r, start)
        rows = max(1, SCORE_BYTES // (4 * B * H * c_kv.shape[1]))
        if S <= rows:
            return self._attend(q_c, q_r, c_kv, k_r, start)
        # each chunk of queries sees the keys up to its last position only (causal), which also halves the work
        return torch.cat([self._attend(q_c[:, :, i:i + rows], q_r[:, :, i:i + rows], c_kv[:, :start + i + rows],
                                       k_r[:, :start + i + rows], start + i) for i in range(0, S, rows)], dim=2)

    def _attend(self, q_c: Tensor, q_r: Tensor, c_kv: Tensor, k_r: Tensor, start: int) -> Tensor:
        cfg = self.cfg
        B, H, S, _ = q_c.shape
        T = c_kv.shape[1]
        w = self.wkv_b.weight.view(H, cfg.d_head + cfg.value_dim, cfg.d_c)
        w_uk, w_uv = w[:, :cfg.d_head], w[:, cfg.d_head:]  # [H, d_head, d_c], [H, d_v, d_c]
        q_lat = torch.einsum("bhsd,hdc->bhsc", q_c, w_uk)  # [B, H, S, d_c]
        # Heads and queries as the rows of one [H*S, T] product per sequence: all heads share the latent keys.
        scores = (q_lat.reshape(B, H * S, cfg.d_c) @ c_kv.transpose(1, 2)
                  + q_r.reshape(B, H * S, cfg.d_rope) @ k_r.transpose(1, 2)) * cfg.softmax_scale  # [B, H*S, T]
        mask = causal_mask(start, S, T, q_c.device)
        if mask is not None:
            scores = scores.view(B, H, S, T).masked_fill(~mask, float("-inf")).view(B, H * S, T)
        p = scores.softmax(dim=-1, dtype=torch.float32).to(c_kv.dtype)  # softmax in fp32, as DeepSeek-V3 does
        o_lat = (p @ c_kv).view(B, H, S, cfg.d_c)  # the weighted average of the latents, per head
        return torch.einsum("bhsc,hdc->bhsd", o_lat, w_uv)  # [B, H, S, d_v]

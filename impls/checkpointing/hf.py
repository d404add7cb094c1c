"""Hugging Face transformers' activation checkpointing on a Llama stack sized like our Transformer: the library's
switch alone (every decoder layer checkpointed, non-reentrant), or with torch's selective policy as its checkpoint
kwargs. Its reference is the same model with the switch off.

The model takes the suite's [B, S, D] batch as inputs_embeds and returns the final-norm hidden states, so the loss,
the batch and the memory accounting are the suite's own. transformers is optional (pip install -e ".[ecosystem]")
and imported on first use.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import create_selective_checkpoint_contexts

from impls.checkpointing.reference import TransformerConfig
from impls.checkpointing.selective import make_policy
from impls.rmpad import hf as rmpad_hf
from impls.rmpad.hf import label, version

__all__ = ["VARIANTS", "build", "config_kwargs", "enable", "forward", "label", "llama", "make_policy", "version"]

VARIANTS = {
    "none": "no checkpointing: every activation saved",
    "full": "activation_checkpointing_enable(): every decoder layer checkpointed, non-reentrant",
    "selective": "the same switch with torch's selective policy (context_fn): matmul and attention outputs saved",
}


def config_kwargs(cfg: TransformerConfig, seq: int) -> dict:
    """LlamaConfig fields: our width, heads (no GQA) and depth. Inputs arrive as embeddings, so the token table is a
    single unused row, and no token ids are special."""
    return {**rmpad_hf.config_kwargs(cfg.d_model, cfg.n_heads, cfg.n_layers, 1, cfg.mlp_ratio, seq),
            "bos_token_id": None, "eos_token_id": None}


def llama(cfg: TransformerConfig, seq: int, attn: str = "sdpa", seed: int = 0):
    """LlamaModel sized like `cfg`, seeded, in training mode (the library checkpoints only then)."""
    tf = rmpad_hf.transformers()
    config = tf.LlamaConfig(**config_kwargs(cfg, seq), attn_implementation=attn)
    torch.manual_seed(seed)
    return tf.LlamaModel(config).train()


def checkpoint_kwargs(model, variant: str) -> dict:
    """The torch.utils.checkpoint kwargs the library's switch passes on for `variant`."""
    kwargs = {"use_reentrant": False}
    if variant == "selective":
        # A Llama layer runs 7 Linears (q, k, v, o, gate, up, down); down's output only feeds the residual add and
        # non-reentrant recompute stops before it, so saving it would keep one [B, S, D] per layer for nothing.
        linears = sum(isinstance(m, nn.Linear) for m in model.layers[0].modules())
        kwargs["context_fn"] = lambda: create_selective_checkpoint_contexts(make_policy(linears - 1))
    return kwargs


def enable(model, variant: str):
    """Turn the library's checkpointing on for `variant` ("none" leaves it off); returns the model.

    transformers 5.x names the switch activation_checkpointing_enable (gradient_checkpointing_enable, its older name,
    now warns that it is deprecated)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    if variant == "none":
        return model
    kwargs = checkpoint_kwargs(model, variant)
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    return model


def build(cfg: TransformerConfig, seq: int, variant: str, seed: int = 0):
    """The seeded Llama stack with `variant`'s checkpointing on."""
    return enable(llama(cfg, seq, seed=seed), variant)


def forward(model, x: Tensor) -> Tensor:
    """x [B, S, D] -> final-norm hidden states [B, S, D], as the reference Transformer maps them."""
    return model(inputs_embeds=x).last_hidden_state


if __name__ == "__main__":
    from impls.checkpointing.reference import loss_fn, make_batch

    cfg = TransformerConfig(d_model=64, n_heads=4, n_layers=4)
    x, target = make_batch(cfg, 2, 32, "cpu", torch.float32)
    grads = {}
    for variant in VARIANTS:
        model = build(cfg, 32, variant)
        loss_fn(forward(model, x), target).backward()
        grads[variant] = [p.grad for p in model.parameters() if p.grad is not None]
    for variant in ("full", "selective"):
        gap = max((a - b).abs().max().item() for a, b in zip(grads["none"], grads[variant], strict=True))
        print(f"hf {variant} (transformers {version()}): max abs grad diff to no checkpointing {gap:.2e}")

"""Hugging Face transformers' padding-free path: a Llama model built from a LlamaConfig in code, trained on a padded
batch with an attention mask (the plain reference), or on the one row [1, T] that DataCollatorWithFlattening makes of
the batch, with position_ids restarting per sample, under one of the library's attention implementations.

transformers is optional (pip install -e ".[ecosystem]"): it is imported on first use, never when this module is,
so the rest of impls/ needs torch only.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from impls import libraries
from impls.rmpad.reference import DecoderConfig

LIBRARY = libraries.Library("transformers", "5.23.0", "impls/rmpad/hf.py")
version, label = LIBRARY.version, LIBRARY.label
IGNORE = -100  # the label transformers' loss skips (and the collator's separator)
# Attention implementations by the short name a variant carries -> the name transformers knows them by.
ATTENTION = {"sdpa": "sdpa", "flex": "flex_attention", "fa2": "flash_attention_2"}


@functools.cache
def transformers():
    """The transformers module, with the classes used here loaded, its import-time chatter held below ERROR.

    An import error still raises (naming what to install when transformers itself is missing): only the named
    loggers' warnings are held back, and only during the import."""
    with libraries.quiet():
        try:
            import transformers as tf
        except ModuleNotFoundError as e:
            if e.name != "transformers":  # transformers is there but something it needs is not: that error stands
                raise
            raise ModuleNotFoundError(f"transformers is not installed (pip install {libraries.ECOSYSTEM})",
                                      name="transformers") from e
        # the package is lazy: touching the names imports the modeling code (and what it pulls in) inside this window
        tf.DataCollatorWithFlattening, tf.LlamaConfig, tf.LlamaForCausalLM, tf.LlamaModel  # noqa: B018
    return tf


def swiglu_hidden(d_model: int, mlp_ratio: int = 4) -> int:
    """Llama's MLP width for a model sized like ours: SwiGLU has three matrices where a GELU MLP has two, so 2/3 of
    mlp_ratio * d_model keeps the parameter count (the LLaMA paper, 2023, §2), rounded up to a multiple of 8."""
    return 8 * math.ceil(2 * mlp_ratio * d_model / 3 / 8)


def config_kwargs(d_model: int, heads: int, layers: int, vocab: int, mlp_ratio: int = 4, max_len: int = 4096) -> dict:
    """LlamaConfig fields for a model of our width, heads (no GQA), depth and vocabulary; untied head, no KV cache."""
    return dict(vocab_size=vocab, hidden_size=d_model, num_attention_heads=heads, num_key_value_heads=heads,
                num_hidden_layers=layers, intermediate_size=swiglu_hidden(d_model, mlp_ratio),
                max_position_embeddings=max_len, tie_word_embeddings=False, use_cache=False)


def llama_config(cfg: DecoderConfig, attn: str = "sdpa", max_len: int = 4096):
    """The LlamaConfig of a model sized like `cfg`, under an attention implementation (a key of ATTENTION)."""
    fields = config_kwargs(cfg.d_model, cfg.n_heads, cfg.n_layers, cfg.vocab, cfg.mlp_ratio, max_len)
    return transformers().LlamaConfig(**fields, attn_implementation=ATTENTION.get(attn, attn))


def build(cfg: DecoderConfig, attn: str = "sdpa", max_len: int = 4096, seed: int = 0):
    """LlamaForCausalLM with seeded weights, on CPU in fp32. transformers raises ImportError, with its own reason, for
    an attention implementation it cannot use here (flash_attention_2 without flash_attn)."""
    torch.manual_seed(seed)
    return transformers().LlamaForCausalLM(llama_config(cfg, attn, max_len))


def supports(attn: str, device: torch.device | str, backward: bool = True) -> tuple[bool, str]:
    """Whether an attention implementation can run here, decided without importing transformers where the answer
    does not depend on it; when not, the reason. flash_attention_2 on CUDA is settled by `build` (the library's own
    check)."""
    from impls.rmpad import flex

    if attn not in ATTENTION:
        raise ValueError(f"unknown attention {attn!r}; choose one of {', '.join(ATTENTION)}")
    kind = torch.device(device).type
    if attn == "flex" and backward:
        return flex.supports_backward(kind)  # transformers calls torch's flex_attention: torch's own refusal
    if attn == "fa2" and kind != "cuda":
        return False, f"flash_attention_2 is a CUDA kernel (flash_attn); the device is {kind}"
    return True, ""


def padded_labels(input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """Labels [B, L] for a right-padded batch: the ids, ignored at pads (the model shifts them itself)."""
    return input_ids.masked_fill(attention_mask == 0, IGNORE)


def padded_loss(model, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """The plain reference: mean next-token cross-entropy over real targets of a right-padded [B, L] batch."""
    return model(input_ids=input_ids, attention_mask=attention_mask,
                 labels=padded_labels(input_ids, attention_mask)).loss


def flatten(samples: Sequence[Tensor], device: torch.device | str = "cpu", flash_kwargs: bool = False) -> dict:
    """DataCollatorWithFlattening's batch of the samples (each [n] ids): input_ids, labels and position_ids [1, T],
    labels IGNORE at each sample's first token, positions restarting per sample; with `flash_kwargs`, also the
    cu_seq_lens / max_length kwargs flash_attention_2 reads instead of deriving them from position_ids."""
    collate = transformers().DataCollatorWithFlattening(return_flash_attn_kwargs=flash_kwargs)
    batch = collate([{"input_ids": s.tolist()} for s in samples], return_tensors="pt")
    return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}


def flatten_padded(input_ids: Tensor, attention_mask: Tensor, flash_kwargs: bool = False) -> dict:
    """`flatten` of the real tokens of each row of a right-padded batch."""
    lengths = attention_mask.sum(1).tolist()
    samples = [row[:n].cpu() for row, n in zip(input_ids, lengths, strict=True)]
    return flatten(samples, input_ids.device, flash_kwargs)


def flat_loss(model, batch: dict) -> Tensor:
    """The same mean over the same targets, on the flattened row: the collator's labels keep a sample's last token
    from predicting the next sample's first."""
    return model(**batch).loss


if __name__ == "__main__":
    from impls.rmpad.reference import make_batch

    cfg = DecoderConfig()
    ids, mask = make_batch(cfg, [7, 1, 33, 20])
    ref = build(cfg, "sdpa")
    for attn in ATTENTION:
        ok, why = supports(attn, "cpu", backward=False)
        if not ok:
            print(f"hf {attn}: skipped on cpu: {why}")
            continue
        model = build(cfg, attn)
        with torch.no_grad():
            gap = (flat_loss(model, flatten_padded(ids, mask)) - padded_loss(ref, ids, mask)).abs().item()
        print(f"hf {attn} (transformers {version()}): flattened loss - padded loss {gap:.2e}")

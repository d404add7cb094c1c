"""Liger-Kernel's fused linear cross-entropy (Hsu et al. 2024, arXiv:2410.10989) as the LM head and loss of the
packed training step, the library users pick to keep the [tokens, vocab] logits out of memory.

The plain step (impls.packing.train.packed_loss) writes the logits [N, V] in the model's dtype, token_loss's fp32 copy
of them, and in backward their fp32 gradient: at the full grid's 350m shape (V = 32000) with 32 rows of 4096 tokens,
~131k targets, that is 8.4 GB of bf16 logits and 16.8 GB per fp32 copy. liger_fused_linear_cross_entropy runs the
head's matmul and the cross-entropy chunk by chunk over the tokens instead, computing the gradients of the hidden
states and the head weight in the forward: a chunk holds next_power_of_2(N / ceil(V / D)) tokens, so its logits are
about the size of the hidden states [N, D]. The loss is the same mean as token_loss (summed in fp32 over the targets);
only the peak memory, and the summation order, change.

Its cross-entropy is a Triton kernel that needs a CUDA device: `unsupported` says so, and whether the package is
installed, without importing it. It is imported lazily (`api`), only by a case or a test that uses it; the adapter is
written against liger-kernel 0.8.5, which is not in techbench[ecosystem]: its wheel requires triton (~1 GB), which a
CPU machine, where the variant is always skipped, would install for nothing. On a GPU machine install it by hand
(pip install liger-kernel==0.8.5; its wheel is pure Python). A liger-kernel whose names moved raises ApiMoved naming
the name, never a skip.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.util
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from impls import libraries
from impls.libraries import ApiMoved as ApiMoved  # re-exported: callers catch the adapter's
from impls.packing.train import packed_logits
from impls.rmpad.reference import Decoder

WRITTEN_FOR = "0.8.5"
PIP = f"liger-kernel=={WRITTEN_FOR}"
LIBRARY = libraries.Library("liger-kernel", WRITTEN_FOR, "impls/packing/liger.py", PIP)
version, label, _moved = LIBRARY.version, LIBRARY.label, LIBRARY.moved
MODULE = "liger_kernel.transformers.functional"
NAME = "liger_fused_linear_cross_entropy"
PARAMS = ("input", "weight", "target", "reduction")  # what `head_loss` passes




def unsupported(device: torch.device | str) -> str | None:
    """Why the fused head cannot run on `device`, decided without importing liger-kernel (its import pulls in Triton):
    its Triton kernels need a CUDA device, and the package must be installed. None when both hold."""
    why = []
    kind = torch.device(device).type
    if kind != "cuda":
        why.append(f"Liger-Kernel's fused linear cross-entropy is a Triton kernel and needs a CUDA device (the device "
                   f"is {kind})")
    if importlib.util.find_spec("liger_kernel") is None:
        why.append(f"needs liger_kernel, which is not installed (pip install {PIP})")
    return "; ".join(why) or None


@functools.cache
def api() -> Callable[..., Tensor]:
    """liger_kernel.transformers.functional.liger_fused_linear_cross_entropy; ApiMoved when it is gone or takes other
    arguments. An absent liger-kernel raises ModuleNotFoundError (callers check `unsupported` first and skip)."""
    try:
        module = importlib.import_module(MODULE)
    except ModuleNotFoundError as e:
        if not (e.name or "").startswith("liger_kernel."):  # liger_kernel itself or a dependency (triton) is missing
            raise
        raise _moved(f"{MODULE} is gone") from e
    return libraries.function(module, MODULE, NAME, PARAMS, _moved)


def head_loss(hidden: Tensor, weight: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy of hidden [N, D] through the LM head weight [V, D] against targets [N], reduced as
    token_loss reduces it (summed in fp32, over max(1, N)), without the logits [N, V] ever being whole."""
    return api()(hidden, weight, targets, reduction="sum").float() / max(1, targets.numel())


@contextmanager
def _headless(model: Decoder) -> Iterator[Decoder]:
    """The model with its LM head out: its logits are then the final-norm states the head reads."""
    head, model.head = model.head, nn.Identity()
    try:
        yield model
    finally:
        model.head = head


def hidden_states(model: Decoder, ids: Tensor, pos: Tensor, doc: Tensor, mask: str = "document") -> Tensor:
    """[R, L, D] final-norm states of packed rows: model.head of them is packed_logits."""
    with _headless(model):
        return packed_logits(model, ids, pos, doc, mask)


def packed_loss(model: Decoder, ids: Tensor, pos: Tensor, doc: Tensor, real: Tensor, mask: str = "document"):
    """impls.packing.train.packed_loss with the head and cross-entropy fused: the same targets (inside each sample,
    padding left out), the same mean."""
    hidden = hidden_states(model, ids, pos, doc, mask)  # [R, L, D]
    valid = (doc[:, 1:] == doc[:, :-1]) & real[:, 1:]  # [R, L-1], as packed_loss selects its targets
    return head_loss(hidden[:, :-1][valid], model.head.weight, ids[:, 1:][valid])


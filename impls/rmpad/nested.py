"""Nested-jagged varlen attention: cu_seqlens as the offsets of a torch.jagged nested tensor fed to SDPA."""

from __future__ import annotations

import functools
import logging
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor


def varlen_attention(
    q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, max_seqlen: int, causal: bool = True
) -> Tensor:
    """q, k, v [T, H, Dh] -> [T, H, Dh]; causal=False is the encoder form (full attention within each sequence)."""
    offsets = cu_seqlens.long()

    _silence_fx_note()

    def jagged(t: Tensor) -> Tensor:
        # SDPA wants [B, H, j, Dh] that is contiguous once transposed back to [B, j, H, Dh], i.e. contiguous values.
        nt = torch.nested.nested_tensor_from_jagged(t.contiguous(), offsets, max_seqlen=max_seqlen)  # [B, j, H, Dh]
        return nt.transpose(1, 2)

    with warnings.catch_warnings():
        # The CPU math path converts to the strided nested layout internally, which warns that layout is a prototype.
        warnings.filterwarnings("ignore", message=".*PyTorch API of nested tensors is in prototype stage.*")
        out = F.scaled_dot_product_attention(jagged(q), jagged(k), jagged(v), is_causal=causal)  # [B, H, j, Dh]
    return out.transpose(1, 2).values()  # [T, H, Dh]


@functools.cache
def _silence_fx_note() -> None:
    """nested_tensor_from_jagged's is_fx_tracing() check logs a note for torch's developers, once a process (2.11,
    2.13): made here once, with its logger quiet, so that no run or plan prints it."""
    import torch.fx._symbolic_trace as symbolic_trace

    note = getattr(symbolic_trace, "is_fx_tracing_warning", None)
    if note is None:
        return
    log = logging.getLogger("torch.fx._symbolic_trace")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        note()
    finally:
        log.setLevel(level)


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


NO_DRIVER = "CUDA driver version is insufficient for CUDA runtime version"


@functools.cache
def _probe(device_type: str, causal: bool, dtype: torch.dtype, backward: bool) -> tuple[bool, str]:
    q = torch.zeros(3, 1, 16, device=device_type, dtype=dtype, requires_grad=True)  # [T, H, Dh]
    cu = torch.tensor([0, 1, 3], device=device_type, dtype=torch.int32)
    # SDPA logs why each backend was refused before it raises; collect that instead of printing it.
    log = logging.getLogger("torch.nested._internal.sdpa")
    handler, propagate = _Collect(), log.propagate
    log.addHandler(handler)
    log.propagate = False
    try:
        out = varlen_attention(q, q, q, cu, 2, causal=causal)
        if backward:
            out.sum().backward()
    except RuntimeError as e:
        if NO_DRIVER in str(e):  # torch 2.11 CUDA builds ask cuDNN before the CPU math path
            return False, (f"torch {torch.__version__} checks cuDNN attention before running nested-tensor SDPA, even "
                           f"on {device_type}, and that check fails on a machine without a CUDA driver ({NO_DRIVER})")
        why = [line.strip() for line in handler.lines if line.strip() and not line.rstrip().endswith("because:")]
        return False, " ".join([str(e).strip(), *why])
    finally:
        log.removeHandler(handler)
        log.propagate = propagate
    return True, ""


def supports(
    device: torch.device | str, causal: bool, dtype: torch.dtype = torch.float32, backward: bool = True
) -> tuple[bool, str]:
    """Whether nested-jagged SDPA runs forward (and backward) here; when not, torch's own reason."""
    return _probe(torch.device(device).type, causal, dtype, backward)


if __name__ == "__main__":
    from impls.rmpad.check import check

    check("nested")
    from impls.rmpad import segments

    q = torch.randn(41, 2, 8, requires_grad=True)  # [T, H, Dh], sequences of 7, 1, 33
    cu = torch.tensor([0, 7, 8, 41], dtype=torch.int32)
    out, ref = varlen_attention(q, q, q, cu, 33, causal=False), segments.varlen_attention(q, q, q, cu, 33, causal=False)
    grad, ref_grad = (torch.autograd.grad(o.square().sum(), q)[0] for o in (out, ref))
    print(
        f"nested encoder form (causal=False) on cpu: max abs out diff {(out - ref).abs().max().item():.2e}, "
        f"grad diff {(grad - ref_grad).abs().max().item():.2e}"
    )

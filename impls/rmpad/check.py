"""Checks an unpadded backend against the padded reference on CPU: loss and gradient gap, or logits gap if forward-only.

Used by each backend's `python -m impls.rmpad.<backend>`; torch only, like the rest of impls/.
"""

from __future__ import annotations

import torch

from impls.rmpad.lengths import pad_fraction
from impls.rmpad.reference import Decoder, DecoderConfig, make_batch
from impls.rmpad.unpad import unpad_input
from impls.rmpad.unpadded import forward_unpadded, logits_unpadded, supports

LENGTHS = [7, 1, 33, 20]  # odd sizes, one single-token sequence


def check(backend: str) -> None:
    """Print the backend's gap to the padded reference, or why it cannot run on this CPU."""
    cfg = DecoderConfig()
    torch.manual_seed(0)
    model = Decoder(cfg)
    ids, mask = make_batch(cfg, LENGTHS)
    where = f"lengths {LENGTHS}, pad fraction {pad_fraction(LENGTHS):.2f}"
    ok, why = supports(backend, "cpu", backward=False)
    if not ok:
        print(f"{backend}: skipped on cpu: {why}")
        return
    with torch.no_grad():
        ref = unpad_input(model.logits(ids, mask), mask)[0]  # [T, V]
        out = logits_unpadded(model, ids, mask, backend)[0]
    print(f"{backend}: max abs logits diff at real positions {(out - ref).abs().max().item():.2e} ({where})")
    ok, why = supports(backend, "cpu", backward=True)
    if not ok:
        print(f"{backend}: training step skipped on cpu: {why}")
        return
    grads = {}
    for label, fn in (
        ("padded", lambda: model(ids, mask)),
        ("unpadded", lambda: forward_unpadded(model, ids, mask, backend)),
    ):
        model.zero_grad(set_to_none=True)
        loss = fn()
        loss.backward()
        grads[label] = (loss.detach(), [p.grad for p in model.parameters()])
    (ref_loss, ref_g), (loss, g) = grads["padded"], grads["unpadded"]
    gap = max((a - b).abs().max().item() for a, b in zip(ref_g, g, strict=True))
    print(f"{backend}: loss gap {abs(loss - ref_loss).item():.2e}, max abs grad diff {gap:.2e}")

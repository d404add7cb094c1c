"""`bench new NAME`: a new technique's files, laid out as every built-in one, whose tests pass as generated.

It writes impls/NAME/ (reference.py and one variant, chunked.py), suites/NAME.py (its grid per size, declared
metrics, a ratio against the reference), reports/figures/NAME.py, and tests/impls/test_NAME.py and
tests/suites/test_NAME.py. The example technique is a stand-in to replace: ReLU(x @ w), computed whole (the
reference) and in row chunks (the variant). Hand-written templates: no library does this for this layout.
"""

from __future__ import annotations

import keyword
from pathlib import Path

FILES = {
    "impls/{name}/__init__.py": '''"""{title}: the plain-PyTorch reference and its optimized variants."""
''',
    "impls/{name}/reference.py": '''"""{title}, reference: the plain-PyTorch truth the variants are tested against.

Example to replace: ReLU(x @ w).
"""

from __future__ import annotations

import torch
from torch import Tensor


def forward(x: Tensor, w: Tensor) -> Tensor:
    """x [M, K], w [K, N] -> [M, N]."""
    return torch.relu(x @ w)
''',
    "impls/{name}/chunked.py": '''"""{title}, chunked: the reference computed `chunk` rows at a time.

Example variant to replace with yours.
"""

from __future__ import annotations

import torch
from torch import Tensor


def forward(x: Tensor, w: Tensor, chunk: int = 64) -> Tensor:
    """x [M, K], w [K, N] -> [M, N], one [chunk, N] block at a time."""
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1, got {{chunk}}")
    return torch.cat([torch.relu(part @ w) for part in x.split(chunk)])
''',
    "suites/{name}.py": '''"""{title}: the reference against its variants.

Time of a forward + backward, and the output's error against the reference's.
"""

from __future__ import annotations

import torch

from bench.metrics import Metric, timing
from bench.suite import Measurement, Relative, Suite, register
from bench.timing import time_fn
from impls.{name} import chunked, reference

VARIANTS = {{"reference": reference.forward, "chunked": chunked.forward}}
SHAPES = {{"smoke": ((64, 32, 48),), "quick": ((512, 256, 384),), "full": ((8192, 4096, 4096),)}}  # M, K, N


@register
class {cls}(Suite):
    name = "{name}"
    description = "{title}: what the variant buys against the reference (example suite: replace)"
    variants = {{"reference": "plain PyTorch: ReLU(x @ w)", "chunked": "the same, in row chunks of 64"}}
    relative = (Relative("speedup_x", "step_time_ms", invert=True),)
    metrics = (
        *timing("step_time", "one forward + backward"),
        Metric("max_abs_err", "exact", "lower", "largest |output - reference output|"),
    )

    def grid(self, size, device):
        return [{{"m": m, "k": k, "n": n}} for m, k, n in SHAPES[size]]

    def measure(self, variant, params, device):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(params["m"], params["k"], generator=g).to(device).requires_grad_()
        w = torch.randn(params["k"], params["n"], generator=g).to(device).requires_grad_()
        fn = VARIANTS[variant]

        def step():
            fn(x, w).sum().backward()

        t = time_fn(step, device)
        with torch.no_grad():
            err = (fn(x, w) - reference.forward(x, w)).abs().max().item()
        return Measurement({{"max_abs_err": err}}, timed=t, timings={{"step_time": t}})
''',
    "reports/figures/{name}.py": '''"""{title} figures: step time per variant at each shape."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

METRICS = ("step_time_ms", "speedup_x", "max_abs_err")


def figures(frame: pd.DataFrame) -> list:
    rows = frame[frame["status"] == "ok"]
    if rows.empty:
        return []
    shape = rows["params"].map(lambda p: f"{{p['m']}}x{{p['k']}}x{{p['n']}}")
    fig = go.Figure()
    for variant, part in rows.assign(shape=shape).groupby("variant", sort=False):
        fig.add_bar(x=part["shape"], y=part["step_time_ms"], name=variant)
    fig.update_layout(title="{title}: step time per variant", xaxis_title="M x K x N", yaxis_title="step time (ms)")
    return [fig]
''',
    "tests/impls/test_{name}.py": '''"""{title}: every variant against the reference, outputs and gradients."""

import pytest
import torch

from impls.{name} import chunked, reference


@pytest.mark.parametrize("m, k, n", [(6, 42, 123), (131, 64, 17)])  # odd sizes: a partial last chunk
# fp32: the chunks sum w's gradient in another order; measured up to 3e-5 on gradients of ~1e3, so atol 1e-4.
@pytest.mark.parametrize("dtype, atol, rtol", [(torch.float64, 1e-10, 1e-12), (torch.float32, 1e-4, 1e-5)])
def test_chunked_matches_the_reference(m, k, n, dtype, atol, rtol):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(m, k, generator=g, dtype=dtype, requires_grad=True)
    w = torch.randn(k, n, generator=g, dtype=dtype, requires_grad=True)
    outs, grads = [], []
    for fn in (reference.forward, chunked.forward):
        out = fn(x, w)
        outs.append(out.detach())
        grads.append(torch.autograd.grad(out.square().sum(), (x, w)))
    torch.testing.assert_close(outs[1], outs[0], atol=atol, rtol=rtol)
    for got, want in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(got, want, atol=atol, rtol=rtol)


def test_bad_chunk_is_refused():
    with pytest.raises(ValueError, match="chunk must be at least 1"):
        chunked.forward(torch.ones(2, 2), torch.ones(2, 2), chunk=0)
''',
    "tests/suites/test_{name}.py": '''"""The {name} suite at smoke size on CPU.

Every case ok, its metrics declared, its error against the reference small.
"""

from bench import runner
from bench.suite import discover


def test_the_suite_runs_at_smoke_size(tmp_path):
    suite = discover()["{name}"]
    code, records = runner.run(runner.RunConfig(suites=[suite], size="smoke", device="cpu", out=tmp_path / "run",
                                                inline=True))
    assert code == 0 and records and all(r.status == "ok" for r in records)
    specs = suite.metric_specs()
    for r in records:
        assert set(r.metrics) <= set(specs), set(r.metrics) - set(specs)
        assert r.metrics["max_abs_err"] < 1e-4 and r.metrics["step_time_ms"] > 0
''',
}


class ScaffoldError(ValueError):
    """The name or the target cannot take a new technique; nothing was written."""


def scaffold(name: str, root: Path) -> list[Path]:
    """Write the technique's files under `root` (a techbench checkout); returns them. Refuses to overwrite."""
    if not name.isidentifier() or keyword.iskeyword(name) or name != name.lower() or name.startswith("_"):
        raise ScaffoldError(f"the technique name must be a lower-case Python identifier (e.g. flash_decode), "
                            f"got {name!r}")
    missing = [d for d in ("bench", "impls", "suites", "reports/figures", "tests") if not (root / d).is_dir()]
    if missing:
        raise ScaffoldError(f"{root} is not a techbench checkout (no {', '.join(missing)})")
    paths = {root / p.format(name=name): text for p, text in FILES.items()}
    taken = [str(p.relative_to(root)) for p in paths if p.exists()]
    if taken:
        raise ScaffoldError(f"{name} exists already ({', '.join(taken)}); choose another name")
    title = name.replace("_", " ")
    cls = "".join(part.title() for part in name.split("_"))
    for path, text in paths.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text.format(name=name, title=title, cls=cls))
    return list(paths)

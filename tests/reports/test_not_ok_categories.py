"""Figures on a category axis (a shape's name, a length distribution, an attention type, a case) mark the cases that
did not finish at their category, above the bars and points, as the figures on a numeric axis do: a skipped Triton
kernel or a failed case is a marker with its status in the hover, never a silent gap."""

from pathlib import Path

import pytest

from tests.optional import require

require("plotly")

import plotly.graph_objects as go  # noqa: E402

from reports.figures import NO_X, _specs, add_not_ok, figures_for, load_frame  # noqa: E402
from tests.runs import write_run  # noqa: E402

TEMPLATE = Path(__file__).resolve().parents[2] / "bench" / "templates" / "figures.py.tmpl"
CUDA = "the Triton kernel needs a CUDA device"
BOOM = "Traceback (most recent call last):\n  ...\nRuntimeError: boom"


def case(suite, variant, params, metrics=None, status="ok"):
    error = {"ok": None, "skipped": CUDA, "error": BOOM, "timeout": "no result after 0.3 s"}[status]
    return {"suite": suite, "variant": variant, "params": params, "metrics": metrics or {}, "status": status,
            "error": error}


def _fp8() -> list[dict]:
    out = []
    for shape, n in (("pow2_256", 256), ("pow2_512", 512)):
        gemm = {"part": "gemm", "shape": shape, "m": n, "n": n, "k": n}
        for i, variant in enumerate(("bf16", "tensorwise", "rowwise")):
            ms = 0.1 * n / 256 / (1 + i)
            out.append(case("fp8", variant, gemm, {"gemm_time_ms": ms, "gemm_tflops": 2 * n ** 3 / ms / 1e9,
                                                   "speedup_x": 1.0 + i}))
    out += [case("fp8", "deepseek_v3", {"part": "gemm", "shape": "pow2_256", "m": 256, "n": 256, "k": 256},
                 status="skipped"),
            case("fp8", "deepseek_v3", {"part": "gemm", "shape": "pow2_512", "m": 512, "n": 512, "k": 512},
                 status="error")]
    for impl in ("torch", "triton"):
        quantize = {"part": "quantize", "impl": impl, "operand": "activation", "m": 256, "k": 1024}
        if impl == "torch":
            out += [case("fp8", v, quantize, {"quantize_gbps": 20.0 + i}) for i, v in enumerate(("tensorwise",
                                                                                                  "rowwise"))]
        else:
            out += [case("fp8", "tensorwise", quantize, status="skipped"),
                    case("fp8", "rowwise", quantize, status="error")]
    return out


def _packing() -> list[dict]:
    out = []
    for dist in ("uniform", "zipf"):
        params = {"dist": dist, "sequences": 2000, "packing_length": 512, "batch": 8, "train_rows": 2}
        for i, variant in enumerate(("pad_to_max", "ffd")):
            out.append(case("packing", variant, params, {"packing_efficiency": 0.5 + 0.45 * i,
                                                         "packer_seqs_per_s": 1e6 / (1 + i),
                                                         "effective_tokens_per_s": 1e4 * (1 + i)}))
        out.append(case("packing", "ffd_liger", params, status="skipped"))
        if dist == "zipf":
            out.append(case("packing", "spfhp", params, status="error"))
    return out


def _mla() -> list[dict]:
    cache = {"part": "cache", "shape": "deepseek_v3", "dtype": "bfloat16"}
    out = [case("mla", "mha", cache, {"kv_cache_bytes_per_token": 65536, "kv_cache_elements_per_token": 32768}),
           case("mla", "mla_absorbed", cache, {"kv_cache_bytes_per_token": 1152,
                                                "kv_cache_elements_per_token": 576}),
           case("mla", "hf_deepseek_v3", cache, status="timeout"),
           case("mla", "gqa", cache, status="error"),
           case("mla", "mqa", cache, status="skipped")]
    for context in (32, 64):
        decode = {"part": "decode", "shape": "tiny", "batch": 2, "context": context, "dtype": "float32"}
        out += [case("mla", "mha", decode, {"kv_cache_bytes_per_token": 512, "decode_time_ms": 0.1 * context}),
                case("mla", "hf_deepseek_v3", decode, status="timeout")]
    decode = {"part": "decode", "shape": "tiny", "batch": 2, "context": 128, "dtype": "float32"}
    return out + [case("mla", "mha", decode, status="error")]  # mha has its bar at this shape: marked by context


def _demo() -> list[dict]:
    out = [case("demo_op", v, {"m": 64, "k": 32, "n": 48}, {"step_time_ms": 1.0 + i})
           for i, v in enumerate(("reference", "chunked"))]
    return out + [case("demo_op", "chunked", {"m": 512, "k": 256, "n": 384}, status="error"),
                  case("demo_op", "fused", {"m": 64, "k": 32, "n": 48}, status="skipped")]


@pytest.fixture(scope="module")
def frame(tmp_path_factory):
    run = write_run(tmp_path_factory.mktemp("runs"), "cpu", _fp8() + _packing() + _mla() + _demo(), gpu=None)
    return load_frame([run])


def figure(frame, suite, title_start):
    return next(f for f in figures_for(suite, frame) if f.layout.title.text.startswith(title_start))


def marked(fig, xaxis=None) -> dict[str, list]:
    """status -> the x of each of its markers (on one subplot's x axis, when named)."""
    out: dict[str, list] = {}
    for t in fig.data:
        if (t.legendgroup or "").startswith("status:") and (xaxis is None or (t.xaxis or "x") == xaxis):
            out.setdefault(t.name, []).extend(t.x)
    return {status: sorted(xs) for status, xs in out.items()}


def reasons(fig) -> set[str]:
    return {row[3] for t in fig.data if (t.legendgroup or "").startswith("status:") for row in t.customdata}


def above_the_data(fig) -> bool:
    data = [y for t in fig.data if not (t.legendgroup or "").startswith("status:") and t.y is not None
            for y in t.y if y is not None]
    return all(y > max(data) for t in fig.data if (t.legendgroup or "").startswith("status:") for y in t.y)


def test_fp8_gemm_marks_a_skipped_and_a_failed_recipe_at_its_shape(frame):
    fig = figure(frame, "fp8", "GEMM throughput per shape")
    assert marked(fig) == {"skipped": ["pow2_256"], "error": ["pow2_512"]}
    assert reasons(fig) == {CUDA, "RuntimeError: boom"} and above_the_data(fig)


def test_fp8_quantizers_mark_the_triton_ones(frame):
    fig = figure(frame, "fp8", "Quantizer throughput")
    assert marked(fig) == {"skipped": ["activation · triton"], "error": ["activation · triton"]}
    (skipped,) = [t for t in fig.data if t.name == "skipped"]
    (error,) = [t for t in fig.data if t.name == "error"]
    assert error.y[0] > skipped.y[0]  # stacked at one category, not drawn over one another
    assert above_the_data(fig)


@pytest.mark.parametrize("title", ["packing efficiency", "real tokens per second", "packer speed"])
def test_packing_marks_a_packer_that_did_not_run_at_its_distribution(frame, title):
    fig = figure(frame, "packing", title)
    assert marked(fig) == {"skipped": ["uniform", "zipf"], "error": ["zipf"]}
    assert reasons(fig) == {CUDA, "RuntimeError: boom"} and above_the_data(fig)
    if title == "packing efficiency":  # its 0-to-1 axis stretches to show the marks
        assert fig.layout.yaxis.range[1] > max(y for t in fig.data for y in t.y)


def test_mla_cache_bytes_mark_each_variant_without_a_bar(frame):
    fig = figure(frame, "mla", "KV-cache bytes per token")
    # hf_deepseek_v3 timed out at both shapes (at two contexts of the tiny one: marked once); mha's error at one
    # context leaves its bar, and is marked in the context figures
    assert marked(fig) == {"timeout": ["hf_deepseek_v3", "hf_deepseek_v3"], "error": ["gqa"], "skipped": ["mqa"]}
    assert above_the_data(fig)


def test_the_generic_figures_mark_failures_at_their_case(frame):
    rows = frame[frame["suite"] == "fp8"].reset_index(drop=True)
    figs = {f.layout.title.text.split(":")[1].strip(): f for f in _specs.figures("fp8", rows)}
    for metric in ("speedup_x", "gemm_time_ms"):
        assert marked(figs[metric]) == {"skipped": ["k=256, m=256, n=256, shape=pow2_256"],
                                        "error": ["k=512, m=512, n=512, shape=pow2_512"]}
    assert reasons(figs["speedup_x"]) == {CUDA, "RuntimeError: boom"}


def test_the_scaffolded_figure_module_marks_failures_at_their_shape(frame):
    code = TEMPLATE.read_text().format(name="demo_op", title="demo op", cls="DemoOp")
    module: dict = {}
    exec(compile(code, "reports/figures/demo_op.py", "exec"), module)
    (fig,) = module["figures"](frame[frame["suite"] == "demo_op"].reset_index(drop=True))
    assert marked(fig) == {"error": ["k=256, m=512, n=384"], "skipped": ["k=32, m=64, n=48"]}
    assert reasons(fig) == {CUDA, "RuntimeError: boom"}


def test_the_scaffolded_figure_module_draws_a_grid_of_other_params(tmp_path):
    # a user's grid (here M, N without K) drew nothing before: the module read params["k"], and the report showed a
    # KeyError in its place while bench run exited 0
    code = TEMPLATE.read_text().format(name="bias_gelu", title="bias gelu", cls="BiasGelu")
    module: dict = {}
    exec(compile(code, "reports/figures/bias_gelu.py", "exec"), module)
    records = [case("bias_gelu", v, {"m": 64, "n": 48}, {"step_time_ms": 1.0 + i})
               for i, v in enumerate(("reference", "fused"))]
    records.append(case("bias_gelu", "fused", {"m": 512, "n": 384}, status="error"))
    (fig,) = module["figures"](load_frame([write_run(tmp_path, "cpu", records, gpu=None)]))
    assert [list(t.x) for t in fig.data if t.type == "bar"] == [["m=64, n=48"], ["m=64, n=48"]]
    assert marked(fig) == {"error": ["m=512, n=384"]}


def test_a_case_without_a_category_gets_one_of_its_own(frame):
    rows = frame[frame["suite"] == "demo_op"]
    fig = go.Figure()
    fig.add_bar(x=["64x32x48"], y=[1.0])
    add_not_ok(fig, rows, ["64x32x48"], [1.0])  # no x given: no case has a category of its own
    assert marked(fig) == {"error": [NO_X], "skipped": [NO_X]}

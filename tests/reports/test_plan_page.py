"""The page of a `bench plan`: a chart per suite whose cases are rows labelled by what tells them apart, drawn from
the plan's records alone (no torch), and as a browser draws it: a row of plot for every case at a full plan's size."""


from tests.browser import needs_chromium, probe
from tests.optional import require

require("plotly")

from reports.plan_page import ROW_PX, labels, render, write_plan_page  # noqa: E402

GIB = 1 << 30


def record(suite, variant, status="ok", **params):
    ok = status == "ok"
    case = f"{suite}/{variant}/" + ",".join(f"{k}={v}" for k, v in sorted(params.items()))
    parts = {"parameters": 2 * GIB, "gradients": 2 * GIB, "optimizer": 0, "activations": 40 * GIB, "inputs": GIB,
             "transient": 3 * GIB} if ok else {}
    return {"case_id": case, "suite": suite, "variant": variant, "params": params, "status": status,
            "reason": None if ok else "offload copies the saved activations to host memory",
            "peak_bytes": 48 * GIB if ok else None, "reserved_bytes": 50 * GIB if ok else None,
            "headroom_bytes": 6 * GIB if ok else None, "parts": parts, "fits": ok or None,
            "flops": 3e14 if ok else None, "roofline_ms": 300.0 if ok else None, "attention": ["flash"] if ok else []}


def test_labels_are_the_variant_and_the_params_that_differ():
    rows = [record("ck", "none", batch=8, seq=4096, dtype="bfloat16"),
            record("ck", "full", batch=16, seq=4096, dtype="bfloat16"),
            record("ck", "none", batch=8, seq=4096, dtype="bfloat16", model="hf_llama")]
    names, shared = labels(rows)
    # model is in one case only: it tells that case apart, and is not shared by the others
    assert names == ["none batch=8", "full batch=16", "none batch=8 model=hf_llama"]
    assert shared == {"dtype": "bfloat16", "seq": 4096}
    # two cases apart only in a key one of them lacks, which has the same label: numbered, never one bar
    twins = [record("x", "v", a=1), record("x", "v", a=1, b=None)]
    assert labels(twins)[0][0] != labels(twins)[0][1]
    # numbered past a label a value already reads as: every label stays one case's
    tricky = [record("x", "v", a="1 (1)"), record("x", "v", a=1), record("x", "v", a="1")]
    assert len(set(labels(tricky)[0])) == 3


def test_labels_and_hover_text_are_escaped_for_plotly():
    # plotly reads a category label as HTML: unescaped, c=x<b> would be drawn as the label of c=x
    text = render([record("s", "v", c="x<b>"), record("s", "v", c="x")],
                  {"cases": 2, "size": "full", "gpu": "h200", "capacity_bytes": 140 * GIB})
    assert "v c=x&lt;b&gt;" in text and "v c=x<b>" not in text


def test_a_section_per_suite_in_the_plans_order_and_every_case_in_the_table():
    records = [record("checkpointing", "offload", "not_plannable", batch=8), record("mla", "mha", context=1024),
               record("mla", "gqa", context=1024), record("checkpointing", "none", batch=8)]
    text = render(records, {"cases": 4, "size": "full", "gpu": "h200", "capacity_bytes": int(140.4 * GIB)})
    # the suites in the order of their first plannable case
    assert text.index("mla: memory and roofline") < text.index("checkpointing: memory and roofline")
    assert "every case here: context=1024" in text and "h200: 140.4 GiB" in text
    assert "checkpointing/offload/batch=8" in text and "not_plannable" in text  # listed, with its reason
    assert "host memory" in text
    # the table's columns in one order whichever case comes first: a not-plannable one has no parts
    head = text[text.index("<thead>"):text.index("</thead>")]
    assert head.index("peak GiB") < head.index("parameters GiB") < head.index("fits") < head.index("reason")


# Per figure, once plotly has drawn it: how many cases its y axis holds, the plot's height, and each category label's
# width in px (a long label squeezes the plot).
DRAWN = """
return [...document.querySelectorAll('.plotly-graph-div')].map(gd => {
  const y = gd._fullLayout.yaxis;
  return {cases: y._categories.length, height: y._length,
          label_px: [...gd.querySelectorAll('.yaxislayer-above .ytick text')].map(t => t.getBBox().width)};
});
"""


@needs_chromium
def test_a_full_plans_rows_each_get_plot_height_and_short_labels(tmp_path):
    # moe's full grid: 40 planned cases whose ids run to 100 characters; the labels keep the two params that vary
    records = [record("moe", v, dim=2048, dtype="bfloat16", experts=e, hidden=1024, part="dispatch", tokens=8192,
                      top_k=k) for e in (8, 16, 32, 64, 128, 256) for k in (2, 4, 8)
               for v in ("loop", "grouped_mm", "grouped_torch", "grouped_triton")][:40]
    out = write_plan_page(records, {"cases": 40, "size": "full", "gpu": "h200", "capacity_bytes": 140 * GIB},
                          tmp_path / "plan.html")
    (drawn,) = probe(out, DRAWN, width=1280)
    assert drawn["cases"] == 40
    assert drawn["height"] / 40 >= 0.8 * ROW_PX, drawn["height"]  # the old page gave 40 cases a 50 px strip
    assert max(drawn["label_px"]) < 300, max(drawn["label_px"])  # "grouped_triton experts=256 top_k=8"

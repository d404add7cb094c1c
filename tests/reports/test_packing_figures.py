"""The packing figures against their records: every ok case is a point in each panel whose metric it has, at its
distribution, with its value; one that lacks a panel's metric (measured NaN or infinite) is marked in that panel
alone, not dropped from all three."""

from tests.optional import require

require("plotly")

from reports.figures import NO_VALUE, figures_for, load_frame  # noqa: E402
from tests.runs import write_run  # noqa: E402

PANELS = {"packing efficiency": "packing_efficiency", "real tokens": "effective_tokens_per_s",
          "packer speed": "packer_seqs_per_s"}


def records() -> list[dict]:
    out = []
    for dist, scale in (("uniform", 1.0), ("lognormal", 2.0)):
        params = {"dist": dist, "sequences": 2000, "packing_length": 512, "batch": 8, "train_rows": 2,
                  "d_model": 32, "heads": 2, "layers": 2, "vocab": 128, "dtype": "float32"}
        for i, variant in enumerate(("pad_to_max", "ffd", "spfhp")):
            out.append({"suite": "packing", "variant": variant, "params": params, "metrics": {
                "packing_efficiency": 0.1 * scale + 0.3 * i, "effective_tokens_per_s": 1e4 * scale + 1e3 * i,
                "packer_seqs_per_s": 1e6 * scale + 1e5 * i}})
    spfhp = out[-1]  # lognormal's: its training step's rate measured infinite
    spfhp["metrics"]["effective_tokens_per_s"], spfhp["nonfinite"] = None, {"effective_tokens_per_s": "inf"}
    return out


def test_each_panel_holds_every_case_with_its_metric_and_marks_the_one_without(tmp_path):
    recs = records()
    frame = load_frame([write_run(tmp_path, "smoke", recs, gpu=None, size="smoke")])
    figs = figures_for("packing", frame)
    assert len(figs) == 3
    for fig in figs:
        metric = next(m for title, m in PANELS.items() if fig.layout.title.text.startswith(title))
        drawn = {(t.name.split(" ·")[0], x): y for t in fig.data if t.name in ("pad_to_max", "ffd", "spfhp")
                 for x, y in zip(t.x, t.y)}
        want = {(r["variant"], r["params"]["dist"]): r["metrics"][metric] for r in recs
                if r["metrics"][metric] is not None}
        assert drawn == want, metric
        marked = [t for t in fig.data if t.name == NO_VALUE]
        if metric == "effective_tokens_per_s":
            (mark,) = marked
            assert list(mark.x) == ["lognormal"] and mark.customdata[0][0].startswith("packing/spfhp/")
            assert mark.customdata[0][3] == "effective_tokens_per_s measured inf"
        else:
            assert not marked, metric

import html
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.optional import require

require("plotly")  # every test here draws figures

from reports.figures import figures_for, load_frame, params_groups, run_labels  # noqa: E402
from reports.figures.checkpointing import figures, pareto_front  # noqa: E402
from reports.run_report import render, write_report  # noqa: E402
from tests.runs import A100, H200, checkpointing_records, shards_on_one_machine, write_run  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PLOTLY_MARKER = "plotly.js v"  # the banner at the top of the bundled plotly.js
MYSTERY = [  # a suite with no figure module: the report falls back to its table
    {"suite": "mystery", "variant": "plain", "params": {"n": 3}, "metrics": {"widget_ms": 2.5, "blob_bytes": 3 << 20}},
    {"suite": "mystery", "variant": "fancy", "params": {"n": 3}, "status": "timeout", "error": "no result in 60 s"},
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return [write_run(root, "h200", checkpointing_records() + MYSTERY, gpu=H200),
            write_run(root, "a100", checkpointing_records(scale=1.8, seed=1), gpu=A100)]


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory):
    path = write_report(runs, tmp_path_factory.mktemp("report") / "sub" / "report.html")
    return path, path.read_text(encoding="utf-8")


def not_ok_cases(runs):
    frame = load_frame(runs)
    return frame[frame["status"] != "ok"]


def test_report_is_one_offline_file_with_plotly_once(report):
    path, text = report
    assert path.exists() and path.name == "report.html"
    assert text.count(PLOTLY_MARKER) == 1
    assert not re.search(r"<script[^>]+src=[\"']?(https?:)?//", text)


def test_environment_of_both_gpus(report):
    _, text = report
    for value in ("NVIDIA H200", "NVIDIA A100-SXM4-80GB", "580.65", "570.10", "0123456789ab", "quick", "cuda:0"):
        assert value in text


def test_the_environment_shows_the_memory_and_driver_of_the_gpu_the_run_measured_on(tmp_path):
    # a run on cuda:1 of a machine with an A100 and an H200: the H200's, not the machine's first GPU's
    run = write_run(tmp_path, "r", checkpointing_records(), gpu=A100)
    meta = json.loads((run / "run.json").read_text())
    meta["env"]["gpus"] = [A100, H200]
    (run / "run.json").write_text(json.dumps({**meta, "device": "cuda:1"}))
    rows = {m.group(1): m.group(2) for m in re.finditer(r"<tr><td>([^<]+)</td><td>([^<]*)</td></tr>", render([run]))}
    assert rows["GPU memory"] == "140 GiB" and rows["driver"] == H200["driver_version"], rows


def test_the_environment_of_a_merge_over_two_gpus_of_one_machine_names_both(tmp_path):
    # shards split over an A100 (NVML index 0) and an H200 (index 1) by CUDA_VISIBLE_DEVICES, each on its cuda:0:
    # the table showed the first shard's GPU memory and driver alone, and no row said a second GPU measured
    from bench.cli import main

    shards = shards_on_one_machine(tmp_path, [A100, H200])
    assert main(["merge", *map(str, shards), "--out", str(tmp_path / "m")]) == 0
    rows = {m.group(1): m.group(2) for m in re.finditer(r"<tr><td>([^<]+)</td><td>([^<]*)</td></tr>",
                                                        render([tmp_path / "m"]))}
    assert rows["GPU used"] == "NVIDIA A100-SXM4-80GB (GPU 0) | NVIDIA H200 (GPU 1)", rows
    assert rows["GPU memory"] == "79.2 GiB | 140 GiB" and rows["driver"] == "570.10 | 580.65", rows
    assert rows["GPU"] == "NVIDIA A100-SXM4-80GB, NVIDIA H200"  # one machine


def test_checkpointing_figures_and_mystery_table(report):
    _, text = report
    section = text[text.index("<h2>checkpointing</h2>"):text.index("<h2>mystery</h2>")]
    assert section.count('class="plotly-graph-div"') == 2
    mystery = text[text.index("<h2>mystery</h2>"):text.index("<h2>Cases not ok</h2>")]
    assert "plotly-graph-div" not in mystery
    assert "No figure module for mystery" in mystery
    for cell in ("widget_ms", "blob_bytes", "3 MiB", "mystery/plain/n=3", "mystery/fancy/n=3"):
        assert cell in mystery


def test_metrics_a_figure_modules_table_leaves_out_are_folded_below_it(tmp_path):
    records = checkpointing_records()
    for r in records:
        if r.get("status", "ok") == "ok":
            r["metrics"]["avg_power_w"] = 400.0  # NVML's, not among the figure module's METRICS
    text = render([write_run(tmp_path, "r", records)])
    table, folded = text[text.index("<h3>Results</h3>"):].split("<details><summary>Other metrics (1): avg_power_w")
    assert "avg_power_w" not in table and "<th>avg_power_w</th>" in folded.split("</details>")[0]
    assert "Other metrics" not in render([write_run(tmp_path, "plain", checkpointing_records())])


@pytest.mark.parametrize("loaded, folded", [(2, False), (3, True)])
def test_contended_cases_are_listed_with_their_reasons_folded_under_their_count_when_many(
        tmp_path, monkeypatch, loaded, folded):
    from reports import run_report

    monkeypatch.setattr(run_report, "FOLD_CONTENDED", 2)
    records = checkpointing_records()
    for r in [r for r in records if r.get("status", "ok") == "ok"][:loaded]:
        r["metrics"].update(contended=True, host_other_cpus=1.7, host_case_cpus=0.3, host_cpus=2)
    summary = render([write_run(tmp_path, "r", records)]).split("<h2>Summary</h2>")[1].split("<h2>")[0]
    head = "Contended cases (something outside the case disturbed its timing)"
    assert summary.count("other processes used 1.7 of 2 CPUs during the timed window</li>") == loaded
    if folded:  # the figures below stay near the top of the page; the count and every reason a click away
        assert f"<details><summary>{head}: {loaded}, each with its reason</summary><ul><li>" in summary
    else:
        assert f"<p>{head}:</p><ul><li>" in summary and "<details>" not in summary


def test_each_table_says_what_its_columns_mean_as_the_suite_declared_them(tmp_path):
    text = render([write_run(tmp_path, "r", checkpointing_records())])
    results = text[text.index("<h3>Results</h3>"):]
    legend = results[results.index("<summary>What the columns mean</summary>"):].split("</details>")[0]
    assert ("<li><code>step_time_ms</code> (ms): median time of one training step (forward, loss, backward); lower is "
            "better</li>") in legend
    assert "What the columns mean" not in render([write_run(tmp_path, "bare", checkpointing_records(), declare=False)])


def test_the_artifacts_digest_is_shown_in_hex_as_history_keeps_it(tmp_path):
    records = [{**MYSTERY[0], "metrics": {**MYSTERY[0]["metrics"], "artifacts_digest": 253543948637908}}]
    text = render([write_run(tmp_path, "r", records)])
    assert f"{253543948637908:012x}" in text and "253,543,948,637,908" not in text


def test_a_generic_table_shows_metrics_only(runs):
    from reports.run_report import _generic_metrics

    frame = load_frame(runs).assign(reference="none")  # a declared reference variant: a column of every row
    assert "reference" not in _generic_metrics(frame) and "step_time_ms" in _generic_metrics(frame)


def test_every_failed_case_listed_with_its_reason(report, runs):
    _, text = report
    failures = text[text.index("<h2>Cases not ok</h2>"):]
    bad = not_ok_cases(runs)
    assert set(bad["status"]) == {"oom", "error", "skipped", "timeout"}
    assert len(bad) == 7  # 3 per checkpointing run and the mystery timeout
    for case_id, error in zip(bad["case_id"], bad["error"]):
        assert html.escape(case_id) in failures
        assert html.escape(error.splitlines()[-1]) in failures
    assert "<details>" in failures and "Traceback (most recent call last)" in failures  # the full reason, folded


def test_summary_counts_each_status(report):
    _, text = report
    summary = text[text.index("<h2>Summary</h2>"):text.index("<h2>checkpointing</h2>")]
    assert re.search(r"<td>checkpointing</td><td>NVIDIA H200</td>" + "".join(
        rf'<td class="num">{n}</td>' for n in (10, 1, 0, 1, 1, 13)), summary)


def test_hover_has_case_ids_and_reproduce_commands(report, runs):
    _, text = report
    assert "checkpointing/full/batch=4,d_model=256,dtype=bfloat16,layers=8,seq=256" in text
    # the case alone (--params would match the cases with params of their own too), and its reference's case beside it
    command = ("bench run checkpointing --size quick --device cuda:0 --case checkpointing/full/batch=4,d_model=256,"
               "dtype=bfloat16,layers=8,seq=256 --case checkpointing/none/batch=4,d_model=256,dtype=bfloat16,layers=8,"
               "seq=256")
    assert command.replace("/", "\\u002f") in text  # plotly's JSON escapes "/"
    frame = load_frame(runs)
    assert frame.loc[frame["case_id"] == "checkpointing/none/batch=4,d_model=256,dtype=bfloat16,layers=8,seq=256",
                     "command"].iloc[0].count("--case") == 1  # the reference's own: its case alone
    assert "checkpointing/none/batch=16" in text.split("<h2>Cases not ok</h2>")[0]  # an oom drawn in a figure


def test_figures_distinguish_runs_and_show_failures(runs):
    frame = load_frame(runs)
    pareto, ratios = figures_for("checkpointing", frame)
    names = {t.name for t in pareto.data}
    assert {"NVIDIA H200", "NVIDIA A100-SXM4-80GB", "oom", "error", "skipped", "Pareto front", "none"} <= names
    assert len(pareto.layout.annotations) == 3  # one panel per params group: batch 4, 8, 16
    assert {t.name for t in ratios.data} >= {"oom", "error", "skipped", "offload"}
    runs_drawn = {row[1] for t in pareto.data if t.customdata is not None for row in t.customdata}
    assert runs_drawn == {"NVIDIA H200", "NVIDIA A100-SXM4-80GB"}


def test_pareto_front_keeps_only_undominated_points(runs):
    frame = load_frame(runs)
    rows = frame[(frame["run"] == "NVIDIA H200") & (frame["status"] == "ok") & (frame["suite"] == "checkpointing")]
    rows = dict(params_groups(rows))["batch=4"]
    front = pareto_front(rows, "step_time_ms", "peak_mem_bytes")
    # none is fastest, selective next but heavier than offload, full lightest: sqrt is dominated by offload.
    assert set(front["variant"]) == {"none", "selective", "offload", "full"}


def test_figure_modules_and_fallbacks(runs):
    frame = load_frame(runs)
    assert figures_for("mystery", frame) == []
    assert figures_for("checkpointing", frame[frame["suite"] == "mystery"]) == []  # no records, no figures
    only_failures = frame[(frame["suite"] == "checkpointing") & (frame["status"] != "ok")]
    assert len(figures(only_failures.reset_index(drop=True))) == 1  # ratios need values, the Pareto shows failures


def test_same_machine_runs_get_distinct_labels(tmp_path):
    a = write_run(tmp_path, "a", MYSTERY, size="smoke")
    b = write_run(tmp_path, "b", MYSTERY, size="quick")
    assert run_labels([a, b]) == {str(a): "NVIDIA H200 (smoke)", str(b): "NVIDIA H200 (quick)"}


def test_empty_runs_still_render(tmp_path):
    run = write_run(tmp_path, "empty", [], gpu=None)
    text = render([run])
    assert "hold no records" in text and text.count(PLOTLY_MARKER) == 1


def test_reports_never_import_torch():
    code = ("import sys, reports.run_report, reports.figures.checkpointing; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_an_unfinished_run_says_so_above_everything_with_the_cases_it_lacks(tmp_path):
    import json

    records = [r for r in checkpointing_records() if r.get("status", "ok") == "ok"][:3]
    run = write_run(tmp_path, "cut", records)
    meta = json.loads((run / "run.json").read_text())
    ids = [json.loads(line)["case_id"] for line in (run / "records.jsonl").read_text().splitlines()]
    planned = [*ids, "checkpointing/none/batch=64", "checkpointing/full/batch=64"]  # the run was killed before these
    (run / "run.json").write_text(json.dumps({**meta, "argv": ["bench", "run", "checkpointing", "--size", "quick"],
                                              "finished_at": None, "not_run": planned}))
    text = render([run])
    warning = text[:text.index("<h2>Environment</h2>")]
    assert "<b>NVIDIA H200</b> has not finished: 2 cases it was started for have no record." in warning
    assert html.escape(f"bench run checkpointing --size quick --resume --out {run}") in warning
    assert "<td>finished</td><td>unfinished</td>" in text
    assert "Every case recorded finished ok; the unfinished runs above have cases with no record." in text
    assert "Every case finished ok." not in text
    (run / "run.json").write_text(json.dumps(meta))  # finished: no warning
    assert "has not finished" not in render([run])


def test_cases_without_their_ratios_say_why(tmp_path):
    import json

    records = [r for r in checkpointing_records() if r["variant"] in ("full", "sqrt") and r.get("status", "ok") == "ok"]
    for r in records:
        for ratio in ("time_overhead_x", "mem_saving_x", "recompute_flops_x"):
            r["metrics"].pop(ratio)
    run = write_run(tmp_path, "picked", records)
    meta = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**meta, "variants": ["full", "sqrt"]}))  # bench run --variant full sqrt
    text = render([run])
    assert ("4 cases of NVIDIA H200 have no mem_saving_x, activation_saving_x, time_overhead_x, recompute_flops_x: "
            "the case of the reference variant none was not run (left out of the run&#x27;s --variant "
            "selection)") in text
    assert "<code>bench run checkpointing --variant none full sqrt ...</code> measures both." in text
    # the reference's case failed: said so for the cases whose ratios are absent; a run that had it says nothing
    failed = checkpointing_records()
    for r in failed:
        if (r["variant"], r["params"]["batch"]) == ("none", 8):
            r.update(status="error", metrics={}, samples={}, error="RuntimeError: boom")
        elif r["params"]["batch"] == 8 and r["variant"] in ("full", "sqrt") and r.get("status", "ok") == "ok":
            r["metrics"] = {k: v for k, v in r["metrics"].items() if not k.endswith("_x")}
    text = render([write_run(tmp_path, "failed", failed)])
    assert "2 cases of NVIDIA H200 have no " in text and "the case of the reference variant none is error here" in text
    assert "--variant none full sqrt ..." in text
    assert "have no" not in render([write_run(tmp_path, "whole", checkpointing_records())])


def test_a_run_still_running_or_a_merged_sweep_with_an_unfinished_shard_says_what_to_do(tmp_path):
    import fcntl
    import json
    import os

    from bench.merge import merge

    ok = [r for r in checkpointing_records() if r.get("status", "ok") == "ok"]
    run = write_run(tmp_path, "live", ok[:2])
    meta = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**meta, "finished_at": None, "not_run": ["x"]}))
    fd = os.open(run / ".bench.lock", os.O_RDWR | os.O_CREAT)
    os.write(fd, b"4242\n")
    fcntl.flock(fd, fcntl.LOCK_EX)  # as a bench writing the run holds it
    try:
        text = render([run])
    finally:
        os.close(fd)
    assert "is still running (bench, PID 4242): 1 case it was started for has no record yet." in text
    assert "--resume" not in text.split("<h2>Environment</h2>")[0]
    # a sweep merged before one of its shards finished: the shard's resume line, not the merged folder's
    shards = []
    for i, part in enumerate((ok[:4], ok[4:8]), 1):
        shards.append(write_run(tmp_path / "sweep", f"s{i}", part))
        m = json.loads((shards[-1] / "run.json").read_text())
        m.update(shard=f"{i}/2", argv=["bench", "run", "checkpointing", "--size", "quick", "--shard", f"{i}/2"])
        (shards[-1] / "run.json").write_text(json.dumps({**m, "finished_at": None} if i == 2 else m))
    merge(shards, tmp_path / "merged", ["bench", "merge"])
    warning = render([tmp_path / "merged"]).split("<h2>Environment</h2>")[0]
    assert html.escape(f"bench run checkpointing --size quick --shard 2/2 --resume --out {shards[1]}") in warning
    assert "--out " + str(tmp_path / "merged") not in warning and "; then merge every shard again.</li>" in warning
    # resumed since: no command to run again, a merge to make
    (shards[1] / "run.json").write_text(json.dumps({**json.loads((shards[1] / "run.json").read_text()),
                                                    "finished_at": "2026-12-01T00:00:00Z"}))
    warning = render([tmp_path / "merged"]).split("<h2>Environment</h2>")[0]
    assert "shard 2/2 has finished since; then merge every shard again." in warning and "--resume" not in warning
    shards[1].rename(tmp_path / "elsewhere")  # its folder not here: no command that would be refused
    warning = render([tmp_path / "merged"]).split("<h2>Environment</h2>")[0]
    assert f"resume shard 2/2 ({shards[1]}); then merge every shard again." in warning and "--resume" not in warning


def test_a_sweep_merged_without_a_shard_says_which(tmp_path):
    import json

    from bench.merge import merge

    shard = write_run(tmp_path, "s2", [r for r in checkpointing_records() if r.get("status", "ok") == "ok"][:4])
    (shard / "run.json").write_text(json.dumps({**json.loads((shard / "run.json").read_text()), "shard": "2/2"}))
    merge([shard], tmp_path / "merged", ["bench", "merge"])
    warning = render([tmp_path / "merged"]).split("<h2>Environment</h2>")[0]
    assert "has not finished: no run of shard 1/2 of its sweep was merged; run it (<code>bench run ... --shard 1/2" \
           "</code>, as the other shards were run) and merge every shard again.</li>" in warning

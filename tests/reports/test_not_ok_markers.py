"""Where the figures of a quick run put what did not finish: at the case's own x, from its params, or beside the
data when it has none; and what a world-size axis spans when one world size ran."""

import pytest

from tests.optional import require

require("plotly")

from reports.figures import figures_for, load_frame  # noqa: E402
from tests.reports.quick_run import PAD_FRACTIONS, SKIPPED_EXPERTS, write_quick_run  # noqa: E402


@pytest.fixture(scope="module")
def frame(tmp_path_factory):
    return load_frame([write_quick_run(tmp_path_factory.mktemp("runs"))])


def figure(frame, suite, title_start):
    return next(f for f in figures_for(suite, frame) if f.layout.title.text.startswith(title_start))


def status_traces(fig, status):
    return [t for t in fig.data if t.legendgroup == f"status:{status}"]


def measured_x(fig, xaxis="x"):
    return [x for t in fig.data if (t.xaxis or "x") == xaxis and not (t.legendgroup or "").startswith("status:")
            and "markers" in (t.mode or "") for x in t.x]


@pytest.mark.parametrize("title", ["Dispatch throughput", "Dispatch peak memory"])
def test_moe_skips_sit_at_their_expert_counts(frame, title):
    (skipped,) = status_traces(figure(frame, "moe", title), "skipped")
    assert sorted(skipped.x) == list(SKIPPED_EXPERTS)  # not spread evenly between 8 and 64 (~22 and ~50)


def test_rmpad_skips_sit_at_the_pad_fraction_their_params_make(frame):
    fig = figure(frame, "rmpad", "train:")
    for xaxis in ("x", "x2"):  # both panels
        xs = [x for t in status_traces(fig, "skipped") if t.xaxis == xaxis for x in t.x]
        assert len(xs) == 2 * len(PAD_FRACTIONS)  # flex and flash at each distribution
        assert sorted(set(xs)) == sorted(PAD_FRACTIONS.values())


@pytest.mark.parametrize("title", ["AP small", "AP [.5:.95]"])
def test_a_timeout_has_no_latency_so_it_sits_left_of_the_data(frame, title):
    fig = figure(frame, "detection", title)
    (timeout,) = status_traces(fig, "timeout")
    data = measured_x(fig)
    assert timeout.x[0] < min(data)  # not at an invented latency amid (or above) the measured ones
    (divider,) = [s for s in fig.layout.shapes if s.x0 == s.x1]
    assert timeout.x[0] < divider.x0 < min(data)


@pytest.mark.parametrize("suite", ["fsdp_checkpointing", "moe_ep"])
def test_one_world_size_spans_about_it(frame, suite):
    (fig,) = figures_for(suite, frame)
    for axis in (fig.layout.xaxis, fig.layout.xaxis2):
        assert axis.type == "log" and list(axis.tickvals) == [1]
        lo, hi = axis.range  # decades
        assert -0.5 < lo < 0 < hi < 0.5  # about 1 rank, not 1/8 to 8


def test_checkpointing_failures_without_an_x_stack_beside_the_data(frame):
    fig = figure(frame, "checkpointing", "Savings vs time overhead")
    data = measured_x(fig)
    strip = [(x, y) for s in ("oom", "error", "skipped") for t in status_traces(fig, s) for x, y in zip(t.x, t.y)]
    assert len(strip) == 3 and all(x < min(data) for x, _ in strip)
    assert len({y for _, y in strip}) == 3  # stacked, not drawn over one another


def test_moe_paper_lines_are_labelled_right_of_the_bars(frame):
    fig = figure(frame, "moe", "MaxVio per router")
    labels = [a for a in fig.layout.annotations if "Wang et al. 2024" in a.text]
    assert len(labels) == 2
    for a in labels:  # in the right margin, where no bar is
        assert a.xref == "paper" and a.x >= 1 and a.xanchor == "left"

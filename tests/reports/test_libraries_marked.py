"""Library variants (run.json "libraries") read apart from ours and the reference in every figure."""

from tests.optional import require

require("plotly")

import plotly.graph_objects as go  # noqa: E402

from reports.figures import mark_libraries  # noqa: E402


def test_library_traces_get_a_star_a_dotted_line_and_the_library_in_their_name():
    line, bars = go.Figure(), go.Figure()
    line.add_scatter(x=[1, 2], y=[1, 2], name="bf16", mode="markers+lines")
    line.add_scatter(x=[1, 2], y=[2, 3], name="torchao_rowwise", mode="markers+lines")
    bars.add_bar(x=["a"], y=[1], name="torchao_rowwise")
    bars.add_bar(x=["a"], y=[2], name="rowwise")
    mark_libraries([line, bars], {"torchao_rowwise": "torchao 0.18.0"})
    ours, library = line.data
    assert library.name == "torchao_rowwise · torchao 0.18.0"
    assert library.marker.symbol == "star" and library.line.dash == "dot"
    assert ours.name == "bf16" and ours.marker.symbol is None and ours.line.dash is None
    assert bars.data[0].marker.pattern.shape == "/" and bars.data[1].marker.pattern.shape is None
    assert bars.data[1].name == "rowwise"


def test_without_libraries_nothing_changes():
    fig = go.Figure()
    fig.add_scatter(x=[1], y=[1], name="torchao_rowwise")
    mark_libraries([fig], {})
    assert fig.data[0].name == "torchao_rowwise" and fig.data[0].marker.symbol is None


def test_a_trace_in_the_variants_legend_group_is_marked_whatever_its_name():
    # detection names its points "variant · head · resolution", the samplers a second run's "variant (run)": named
    # so, torchvision's FPN read as one of ours
    fig = go.Figure()
    fig.add_scatter(x=[1], y=[1], name="torchvision_fpn · centernet · 128 px", legendgroup="torchvision_fpn",
                    mode="markers")
    fig.add_scatter(x=[1], y=[2], name="fpn · centernet · 128 px", legendgroup="fpn", mode="markers")
    fig.add_scatter(x=[1], y=[2], name="Pareto front", mode="lines")
    mark_libraries([fig], {"torchvision_fpn": "torchvision 0.26.0"})
    library, ours, front = fig.data
    assert library.name == "torchvision_fpn · centernet · 128 px · torchvision 0.26.0"
    assert library.marker.symbol == "star"
    assert ours.name == "fpn · centernet · 128 px" and ours.marker.symbol is None
    assert front.name == "Pareto front" and front.line.dash is None

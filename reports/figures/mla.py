"""MLA figures: KV-cache bytes per token per attention type (log bars, the values counted from the cache tensors), and
decode time per token, prefill time and peak decode memory against context length per variant."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from reports.figures import add_not_ok, add_run_legend, axis, bytes_unit, colors, hover, hovertemplate, ok, run_symbols

METRICS = ("kv_cache_bytes_per_token", "kv_cache_elements_per_token", "kv_cache_saving_x", "decode_time_ms",
           "decode_tokens_per_s", "decode_speedup_x", "cache_read_gbps", "prefill_time_ms", "peak_mem_bytes",
           "max_abs_err", "max_rel_err")
BAR_HOVER = ("<b>%{customdata[0]}</b><br>%{customdata[1]}<br>%{x}: %{y:,} bytes per token<br>"
             "<span style='font-family:monospace'>%{customdata[2]}</span><extra>%{fullData.name}</extra>")


def figures(frame: pd.DataFrame) -> list:
    frame = frame.assign(part=[p.get("part") for p in frame["params"]])
    color = colors(frame["variant"])
    decode = frame[frame["part"] == "decode"]
    decode = decode.assign(context=[p.get("context") for p in decode["params"]])
    figs = [_cache_bytes(frame),
            _over_context(decode, color, "decode_time_ms", "Decode time per token against context length",
                          "decode step, one token per sequence"),
            _over_context(decode, color, "prefill_time_ms", "Prefill time against context length",
                          "prefilling the context"),
            _over_context(decode, color, "peak_mem_bytes", "Peak memory of a decode step (cache included)", None)]
    return [f for f in figs if f is not None]


def _shape_label(params: dict) -> str:
    return f"{params.get('shape')} · {params.get('dtype')}"


def _cache_bytes(frame):
    rows = ok(frame, "kv_cache_bytes_per_token")
    if rows.empty:
        return None
    several_runs = rows["run"].nunique() > 1
    frame = frame.assign(label=[_shape_label(p) + (f" · {r}" if several_runs else "")
                                for p, r in zip(frame["params"], frame["run"])])
    # one bar per variant and shape, as bytes per token do not vary with context; a variant without one is marked
    # once per status (the context figures mark each context)
    rows = ok(frame, "kv_cache_bytes_per_token").drop_duplicates(["label", "variant"])
    drawn = set(zip(rows["label"], rows["variant"]))
    failed = frame[[(lb, v) not in drawn for lb, v in zip(frame["label"], frame["variant"])]]
    failed = failed.drop_duplicates(["label", "variant", "status"])
    fig = go.Figure()
    for label, part in rows.groupby("label", sort=False):
        elements = part["kv_cache_elements_per_token"] if "kv_cache_elements_per_token" in part else None
        text = None if elements is None else [f"{int(e):,} el." if pd.notna(e) else "" for e in elements]
        fig.add_bar(x=part["variant"].tolist(), y=part["kv_cache_bytes_per_token"].tolist(), name=label,
                    text=text, textposition="outside", customdata=hover(part), hovertemplate=BAR_HOVER)
    add_not_ok(fig, failed, rows["variant"], rows["kv_cache_bytes_per_token"], x=lambda r: r["variant"], log_y=True)
    fig.update_layout(title="KV-cache bytes per token per layer, counted from the cache tensors (elements on bars)",
                      barmode="group", xaxis_title="attention", yaxis_title="bytes per token per layer (log)",
                      yaxis_type="log", template="plotly_white", height=440, legend_title_text="shape · dtype")
    return fig


def _over_context(decode, color, metric, title, y_title):
    rows = ok(decode, metric)
    if rows.empty:
        return None
    scale, unit = (1.0, "") if y_title else bytes_unit(rows[metric])
    y_name = metric if y_title else f"peak {unit}"  # the hover's name for y: bytes are drawn in `unit`
    groups = rows["params"].map(lambda p: (p.get("shape"), p.get("batch"), p.get("dtype")))
    several = groups.nunique() > 1
    symbols = run_symbols(rows)
    fig = go.Figure()
    for (run, variant, group), part in rows.assign(_g=groups).groupby(["run", "variant", "_g"], sort=False):
        part = part.sort_values("context")
        name = variant + (f" · {group[0]} batch {group[1]}" if several else "")
        fig.add_scatter(x=part["context"].tolist(), y=(part[metric] / scale).tolist(), mode="markers+lines",
                        name=name, legendgroup=variant, line={"color": color[variant]},
                        marker={"color": color[variant], "symbol": symbols[run], "size": 9},
                        customdata=hover(part), hovertemplate=hovertemplate("context", y_name))
    add_not_ok(fig, decode, rows["context"], rows[metric] / scale, x=lambda r: r["params"].get("context"),
               log_x=True, log_y=True)
    add_run_legend(fig, rows)
    fig.update_layout(title=title, xaxis_title="context length (tokens, log)", xaxis_type="log",
                      yaxis_title=axis(rows, metric, f"{y_title}, log") if y_title else f"peak bytes ({unit}, log)",
                      yaxis_type="log",
                      template="plotly_white", height=440)
    return fig

"""Self-contained HTML pages: plotly.js embedded once per page (no CDN, opens offline), figures and tables as parts."""

from __future__ import annotations

import functools
import html
import numbers
from collections.abc import Iterable
from dataclasses import dataclass

# Whole numbers below this print in full: a float64 holds every integer up to 2**53 (9.0e15) exactly, so bytes and
# counts read digit for digit; past it the digits are the float's rounding, not the measurement's.
EXACT_BELOW = 1e15

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1280px;
       padding: 0 1rem; color: #1f2328; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.25rem; margin-top: 2.2rem; border-bottom: 1px solid #d0d7de; }
h3 { font-size: 1.05rem; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 0.6rem 0; }
th, td { border: 1px solid #d0d7de; padding: 0.25rem 0.5rem; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; } /* 8.227e-05 breaks at - */
.status-ok { color: #1a7f37; } .status-skipped { color: #6e7781; } .status-oom { color: #9a6700; }
.status-timeout, .status-error, .regression { color: #cf222e; font-weight: 600; }
.improvement { color: #1a7f37; font-weight: 600; }
pre { white-space: pre-wrap; font-size: 0.8rem; margin: 0; }
.muted { color: #6e7781; font-size: 0.85rem; }
.scroll { overflow-x: auto; max-width: 100%; }
td.reason { min-width: 16em; white-space: normal; }
td.wrap, td.wrap code { overflow-wrap: anywhere; }
li code { overflow-wrap: anywhere; } /* a case_id in a list: mtp's, 170 characters, ran off the run report */
td.case-id { min-width: 22em; overflow-wrap: anywhere; } /* suite/variant/k=v,...: no spaces to break at */
.flag { color: #9a6700; font-weight: 600; cursor: help; }
"""


@functools.cache
def plotly_js() -> str:
    import plotly.offline

    return plotly.offline.get_plotlyjs()


def page(title: str, body: str, subtitle: str = "") -> str:
    """A whole HTML document: one inline copy of plotly.js, then `body`."""
    sub = f'<p class="muted">{html.escape(subtitle)}</p>' if subtitle else ""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style>'
            f'<script type="text/javascript">{plotly_js()}</script></head>'
            f'<body><h1>{html.escape(title)}</h1>{sub}\n{body}\n</body></html>\n')


def figure(fig) -> str:
    """A plotly figure as a <div> that uses the page's plotly.js."""
    return fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False, "responsive": True})


def section(title: str, *parts: str, level: int = 2) -> str:
    return f"<h{level}>{html.escape(title)}</h{level}>\n" + "\n".join(parts)


@dataclass(frozen=True)
class Flagged:
    """A table cell's value with a mark beside it whose tooltip says why, e.g. a timing whose samples were noisy."""

    value: object
    mark: str
    why: str


def table(rows: Iterable[dict], columns: list[str] | None = None, classes: dict[str, str] | None = None) -> str:
    """An HTML table of dict rows (escaped), in a box that scrolls sideways when the table is wider than the page.
    `classes` maps a column to a CSS class given to its cells, or to "status" to style each cell by its value
    (status-ok, status-error, ...). A `Flagged` value shows its mark beside it."""
    rows = list(rows)
    columns = columns or list(dict.fromkeys(k for r in rows for k in r))
    classes = classes or {}
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for r in rows:
        cells = []
        for c in columns:
            value = r.get(c)
            flag = value if isinstance(value, Flagged) else None
            value = flag.value if flag else value
            cls = classes.get(c, "num" if isinstance(value, numbers.Real) and not isinstance(value, bool) else "")
            if cls == "status":
                cls = f"status-{value}"
            text = _fmt(value)
            text = f"<pre>{html.escape(text)}</pre>" if "\n" in text else html.escape(text)
            if flag:
                text += f' <span class="flag" title="{html.escape(flag.why)}">{html.escape(flag.mark)}</span>'
            cells.append(f'<td class="{cls}">{text}</td>' if cls else f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<div class=\"scroll\"><table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, numbers.Real):
        return "" if value != value else number(value)  # NaN: a missing value in a pandas column
    return str(value)


def number(value: float) -> str:
    """A number as pages show it: a whole one (bytes, counts) in full with thousands grouping, so that 2,158,084 ->
    2,158,088 reads as the change it is (to 4 significant digits both are 2.158e+06); any other to 4 significant
    digits."""
    if isinstance(value, numbers.Integral) or (float(value).is_integer() and abs(value) < EXACT_BELOW):
        return f"{int(value):,}"
    return f"{value:.4g}" if abs(value) < 1e6 else f"{value:.4e}"


def human_bytes(value) -> str | None:
    """Bytes in binary units at 3 significant digits ("1.5 GiB"); None for a missing value (None, NaN)."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    value = float(value)
    for power, unit in ((4, "TiB"), (3, "GiB"), (2, "MiB"), (1, "KiB")):
        if abs(value) >= 1024 ** power:
            return f"{value / 1024 ** power:.3g} {unit}"
    return f"{value:.0f} B"

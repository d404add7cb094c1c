"""The work a timed call does, and what the harness derives from it: rates, % of peak, the roofline bound, energy.

A case says what one call of a named timing did (`Work`: tokens, items, FLOPs, bytes moved, the dtype the FLOPs run
in); the runner turns it into metrics with the timing's median, the device's datasheet peaks (bench.hardware) and
the GPU power over the headline timing's window. A suite declares the same metrics with `rates(...)`, so that names,
units and kinds come from one place. With prefix p:

    tokens        -> p + tokens_per_s,                       p + energy_per_token_j
    items         -> p + {item}s_per_s,                      p + energy_per_{item}_j
    flops         -> p + tflops, p + pct_of_peak              (peak of `dtype`; null where the GPU is not in the table)
    bytes         -> p + gbps,   p + pct_of_bandwidth
    flops, bytes  -> p + roofline_ms, p + pct_of_roofline     (roofline_ms = max(flops / peak, bytes / bandwidth))

Energies need NVML and the headline timing (`Measurement.timed`), the only window telemetry is summarised over;
elsewhere they are null, as are peaks on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.metrics import Metric


@dataclass(frozen=True)
class Work:
    """What one call of the timing `of` (a key of Measurement.timings) did."""

    of: str
    prefix: str = ""
    tokens: float | None = None
    items: float | None = None
    item: str = "item"
    """What `items` counts, singular: "image" gives images_per_s and energy_per_image_j."""
    flops: float | None = None
    bytes: float | None = None
    """Bytes moved between memory and the chip (read + written): the memory side of the roofline."""
    dtype: str | None = None
    """The dtype the FLOPs compute in ("bfloat16", "float8_e4m3fn", ...): which peak they are held against."""

    def derive(self, median_ms: float, peak_tflops: float | None, peak_gbps: float | None,
               power_w: float | None) -> dict[str, float | None]:
        """The metrics this work gives at `median_ms` a call, against the device's peaks and mean power (None where
        unknown)."""
        p, seconds = self.prefix, median_ms / 1e3
        joules = None if power_w is None else power_w * seconds
        out: dict[str, float | None] = {}
        for count, unit, rate in ((self.tokens, "token", "tokens"), (self.items, self.item, f"{self.item}s")):
            if count is not None:
                out[f"{p}{rate}_per_s"] = count / seconds if seconds > 0 else None
                out[f"{p}energy_per_{unit}_j"] = None if joules is None or not count else joules / count
        bounds = []
        if self.flops is not None:
            tflops = self.flops / seconds / 1e12 if seconds > 0 else None
            out[f"{p}tflops"] = tflops
            out[f"{p}pct_of_peak"] = _pct(tflops, peak_tflops)
            bounds.append(None if not peak_tflops else self.flops / (peak_tflops * 1e12))
        if self.bytes is not None:
            gbps = self.bytes / seconds / 1e9 if seconds > 0 else None
            out[f"{p}gbps"] = gbps
            out[f"{p}pct_of_bandwidth"] = _pct(gbps, peak_gbps)
            bounds.append(None if not peak_gbps else self.bytes / (peak_gbps * 1e9))
        if bounds:
            roofline_ms = None if None in bounds else max(bounds) * 1e3
            out[f"{p}roofline_ms"] = roofline_ms
            out[f"{p}pct_of_roofline"] = _pct(roofline_ms, median_ms)
        return out


def _pct(value: float | None, peak: float | None) -> float | None:
    return None if value is None or not peak else 100 * value / peak


def rates(of: str, prefix: str = "", *, tokens: bool = False, item: str | None = None, flops: bool = False,
          bytes: bool = False, what: str = "") -> tuple[Metric, ...]:
    """The specs of the metrics a `Work(of, prefix, ...)` gives: declare them in a suite's `metrics` beside
    `bench.metrics.timing(of, ...)`. `what` says what the work is, for the meanings."""
    p, clock = prefix, f"{of}_ms"
    what = f" ({what})" if what else ""
    specs = []
    if tokens:
        specs += [Metric(f"{p}tokens_per_s", "derived", "higher", f"tokens{what} / median {of}", unit="tokens/s",
                         inputs=(clock,)),
                  Metric(f"{p}energy_per_token_j", "derived", "lower", f"GPU energy per token{what}",
                         unit="J/token", inputs=(clock, "avg_power_w"))]
    if item:
        specs += [Metric(f"{p}{item}s_per_s", "derived", "higher", f"{item}s{what} / median {of}",
                         unit=f"{item}s/s", inputs=(clock,)),
                  Metric(f"{p}energy_per_{item}_j", "derived", "lower", f"GPU energy per {item}{what}",
                         unit=f"J/{item}", inputs=(clock, "avg_power_w"))]
    if flops:
        specs += [Metric(f"{p}tflops", "derived", "higher", f"FLOPs{what} / median {of}", unit="TFLOP/s",
                         inputs=(clock,)),
                  Metric(f"{p}pct_of_peak", "derived", "higher", f"{p}tflops as % of the dense datasheet peak for "
                         "the dtype (null on a CPU or an unlisted GPU)", unit="%", inputs=(f"{p}tflops",))]
    if bytes:
        specs += [Metric(f"{p}gbps", "derived", "higher", f"bytes moved{what} / median {of}", unit="GB/s",
                         inputs=(clock,)),
                  Metric(f"{p}pct_of_bandwidth", "derived", "higher", f"{p}gbps as % of the datasheet memory "
                         "bandwidth (null on a CPU or an unlisted GPU)", unit="%", inputs=(f"{p}gbps",))]
    if flops or bytes:
        specs += [Metric(f"{p}roofline_ms", "info", None, f"the roofline's lower bound on {of}: max(FLOPs / peak, "
                         "bytes / bandwidth)"),
                  Metric(f"{p}pct_of_roofline", "derived", "higher", f"{p}roofline_ms as % of the median {of}",
                         unit="%", inputs=(clock,))]
    return tuple(specs)

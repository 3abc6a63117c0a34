"""Charts drawn on the server as inline SVG: no JavaScript library, nothing fetched, styled by the
page's CSS (static/style.css names the classes used here).

Every text that comes from the store (feature names, versions) is escaped: a feature name is
whatever a request file said.
"""

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from markupsafe import Markup, escape

# Each chart is drawn at about the size it is shown (user units ~ CSS pixels), so that its text
# reads at the page's size: a full-width chart, or one of two side by side.
WIDE, HALF = 1150, 560
RIGHT, TOP, BOTTOM = 16, 12, 26  # margins around the plot area


def _number(value: float) -> str:
    return f"{value:.1f}"


def _svg(frame: "Frame", body: list[str], label: str) -> Markup:
    return Markup(f'<svg class="chart" viewBox="0 0 {frame.width} {frame.height}" role="img" '
                  f'aria-label="{escape(label)}" xmlns="http://www.w3.org/2000/svg">{"".join(body)}</svg>')


TIME_STEPS = [3600 * h for h in (1, 2, 3, 6, 12)] + [86400 * d for d in (1, 2, 7, 14, 30, 91, 365)]


def _time_ticks(start: float, end: float, count: int) -> list[tuple[float, str]]:
    """At most ``count`` round times (on the hour, at midnight UTC) between two instants, labelled
    by date, or by date and hour when they are less than a day apart."""
    step = next((s for s in TIME_STEPS if (end - start) / s <= count), TIME_STEPS[-1])
    fmt = "%Y-%m-%d" if step >= 86400 else "%m-%d %H:%M"
    first = math.ceil(start / step) * step
    return [(t, datetime.fromtimestamp(t, UTC).strftime(fmt)) for t in range(int(first), int(end) + 1, step)]


def _value_ticks(low: float, high: float, count: int = 4) -> list[float]:
    step = (high - low) / count
    if not 0 < step < math.inf:  # one value; or values so far apart that their range is no float
        return [low] if step <= 0 else [low, high]
    magnitude = 10 ** math.floor(math.log10(step))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= step)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def _tick_label(value: float) -> str:
    return f"{value:.3g}"


@dataclass(frozen=True)
class Frame:
    """A plot area and the value ranges it maps."""

    width: int
    height: int
    left: int
    x_low: float
    x_high: float
    y_low: float
    y_high: float

    def x(self, value: float) -> float:
        span = self.x_high - self.x_low or 1.0
        return self.left + (value - self.x_low) / span * (self.width - self.left - RIGHT)

    def y(self, value: float) -> float:
        # in halves: the difference of two finite floats may be none (1.5e308 - -1.5e308)
        span = self.y_high / 2 - self.y_low / 2 or 0.5
        return self.height - BOTTOM - (value / 2 - self.y_low / 2) / span * (self.height - TOP - BOTTOM)

    def y_axis(self) -> list[str]:
        parts = []
        for tick in _value_ticks(self.y_low, self.y_high):
            y = _number(self.y(tick))
            parts.append(f'<line class="grid" x1="{self.left}" x2="{self.width - RIGHT}" y1="{y}" y2="{y}"/>'
                         f'<text class="tick" x="{self.left - 6}" y="{y}" text-anchor="end" dominant-baseline="middle">'
                         f'{_tick_label(tick)}</text>')
        return parts

    def time_axis(self, count: int) -> list[str]:
        bottom = self.height - BOTTOM
        parts = []
        for at, label in _time_ticks(self.x_low, self.x_high, count):
            x = self.x(at)
            anchor = "start" if x < self.left + 36 else "end" if x > self.width - RIGHT - 36 else "middle"
            parts.append(f'<line class="grid" x1="{_number(x)}" x2="{_number(x)}" y1="{TOP}" y2="{bottom}"/>'
                         f'<text class="tick" x="{_number(x)}" y="{bottom + 16}" text-anchor="{anchor}">{label}</text>')
        return parts

    def guide(self, value: float, label: str, kind: str) -> str:
        y = _number(self.y(value))
        return (f'<line class="guide {kind}" x1="{self.left}" x2="{self.width - RIGHT}" y1="{y}" y2="{y}"/>'
                f'<text class="guide-label {kind}" x="{self.width - RIGHT - 4}" y="{_number(self.y(value) - 4)}" '
                f'text-anchor="end">{escape(label)}</text>')


def _polylines(frame: Frame, xs: Sequence[float], ys: Sequence[float | None], kind: str) -> list[str]:
    """The line through the points, broken where a value is missing (an empty window)."""
    runs: list[list[str]] = [[]]
    for x, y in zip(xs, ys):
        if y is None:
            if runs[-1]:
                runs.append([])
            continue
        runs[-1].append(f"{_number(frame.x(x))},{_number(frame.y(y))}")
    return [f'<polyline class="line {kind}" points="{" ".join(run)}"/>' for run in runs if run]


def psi_chart(feature: str, starts: Sequence[float], values: Sequence[float | None], statuses: Sequence[str],
              watch: float, investigate: float, window_seconds: int) -> Markup:
    """One feature's PSI per window over time, with the watch and investigate thresholds drawn."""
    height = 170
    finite = [v for v in values if v is not None]
    top = max([investigate * 1.5, *finite]) * 1.08
    end = (starts[-1] + window_seconds) if starts else 1.0
    frame = Frame(HALF, height, 40, starts[0] if starts else 0.0, end, 0.0, top)
    body = frame.y_axis() + frame.time_axis(4)
    body += [frame.guide(watch, f"{watch:g} watch", "watch"), frame.guide(investigate, f"{investigate:g} investigate",
                                                                           "investigate")]
    body += _polylines(frame, starts, values, "psi")
    if len(starts) <= 120:  # a dot per window while dots stay apart
        for at, value, status in zip(starts, values, statuses):
            if value is not None:
                moment = datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M")
                body.append(f'<circle class="dot {status}" cx="{_number(frame.x(at))}" cy="{_number(frame.y(value))}" '
                            f'r="3"><title>{moment}: PSI {value:.3f} ({status})</title></circle>')
    return _svg(frame, body, f"PSI of {feature} over time")


def metric_chart(metric: str, versions: Sequence[str], values: Sequence[float | None],
                 verdicts: Sequence[str | None], marked: dict[str, str]) -> Markup:
    """One metric across versions, oldest to newest; each dot coloured by the version's gate verdict
    on that metric, and the versions in ``marked`` (version -> pointer) labelled."""
    height = 220
    finite = [v for v in values if v is not None]
    low, high = (min(finite), max(finite)) if finite else (0.0, 1.0)
    pad = (high / 2 - low / 2) * 0.2 or abs(high) * 0.05 or 0.5
    frame = Frame(HALF, height, 48, -0.3, max(len(versions) - 1, 1) + 0.3, max(low - pad, -sys.float_info.max),
                  min(high + pad, sys.float_info.max))
    body = frame.y_axis()
    body += _polylines(frame, range(len(versions)), values, "metric")
    every = max(1, math.ceil(len(versions) / 8))
    bottom = height - BOTTOM
    for i, (version, value, verdict) in enumerate(zip(versions, values, verdicts)):
        x = _number(frame.x(i))
        if i % every == 0 or i == len(versions) - 1 or version in marked:
            body.append(f'<text class="tick" x="{x}" y="{bottom + 16}" text-anchor="middle">{escape(version)}</text>')
        if value is None:
            continue
        note = f" · gate: {verdict}" if verdict else ""
        body.append(f'<circle class="dot {verdict or "none"}" cx="{x}" cy="{_number(frame.y(value))}" r="4">'
                    f'<title>{escape(version)}: {escape(metric)} = {value:g}{escape(note)}</title></circle>')
        if version in marked:
            body.append(f'<text class="mark" x="{x}" y="{_number(frame.y(value) - 9)}" text-anchor="middle">'
                        f'{escape(marked[version])}</text>')
    return _svg(frame, body, f"{metric} across versions")


@dataclass(frozen=True)
class Bar:
    lane: str
    label: str
    start: float
    end: float
    title: str
    highlighted: bool = False


def timeline_chart(lanes: Sequence[str], bars: Sequence[Bar], start: float, end: float,
                   marker: tuple[float, float] | None = None, marker_label: str = "") -> Markup:
    """A lane per pointer, a bar per version it named and for how long; ``marker`` (a span of time,
    a day say) is shaded."""
    lane_height, top = 26, 8
    height = top + lane_height * len(lanes) + BOTTOM
    frame = Frame(WIDE, height, 110, start, max(end, start + 1), 0, 1)
    body = frame.time_axis(7)  # first: the bars are drawn over its lines
    for i, lane in enumerate(lanes):
        y = top + i * lane_height
        body.append(f'<text class="lane" x="{frame.left - 8}" y="{y + lane_height / 2}" text-anchor="end" '
                    f'dominant-baseline="middle">{escape(lane.replace("_", " "))}</text>')
        body.append(f'<line class="grid" x1="{frame.left}" x2="{frame.width - RIGHT}" y1="{y + lane_height}" '
                    f'y2="{y + lane_height}"/>')
    if marker is not None:
        x0, x1 = frame.x(max(marker[0], start)), frame.x(min(marker[1], end))
        body.append(f'<rect class="marker" x="{_number(x0)}" y="{top}" width="{_number(max(x1 - x0, 2))}" '
                    f'height="{lane_height * len(lanes)}"><title>{escape(marker_label)}</title></rect>')
    index = {lane: i for i, lane in enumerate(lanes)}
    for bar in bars:
        x0, x1 = frame.x(bar.start), frame.x(bar.end)
        y = top + index[bar.lane] * lane_height + 4
        width = max(x1 - x0, 1.5)
        kind = f"bar {bar.lane}" + (" highlighted" if bar.highlighted else "")
        body.append(f'<g class="{kind}"><rect x="{_number(x0)}" y="{y}" width="{_number(width)}" '
                    f'height="{lane_height - 8}" rx="3"><title>{escape(bar.title)}</title></rect>')
        if width >= 7 * len(bar.label) + 6:  # the label fits inside the bar
            body.append(f'<text x="{_number(x0 + 4)}" y="{y + (lane_height - 8) / 2}" '
                        f'dominant-baseline="middle">{escape(bar.label)}</text>')
        body.append("</g>")
    return _svg(frame, body, "pointers over time")

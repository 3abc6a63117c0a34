"""A drift report as a PNG: each feature's PSI over time, with the two thresholds drawn.

matplotlib (its Agg backend, no display) is an optional dependency: ``pip install
'artifactstore[plot]'``; without it ``plot_drift`` says so in one line.
"""

from pathlib import Path

import numpy as np

from ..errors import InvalidParameter
from .report import DriftReport


def plot_drift(report: DriftReport, path: Path) -> Path:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise InvalidParameter("--plot needs matplotlib, which is not installed: pip install 'artifactstore[plot]'") \
            from None
    figure = Figure(figsize=(10, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    times = report.starts.astype("datetime64[s]")
    for f, feature in enumerate(report.features):
        values = report.psi[:, f]
        if not np.isnan(values).all():
            axes.plot(times, values, marker="o" if len(times) < 60 else None, markersize=3, linewidth=1.2,
                      label=feature)
    thresholds = report.thresholds
    axes.axhline(thresholds.watch, color="orange", linestyle="--", linewidth=1, label=f"watch {thresholds.watch:g}")
    axes.axhline(thresholds.investigate, color="red", linestyle="--", linewidth=1,
                 label=f"investigate {thresholds.investigate:g}")
    against = "its baseline" if report.against == "baseline" else report.against
    axes.set_title(f"PSI of {report.model}@{report.version} against {against}, per {report.window_seconds // 60} min")
    axes.set_xlabel("window start (UTC)")
    axes.set_ylabel("PSI")
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small", loc="upper left", ncols=2)
    figure.autofmt_xdate()
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, format="png")
    return path

"""What the benchmarks here share: ours and a peer timed alternately in one run, medians with
ranges, the load average beside every figure, a JSON result.

The machines these run on are shared and noisy: a figure means something only beside the peer's,
measured in the same run, in the same repetitions. So each repetition runs every side once, in
turn, and a ratio is taken within each repetition before its median is.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def load_average() -> float:
    """The 1-minute load average (how busy the machine was while this ran)."""
    return round(os.getloadavg()[0], 2)


def spread(samples: list[float]) -> dict[str, float]:
    """Median and range of a list of numbers."""
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples)}


def timed(action: Callable[[Any], object], state: Any = None, cpu: list[float] | None = None) -> float:
    """Wall seconds of ``action(state)``; with ``cpu``, also appends the CPU seconds this process
    spent meanwhile (every thread, user and system): a figure a busy host disturbs less."""
    cpu_started, started = time.process_time(), time.perf_counter()
    result = action(state)
    seconds = time.perf_counter() - started
    if cpu is not None:
        cpu.append(time.process_time() - cpu_started)
    del result  # freeing what the action returned is no part of it: only once the clock is read
    return seconds


def interleaved(repeat: int, sides: dict[str, tuple[Callable[[], Any], Callable[[Any], object]]],
                before_each: Callable[[], None] = lambda: None,
                cpu: dict[str, list[float]] | None = None) -> dict[str, list[float]]:
    """Seconds of each side's ``action(setup())`` in every repetition; each repetition runs the
    sides in turn (the setup untimed, ``before_each`` just before each timed action). With
    ``cpu`` (an empty dict), each side's CPU seconds go there too."""
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(repeat):
        for name, (setup, action) in sides.items():
            state = setup()
            before_each()
            times[name].append(timed(action, state, None if cpu is None else cpu.setdefault(name, [])))
    return times


def ratios(peer: list[float], ours: list[float]) -> dict[str, float]:
    """peer seconds / our seconds, repetition by repetition (above 1: ours is faster)."""
    return spread([p / o for p, o in zip(peer, ours)])


def rate(size: int, seconds: list[float]) -> dict[str, float]:
    """GB/s of each repetition, as median and range."""
    return spread([size / s / 1e9 for s in seconds])


def describe(figure: dict[str, float], unit: str = "", digits: int = 2) -> str:
    return f"{figure['median']:.{digits}f}{unit} ({figure['min']:.{digits}f}-{figure['max']:.{digits}f})"


def write_json(path: str | None, result: dict[str, Any]) -> None:
    """Write ``result`` (with the machine's CPU model) to ``path`` if one was given."""
    if path:
        Path(path).write_text(json.dumps({"cpu": cpu_model(), **result}, indent=1) + "\n")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"

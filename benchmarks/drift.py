"""Drift benchmark: what observing a request costs, and how fast a year of windows reports.

1. Observation, per feature value: ``Monitor.observe_batch`` (numpy: a binary search per value,
   a bincount per feature and batch) against two peers, interleaved, several repetitions:
   - a naive Python loop (``bisect`` per value, a dict per category), what a server would write
     without numpy;
   - an Evidently-style window: keep the raw values, and at the window's end recompute bin edges
     from reference plus current values and histogram both (numpy), per feature.
   Each counts the same batches (16 numeric and 4 categorical features); the figure is
   nanoseconds per value, median and range.
2. Reporting: a store holding a year of hourly windows (8760) for 20 features from 3 nodes;
   ``Store.drift`` (read the Zarr arrays, sum the nodes, PSI of every window and feature) and the
   ``artifactstore drift --json`` command end to end. Target: under a second.

Usage: python benchmarks/drift.py [--repetitions 7] [--out FILE.json]
"""

import argparse
import bisect
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from artifactstore import Store
from artifactstore.demo import adapter_history, write_bundle
from artifactstore.monitoring.arrays import version_path
from artifactstore.registry.refs import ModelName

NUMERIC, CATEGORICAL = 16, 4
CATEGORIES = ["billing", "tech", "sales", "legal", "account", "other"]
BATCH = 4096
BATCHES = 24  # per repetition: ~98k requests, ~2M values
HOURS = 8760


def reference(rng, n: int) -> list[dict]:
    return [{"inputs": {f"x{i}": float(rng.normal(i, 1 + i / 4)) for i in range(NUMERIC)}
             | {f"c{i}": str(rng.choice(CATEGORIES[:4])) for i in range(CATEGORICAL)}} for _ in range(n)]


def batches(rng) -> list[dict[str, np.ndarray]]:
    return [{f"inputs.x{i}": rng.normal(i + 0.2, 1 + i / 4, BATCH) for i in range(NUMERIC)}
            | {f"inputs.c{i}": rng.choice(CATEGORIES, BATCH) for i in range(CATEGORICAL)} for _ in range(BATCHES)]


def ours(monitor, data: list[dict[str, np.ndarray]], at: float) -> None:
    for batch in data:
        monitor.observe_batch(batch, at=at)
    # not flushed: the figure is the observation; a flush is one append per window


def naive(baseline, data: list[dict[str, np.ndarray]]) -> None:
    counts = {f.name: [0] * f.bins for f in baseline.features}
    edges = {f.name: f.edges.tolist() for f in baseline.features if f.kind == "numeric"}
    index = {f.name: {c: i for i, c in enumerate(f.categories)} for f in baseline.features if f.kind != "numeric"}
    for batch in data:
        for name, values in batch.items():
            bins = counts[name]
            if name in edges:
                cuts = edges[name]
                for v in values.tolist():
                    bins[bisect.bisect_right(cuts, v)] += 1
            else:
                known, other = index[name], len(index[name])
                for v in values.tolist():
                    bins[known.get(v, other)] += 1


def evidently_style(ref: dict[str, np.ndarray], data: list[dict[str, np.ndarray]]) -> None:
    window = {name: np.concatenate([batch[name] for batch in data]) for name in data[0]}
    for name, current in window.items():
        if current.dtype.kind == "f":
            edges = np.histogram_bin_edges(np.concatenate([ref[name], current]), bins=10)
            np.histogram(ref[name], edges)
            np.histogram(current, edges)
        else:
            categories = np.unique(np.concatenate([ref[name], current]))
            np.searchsorted(categories, ref[name])
            np.bincount(np.searchsorted(categories, current), minlength=len(categories))


def observation(work: Path, repetitions: int) -> dict:
    rng = np.random.default_rng(0)
    store = Store.init(work / "observe")
    store.push(write_bundle(adapter_history(layers=2, scale=16)[0], work / "bundle"), "acme/support@v1.0.0")
    (work / "ref.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reference(rng, 5000)))
    store.take_baseline("acme/support@v1.0.0", work / "ref.jsonl")
    baseline = store.monitor("acme/support@v1.0.0").baseline
    ref = {f"inputs.x{i}": rng.normal(i, 1 + i / 4, 5000) for i in range(NUMERIC)} | \
        {f"inputs.c{i}": rng.choice(CATEGORIES[:4], 5000) for i in range(CATEGORICAL)}
    data = batches(rng)
    values = BATCH * BATCHES * (NUMERIC + CATEGORICAL)
    monitor = store.monitor("acme/support@v1.0.0", node="bench")
    peers = {"artifactstore Monitor.observe_batch": lambda: ours(monitor, data, 1.8e9),
             "naive Python loop": lambda: naive(baseline, data),
             "Evidently-style window recomputation": lambda: evidently_style(ref, data)}
    samples: dict[str, list[float]] = {name: [] for name in peers}
    for _ in range(repetitions):
        for name, run in peers.items():  # interleaved: a change of load hits every contender alike
            started = time.perf_counter()
            run()
            samples[name].append((time.perf_counter() - started) / values * 1e9)
    return {name: {"median_ns_per_value": statistics.median(s), "min_ns_per_value": min(s),
                   "max_ns_per_value": max(s)} for name, s in samples.items()} | {"values_per_repetition": values}


def year_of_windows(work: Path, repetitions: int) -> dict:
    rng = np.random.default_rng(1)
    store = Store.init(work / "year")
    store.push(write_bundle(adapter_history(layers=2, scale=16)[0], work / "bundle-year"), "acme/support@v1.0.0")
    (work / "ref-year.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reference(rng, 5000)))
    store.take_baseline("acme/support@v1.0.0", work / "ref-year.jsonl")
    store.promote("acme/support@v1.0.0")
    baseline = store.monitor("acme/support@v1.0.0").baseline
    start = 1_767_225_600  # 2026-01-01T00:00:00Z
    proportions = baseline.reference / np.repeat(np.add.reduceat(baseline.reference, baseline.offsets),
                                                 baseline.bins)
    drift = np.linspace(0, 1, HOURS)[:, None]
    for node in ("node-a", "node-b", "node-c"):
        counts = np.zeros((HOURS, baseline.width), dtype=np.int64)
        for f, (first, bins) in enumerate(zip(baseline.offsets, baseline.bins)):
            p = proportions[first:first + bins] * (1 - 0.5 * drift) + 0.5 * drift / bins
            counts[:, first:first + bins] = [rng.multinomial(100, row / row.sum()) for row in p]
        rows = np.concatenate([start + np.arange(HOURS, dtype=np.int64)[:, None] * 3600, counts], axis=1)
        with store.monitoring.writing():
            store.monitoring.append(store.monitoring.store,
                                    f"{version_path(ModelName('acme', 'support'), 'v1.0.0')}/nodes/{node}/counts",
                                    rows, 0)
    api = []
    for _ in range(repetitions):
        started = time.perf_counter()
        report = Store(work / "year").drift("acme/support")
        api.append(time.perf_counter() - started)
    assert report.psi.shape == (HOURS, NUMERIC + CATEGORICAL)
    command, startup = [], []
    for _ in range(max(3, repetitions // 2)):  # interleaved with what every command pays before its work
        started = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "artifactstore", "drift", "acme/support", "--json",
                                 "--store", str(work / "year")], capture_output=True, check=True)
        command.append(time.perf_counter() - started)
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "artifactstore", "--help"], capture_output=True, check=True)
        startup.append(time.perf_counter() - started)
    windows = len(json.loads(result.stdout)["psi"])
    return {"windows": windows, "features": NUMERIC + CATEGORICAL, "nodes": 3,
            "store_drift_seconds": {"median": statistics.median(api), "min": min(api), "max": max(api)},
            "cli_drift_json_seconds": {"median": statistics.median(command), "min": min(command),
                                       "max": max(command)},
            "cli_help_seconds": {"median": statistics.median(startup), "min": min(startup), "max": max(startup)},
            "cli_output_bytes": len(result.stdout)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repetitions", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "artifactstore-drift.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="drift-bench-"))
    load_before = os.getloadavg()
    try:
        observe = observation(work, args.repetitions)
        year = year_of_windows(work, args.repetitions)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()
    figures = {"observation": observe, "year_of_hourly_windows": year,
               "load_average_before": load_before, "load_average_after": load_after,
               "cpus": os.cpu_count(), "repetitions": args.repetitions}
    args.out.write_text(json.dumps(figures, indent=1))
    print(f"load average before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
          f"after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f} ({os.cpu_count()} CPUs)")
    print(f"observation, ns per value ({observe['values_per_repetition']:,} values per repetition, "
          f"{args.repetitions} interleaved repetitions, median [min-max]):")
    for name, f in observe.items():
        if isinstance(f, dict):
            print(f"  {name:40} {f['median_ns_per_value']:9.1f}  [{f['min_ns_per_value']:.1f}-"
                  f"{f['max_ns_per_value']:.1f}]")
    api, command = year["store_drift_seconds"], year["cli_drift_json_seconds"]
    print(f"a year of hourly windows ({year['windows']} windows x {year['features']} features, {year['nodes']} nodes):")
    print(f"  Store.drift                              {api['median']:.3f} s  [{api['min']:.3f}-{api['max']:.3f}]"
          f"  (target < 1 s)")
    startup = year["cli_help_seconds"]
    print(f"  artifactstore drift --json (process)     {command['median']:.3f} s  [{command['min']:.3f}-"
          f"{command['max']:.3f}]  ({year['cli_output_bytes'] / 1e6:.1f} MB of JSON)")
    print(f"  of which start-up (artifactstore --help) {startup['median']:.3f} s  [{startup['min']:.3f}-"
          f"{startup['max']:.3f}]")
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()

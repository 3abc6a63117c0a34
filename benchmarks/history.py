"""History benchmark: what registry and store operations cost as a model's history grows.

For N = 10, 100, 300, 1000 versions of one model (and a fleet of 12 clients x 5 models), times
`log`, `show`, opening a fresh Store and loading the newest version (beside
`safetensors.numpy.load_file` of the same file, the peer), `gc` (marking only), promote p50 and
p99 of 200 (beside its floor, the peer: writing two small files durably as a promote must, the
new state and the ref, each with fsync of file and directory), the CLI's `ls` and `log` (beside
`python -c pass`; run with bytecode caching on, as an installed package runs), and counts the
index files an open reads. Each figure is the median of several
repetitions with its range; the growth exponent between two sizes says whether a cost grows with
history (0: independent of it; 1: linear).

Usage: python benchmarks/history.py [--sizes 10,100,300,1000] [--repeat 5] [--json FILE]
"""

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from artifactstore import Store
from artifactstore.demo import adapter_history, write_bundle

FLEET = (12, 5, 10)  # clients, models per client, versions per model


def tiny_history(count: int, work: Path, layers: int = 4, scale: int = 16) -> list[Path]:
    """``count`` bundles of a small adapter, each a minor retrain of a quarter of its tensors."""
    base = adapter_history(layers=layers, scale=scale)[0]
    bundles, tensors = [], dict(base.tensors)
    names = sorted(tensors)
    rng = np.random.default_rng(0)
    for i in range(count):
        for name in names[i % 4::4]:
            tensors[name] = rng.standard_normal(tensors[name].shape).astype(tensors[name].dtype)
        version = base.__class__(f"v1.{i}.0", f"retrain {i}", dict(tensors), base.safetensors_metadata,
                                 base.inference_config)
        bundles.append(write_bundle(version, work / "bundles" / version.name))
        metadata = bundles[-1] / "metadata.yaml"
        metadata.write_text(metadata.read_text().replace(f"version: {version.name}\n", ""))
    return bundles


def timed(action, repeat: int) -> dict[str, float]:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        samples.append(time.perf_counter() - started)
    return {"median_ms": statistics.median(samples) * 1e3, "min_ms": min(samples) * 1e3,
            "max_ms": max(samples) * 1e3}


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e3


CLI_ENVIRONMENT = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}


def cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "artifactstore", *args], check=True, capture_output=True,
                   env=CLI_ENVIRONMENT)


def python_startup() -> None:
    subprocess.run([sys.executable, "-c", "pass"], check=True, env=CLI_ENVIRONMENT)


def durable_write(directory: Path, name: str, data: bytes) -> None:
    """What a promote writes twice at least: a small file, fsynced, renamed into place, its
    directory fsynced."""
    temporary = directory / f".{name}.tmp"
    with open(temporary, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, directory / name)
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def measure(store: Store, model: str, repeat: int) -> dict:
    newest = store.ls(model)[0]["versions"][0]
    ref = f"{model}@{newest}"
    weights = Path(tempfile.mkdtemp()) / "w"
    store.checkout(ref, weights)
    weights_file = weights / "adapter_model.safetensors"
    ours, peer = [], []
    for _ in range(repeat):  # interleaved: ours, then the peer, on the same file
        started = time.perf_counter()
        Store(store.path).load(ref)
        ours.append(time.perf_counter() - started)
        started = time.perf_counter()
        load_file(weights_file)
        peer.append(time.perf_counter() - started)
    shutil.rmtree(weights.parent)
    versions = store.ls(model)[0]["versions"]
    store.promote(f"{model}@{versions[-1]}")
    moves, floor = [], []
    floor_dirs = [Path(tempfile.mkdtemp(dir=store.path)) for _ in range(2)]
    for i in range(200):  # interleaved: a promote, then the two durable writes it cannot avoid
        started = time.perf_counter()
        store.promote(f"{model}@{versions[i % 2]}" if len(versions) > 1 else ref)
        moves.append(time.perf_counter() - started)
        started = time.perf_counter()
        for directory in floor_dirs:
            durable_write(directory, "object.json", b"{}" * 300)
        floor.append(time.perf_counter() - started)
    for directory in floor_dirs:
        shutil.rmtree(directory)
    cli_log, startup = [], []
    for _ in range(repeat):
        started = time.perf_counter()
        cli("log", model, "--limit", "20", "--store", str(store.path))
        cli_log.append(time.perf_counter() - started)
        started = time.perf_counter()
        python_startup()
        startup.append(time.perf_counter() - started)
    return {
        "log": timed(lambda: store.log(model), repeat),
        "log_newest_20": timed(lambda: store.log(model, limit=20), repeat),
        "show": timed(lambda: store.show(ref), repeat),
        "open_and_load_newest": {"median_ms": statistics.median(ours) * 1e3, "min_ms": min(ours) * 1e3,
                                 "max_ms": max(ours) * 1e3},
        "safetensors_load_file": {"median_ms": statistics.median(peer) * 1e3, "min_ms": min(peer) * 1e3,
                                  "max_ms": max(peer) * 1e3},
        "load_ratio_vs_safetensors": statistics.median(peer) / statistics.median(ours),
        "index_files_on_open": sum(1 for _ in store.backend.list("index")),
        "gc_mark": timed(lambda: Store(store.path).gc(grace="1d"), max(1, repeat // 2)),
        "promote_p50_ms": statistics.median(moves) * 1e3,
        "promote_p99_ms": p99(moves),
        "durable_two_files_p50_ms": statistics.median(floor) * 1e3,
        "durable_two_files_p99_ms": p99(floor),
        "cli_ls": timed(lambda: cli("ls", "--store", str(store.path)), repeat),
        "cli_log_newest_20": {"median_ms": statistics.median(cli_log) * 1e3, "min_ms": min(cli_log) * 1e3,
                              "max_ms": max(cli_log) * 1e3},
        "python_startup": {"median_ms": statistics.median(startup) * 1e3, "min_ms": min(startup) * 1e3,
                           "max_ms": max(startup) * 1e3},
    }


def growth(small: dict, large: dict, n_small: int, n_large: int) -> dict[str, float]:
    """The exponent k of cost ~ N^k between two sizes, for each timed figure."""
    exponents = {}
    for name, figure in small.items():
        if isinstance(figure, dict) and figure.get("median_ms") and large[name]["median_ms"]:
            exponents[name] = math.log(large[name]["median_ms"] / figure["median_ms"]) / math.log(n_large / n_small)
    return exponents


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10,100,300,1000")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", metavar="FILE", type=Path)
    args = parser.parse_args()
    sizes = [int(n) for n in args.sizes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="history-"))
    results: dict = {"load_average": os.getloadavg(), "sizes": {}}
    try:
        bundles = tiny_history(max(sizes), work)
        store = Store.init(work / "store")
        pushed = 0
        for n in sizes:
            for bundle in bundles[pushed:n]:
                store.push(bundle, "acme/support", bump="auto")
            pushed = n
            results["sizes"][n] = measure(store, "acme/support", args.repeat)
            print(f"N = {n:5}: " + ", ".join(f"{k} {v['median_ms']:.1f} ms" for k, v in results["sizes"][n].items()
                                             if isinstance(v, dict)) +
                  f", index files {results['sizes'][n]['index_files_on_open']}, "
                  f"promote p50 {results['sizes'][n]['promote_p50_ms']:.1f} / p99 "
                  f"{results['sizes'][n]['promote_p99_ms']:.1f} ms (two durable writes: "
                  f"{results['sizes'][n]['durable_two_files_p50_ms']:.1f} / "
                  f"{results['sizes'][n]['durable_two_files_p99_ms']:.1f} ms), "
                  f"load vs safetensors {results['sizes'][n]['load_ratio_vs_safetensors']:.2f}x", flush=True)
        if len(sizes) > 1:
            results["growth_exponent"] = growth(results["sizes"][sizes[0]], results["sizes"][sizes[-1]],
                                                sizes[0], sizes[-1])
            print("growth exponent (cost ~ N^k) from N = {} to {}: ".format(sizes[0], sizes[-1]) +
                  ", ".join(f"{k} {v:.2f}" for k, v in results["growth_exponent"].items()))
        fleet = Store.init(work / "fleet")
        clients, models, versions = FLEET
        for c in range(clients):
            for m in range(models):
                for bundle in bundles[:versions]:
                    fleet.push(bundle, f"client{c}/model{m}", bump="auto")
        results["fleet"] = measure(fleet, "client0/model0", args.repeat)
        results["fleet"]["registry_export"] = timed(fleet.export_registry, args.repeat)
        print(f"fleet {clients} clients x {models} models x {versions} versions: " +
              ", ".join(f"{k} {v['median_ms']:.1f} ms" for k, v in results["fleet"].items() if isinstance(v, dict)))
        results["load_average_after"] = os.getloadavg()
        print(f"load average {results['load_average'][0]:.2f} before, {results['load_average_after'][0]:.2f} after")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

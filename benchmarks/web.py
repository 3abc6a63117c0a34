"""Dashboard benchmark: how long each page takes to render on the server over a large registry.

A store of 12 clients x 5 models x 100 versions (small adapters, as benchmarks/history.py's
tiny_history: each version a retrain of a quarter of the tensors, eval scores drifting from version
to version), with a production move every 10 versions, a gate and a review before each, a canary
on one model, and drift counts for every production version (a baseline and 14 days of hourly
windows). It is built on /dev/shm (fsync costs nothing there) with two processes, then copied to a
directory on disk, where it is measured.

Every page is requested through the dashboard's ASGI app in this process (Starlette's test client:
routing, the page's reads, Jinja2 and the SVG, no network), after the server's background pass
(every version's summary, each client's storage, every model's drift) has run once; that pass is
timed too, and so is each page's first render. Each figure is the median of --repeat requests with
its range. Target: every page under 300 ms.

Usage: python benchmarks/web.py [--repeat 15] [--json FILE] [--keep DIR]
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from history import tiny_history  # noqa: E402

from artifactstore import Store  # noqa: E402

CLIENTS, MODELS, VERSIONS = 12, 5, 100
PROMOTE_EVERY = 10
START = datetime(2026, 1, 1, tzinfo=UTC)
TARGET_MS = 300


def at(moment: datetime) -> None:
    os.environ["ARTIFACTSTORE_NOW"] = moment.isoformat().replace("+00:00", "Z")


def scores(count: int) -> list[dict]:
    """Eval results that wander from version to version."""
    rng = np.random.default_rng(1)
    accuracy, latency = 0.9, 800.0
    found = []
    for _ in range(count):
        accuracy = float(np.clip(accuracy + rng.normal(0.001, 0.006), 0.8, 0.99))
        latency = float(latency + rng.normal(-1, 12))
        found.append({"accuracy": round(accuracy, 4), "hallucination_rate": round(0.03 - accuracy / 40, 4),
                      "latency_ms": round(latency, 1), "suites": {"refunds": {"accuracy": round(accuracy - 0.02, 4)}}})
    return found


def requests(rng, count: int, start: datetime, hours: int, shift: float) -> str:
    lines = []
    for i in range(count):
        moment = start + timedelta(hours=hours * i / count)
        lines.append(json.dumps({"inputs": {"length": float(rng.normal(100 + shift * i / count, 25)),
                                            "category": str(rng.choice(["billing", "tech", "sales"]))},
                                 "outputs": {"length": float(rng.normal(300, 50)), "refused": bool(rng.random() < .03)},
                                 "at": moment.isoformat().replace("+00:00", "Z")}))
    return "\n".join(lines) + "\n"


def build_client(job: tuple[str, int, str]) -> None:
    """Push, release and monitor every model of one client (a process of its own)."""
    location, client, work = job
    store = Store(location)
    bundles = sorted(Path(work, "bundles").iterdir(), key=lambda p: int(p.name.split(".")[1]))
    rng = np.random.default_rng(client)
    for m in range(MODELS):
        model = f"client{client}/model{m}"
        for i, bundle in enumerate(bundles):
            moment = START + timedelta(hours=24 * i + m)
            at(moment)
            version = store.push(bundle, model, bump="auto", actor="training-job@ci").version
            if i % PROMOTE_EVERY == PROMOTE_EVERY - 1:
                at(moment + timedelta(hours=2))
                store.gate(f"{model}@{version}", actor="ci")
                at(moment + timedelta(hours=3))
                store.review(f"{model}@{version}", approve=True, actor="reviewer", samples=24, notes="ok")
                at(moment + timedelta(hours=4))
                store.promote(f"{model}@{version}", actor="release-bot", reason="monthly")
        if m == 0:
            at(moment + timedelta(hours=6))
            store.set_canary(f"{model}@{version}", 10, actor="release-bot", reason="canary", force=True)
        production = store.state(model).pointer("production")
        end = START + timedelta(days=VERSIONS)
        baseline = Path(work, f"baseline-{client}-{m}.jsonl")
        baseline.write_text(requests(rng, 500, end - timedelta(days=15), 24, 0))
        store.take_baseline(f"{model}@{production}", baseline)
        served = Path(work, f"served-{client}-{m}.jsonl")
        served.write_text(requests(rng, 14 * 24 * 4, end - timedelta(days=14), 14 * 24, 30 * m / MODELS))
        at(end)
        store.record(f"{model}@{production}", served, node="web-1")


def build(work: Path) -> Path:
    shm = Path(tempfile.mkdtemp(prefix="web-bench-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    try:
        bundles = tiny_history(VERSIONS, shm, layers=1, scale=64)
        for bundle, result in zip(bundles, scores(VERSIONS)):
            (bundle / "eval_results.json").write_text(json.dumps(result))
        Store.init(shm / "store")
        with ProcessPoolExecutor(2) as pool:
            list(pool.map(build_client, [(str(shm / "store"), c, str(shm)) for c in range(CLIENTS)]))
        shutil.copytree(shm / "store", work / "store")
    finally:
        shutil.rmtree(shm, ignore_errors=True)
    return work / "store"


def timed(client, path: str, repeat: int) -> dict:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        answer = client.get(path)
        samples.append(time.perf_counter() - started)
        assert answer.status_code == 200, (path, answer.status_code, answer.text[:500])
    return {"median_ms": statistics.median(samples) * 1e3, "min_ms": min(samples) * 1e3,
            "max_ms": max(samples) * 1e3, "bytes": len(answer.content)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--json", metavar="FILE", type=Path)
    parser.add_argument("--keep", metavar="DIR", type=Path, help="Build the store here (or reuse the one there).")
    args = parser.parse_args()
    from starlette.testclient import TestClient

    from artifactstore.web.app import create_app

    work = args.keep or Path(tempfile.mkdtemp(prefix="web-bench-"))
    results: dict = {"load_average": os.getloadavg(), "store": f"{CLIENTS} clients x {MODELS} models x {VERSIONS} "
                                                                 "versions"}
    try:
        started = time.perf_counter()
        location = work / "store" if (work / "store").exists() else build(work)
        results["build_s"] = time.perf_counter() - started
        print(f"store: {results['store']}, built in {results['build_s']:.0f} s", flush=True)
        at(START + timedelta(days=VERSIONS, hours=1))
        model = "client3/model0"
        state = Store(location).state(model)
        versions = state.sorted_versions()
        production = state.pointer("production")
        pages = {
            "overview": "/",
            "model": f"/m/{model}",
            "model ?at=DATE": f"/m/{model}?at=2026-02-15",
            "model ?metric=": f"/m/{model}?metric=suites.refunds.accuracy",
            "model ?version= (lineage, drift)": f"/m/{model}?version={versions[50]}",
            "model, whole audit log": f"/m/{model}?log=all",
            "compare": f"/m/{model}/compare?a={versions[-2]}&b={production}",
            "compare, far apart": f"/m/{model}/compare?a={versions[0]}&b={versions[-1]}",
        }
        app = create_app(Store(location), [], poll=3600)  # the watcher's first pass only: nothing runs meanwhile
        board = app.state.dashboard
        with TestClient(app, base_url="http://127.0.0.1") as client:  # a Host the app serves
            started = time.perf_counter()
            while not app.state.watcher.version:
                time.sleep(0.05)
            results["background_pass_s"] = time.perf_counter() - started
            print(f"background pass (every version's summary, storage per client, drift of every model): "
                  f"{results['background_pass_s']:.2f} s", flush=True)
            results["first_render"] = {name: timed(client, path, 1)["median_ms"] for name, path in pages.items()}
            results["pages"] = {name: timed(client, path, args.repeat) for name, path in pages.items()}
            started = time.perf_counter()
            board.signature()
            results["signature_ms"] = (time.perf_counter() - started) * 1e3
        for name, figure in results["pages"].items():
            mark = "" if figure["median_ms"] < TARGET_MS else f"  over {TARGET_MS} ms"
            print(f"{name:34} {figure['median_ms']:7.1f} ms (range {figure['min_ms']:.1f}-{figure['max_ms']:.1f}; "
                  f"first {results['first_render'][name]:.1f}), {figure['bytes'] / 1024:.0f} KiB{mark}")
        print(f"a look for changes (/events): {results['signature_ms']:.1f} ms")
        results["all_under_target"] = all(f["median_ms"] < TARGET_MS for f in results["pages"].values())
        results["load_average_after"] = os.getloadavg()
        print(f"load average {results['load_average'][0]:.2f} before, {results['load_average_after'][0]:.2f} after")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

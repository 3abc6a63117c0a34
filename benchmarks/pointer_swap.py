"""Pointer swap benchmark: promote / rollback latency on a local store vs MLflow's alias move.

Ours: `Store.promote` and `Store.rollback` on a local store (each one compare-and-swap with the
audit entry, fsynced). Peer: MLflow's model registry on its SQLite backend,
`MlflowClient.set_registered_model_alias`, in the same run. Target: our p99 < 5 ms.

MLflow is installed for the benchmark only: `pip install -r benchmarks/requirements.txt`.
Usage: python benchmarks/pointer_swap.py [--moves 300] [--json]
"""

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency import percentiles  # noqa: E402

from artifactstore import Store  # noqa: E402
from artifactstore.demo import adapter_history, write_bundle  # noqa: E402


def ours(work: Path, moves: int) -> dict[str, dict[str, float]]:
    store = Store.init(work / "store")
    for version in adapter_history(layers=2, scale=16)[:3]:
        store.push(write_bundle(version, work / "bundles" / version.name), f"acme/support@{version.name}")
    store.promote("acme/support@v1.0.0")
    promote, rollback = [], []
    for _ in range(moves):
        started = time.perf_counter()
        store.promote("acme/support@v1.1.0", reason="benchmark")
        promote.append(time.perf_counter() - started)
        started = time.perf_counter()
        store.rollback("acme/support", reason="benchmark")
        rollback.append(time.perf_counter() - started)
    assert len(store.log("acme/support")) == 3 + 1 + 4 * moves
    return {"promote": percentiles(promote), "rollback": percentiles(rollback)}


def mlflow_alias(work: Path, moves: int) -> dict[str, float]:
    for name in ("alembic", "mlflow"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}",
                          registry_uri=f"sqlite:///{work / 'mlflow.db'}")
    client.create_registered_model("acme-support")
    for _ in range(2):
        client.create_model_version("acme-support", source=str(work / "bundles"))
    samples = []
    for i in range(2 * moves):
        started = time.perf_counter()
        client.set_registered_model_alias("acme-support", "production", str(1 + i % 2))
        samples.append(time.perf_counter() - started)
    return percentiles(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--moves", type=int, default=300)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pointer-swap-"))
    try:
        figures = ours(work, args.moves)
        try:
            figures["mlflow_alias"] = mlflow_alias(work, args.moves)
        except ImportError:
            figures["mlflow_alias"] = None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    peer = figures["mlflow_alias"]
    if peer:
        figures["p50_speedup_vs_mlflow"] = peer["p50_ms"] / figures["promote"]["p50_ms"]
        figures["p99_speedup_vs_mlflow"] = peer["p99_ms"] / figures["promote"]["p99_ms"]
    if args.json:
        print(json.dumps(figures, indent=1))
        return
    for name in ("promote", "rollback"):
        f = figures[name]
        print(f"artifactstore {name:9} p50 {f['p50_ms']:6.2f} ms  p99 {f['p99_ms']:6.2f} ms  (target p99 < 5 ms)")
    if peer is None:
        print("MLflow is not installed: pip install -r benchmarks/requirements.txt")
        return
    print(f"MLflow alias move  p50 {peer['p50_ms']:6.2f} ms  p99 {peer['p99_ms']:6.2f} ms  (SQLite backend)")
    print(f"promote vs MLflow: {figures['p50_speedup_vs_mlflow']:.1f}x faster at p50, "
          f"{figures['p99_speedup_vs_mlflow']:.1f}x at p99")


if __name__ == "__main__":
    main()

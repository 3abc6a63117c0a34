"""Rollback benchmark: how fast a serving process answers with the rollback version's weights.

A serving process (`artifactstore follow acme/support@production`, a `Follower`) keeps 200 MB
bf16 adapters resident (both versions are in its hot set). This process then runs `Store.rollback` — the same call
`artifactstore rollback` makes — and times until the server answers with a value read from the
rollback version's weights; then it promotes the newer version again, untimed. Target: p99 < 100 ms.

Usage: python benchmarks/rollback.py [--rollbacks 50] [--device cpu|cuda] [--json]
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency import percentiles  # noqa: E402

from artifactstore import Store  # noqa: E402
from artifactstore.demo import Version, lora_tensors, write_bundle  # noqa: E402

PROBE = "base_model.model.model.layers.31.mlp.down_proj.lora_B.weight"

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rollbacks", type=int, default=50)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.device != "cpu":
        try:
            import torch
        except ImportError:
            sys.exit("the cuda variant needs torch: pip install torch")
        if not torch.cuda.is_available():
            sys.exit("no CUDA device here: run the cuda variant on a GPU machine")
    work = Path(tempfile.mkdtemp(prefix="rollback-bench-"))
    server = None
    try:
        store = Store.init(work / "store")
        expected = {}
        for name, seed in (("v1.0.0", 11), ("v1.1.0", 12)):
            tensors = lora_tensors(range(32), seed=seed, rank=40)
            expected[name] = float(tensors[PROBE].reshape(-1)[0])
            version = Version(name, f"retrain {seed}", tensors, {"format": "pt"}, {"temperature": 0.2})
            store.push(write_bundle(version, work / "bundles" / name), f"acme/support@{name}")
        adapter_bytes = store.show("acme/support@v1.0.0")["adapter_bytes"]
        store.promote("acme/support@v1.0.0")
        store.promote("acme/support@v1.1.0")
        framework = "numpy" if args.device == "cpu" else "torch"
        server = subprocess.Popen([sys.executable, "-m", "artifactstore", "follow", "acme/support@production",
                                   "--store", str(store.path), "--framework", framework, "--device", args.device,
                                   "--poll-ms", "1", "--probe", PROBE],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        json.loads(server.stdout.readline())  # the first version went live
        json.loads(server.stdout.readline())  # the hot set is resident
        swapped, answered = [], []
        for _ in range(args.rollbacks):
            started = time.monotonic()
            store.rollback("acme/support", reason="benchmark")
            reply = json.loads(server.stdout.readline())
            answered.append(time.monotonic() - started)
            swapped.append(reply["at"] - started)
            assert reply["version"] == "v1.0.0" and reply["probe"] == expected["v1.0.0"], reply
            store.promote("acme/support@v1.1.0", reason="benchmark")
            assert json.loads(server.stdout.readline())["version"] == "v1.1.0"
    finally:
        if server is not None:
            server.stdin.close()
            server.kill()
            server.wait()
        shutil.rmtree(work, ignore_errors=True)
    figures = {"adapter_bytes": adapter_bytes, "device": args.device, "rollbacks": args.rollbacks,
               "swap_seen_by_server": percentiles(swapped), "answer_received": percentiles(answered)}
    if args.json:
        print(json.dumps(figures, indent=1))
        return
    print(f"{args.rollbacks} rollbacks of a {adapter_bytes / 1e6:.0f} MB adapter, device {args.device}")
    for label, key in (("server swapped", "swap_seen_by_server"), ("answer received", "answer_received")):
        f = figures[key]
        print(f"{label:16} p50 {f['p50_ms']:6.2f} ms  p99 {f['p99_ms']:6.2f} ms  max {f['max_ms']:6.2f} ms  "
              f"(target < 100 ms)")


if __name__ == "__main__":
    main()

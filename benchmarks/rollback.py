"""Rollback benchmark: how fast serving processes answer with the rollback version's weights, and
what following a pointer costs them while nothing moves.

Serving processes (`artifactstore follow acme/support@production`, each a `Follower`) keep two
~210 MB bf16 adapters resident. This process runs `Store.rollback` (what `artifactstore rollback`
does) and times until every server answers with a value read from the rollback version's
weights, then promotes the newer version again, untimed. Target: p99 < 100 ms.

Two ways of following a local store run side by side, interleaved:
- watch: the default, woken by the ref's file being replaced (inotify), a slow poll besides;
- poll 2 ms: `--poll-ms 2`, a `stat` of the ref every 2 ms (the default before the watch).

Idle cost: with 1, 5 and 10 followers resident and nothing moving, the CPU time the followers use
over --idle-seconds, as a share of one core per follower (target < 0.5% with the watch). Figures
are medians with ranges, beside the load average.

Usage: python benchmarks/rollback.py [--rollbacks 30] [--idle-seconds 5] [--device cpu|cuda] [--json FILE]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from interleave import describe, load_average, spread, write_json
from latency import percentiles

from artifactstore import Store
from artifactstore.demo import Version, lora_tensors, write_bundle

PROBE = "base_model.model.model.layers.31.mlp.down_proj.lora_B.weight"
MODES = {"watch": [], "poll 2 ms": ["--poll-ms", "2"]}
TICKS = os.sysconf("SC_CLK_TCK")


def start_followers(store: Store, count: int, mode: str, device: str) -> list[subprocess.Popen]:
    framework = "numpy" if device == "cpu" else "torch"
    servers = [subprocess.Popen([sys.executable, "-m", "artifactstore", "follow", "acme/support@production",
                                 "--store", str(store.path), "--framework", framework, "--device", device,
                                 "--probe", PROBE, *MODES[mode]],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(count)]
    for server in servers:
        json.loads(server.stdout.readline())  # the first version went live
        json.loads(server.stdout.readline())  # the hot set is resident
    return servers


def stop(servers: list[subprocess.Popen]) -> None:
    for server in servers:
        server.stdin.close()
        server.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def idle_share(servers: list[subprocess.Popen], seconds: float) -> float:
    """CPU the followers use while nothing moves, as a share of one core per follower."""
    time.sleep(0.5)  # let the last loads' threads finish
    before, started = sum(cpu_seconds(s.pid) for s in servers), time.monotonic()
    time.sleep(seconds)
    used = sum(cpu_seconds(s.pid) for s in servers) - before
    return used / (time.monotonic() - started) / len(servers)


def time_rollbacks(store: Store, servers: list[subprocess.Popen], expected: dict[str, float],
                   count: int) -> list[float]:
    """Seconds from each rollback until every server answered with the rollback version."""
    answered = []
    for _ in range(count):
        started = time.monotonic()
        store.rollback("acme/support", reason="benchmark")
        for server in servers:
            reply = json.loads(server.stdout.readline())
            assert reply["version"] == "v1.0.0" and reply["probe"] == expected["v1.0.0"], reply
        answered.append(time.monotonic() - started)
        store.promote("acme/support@v1.1.0", reason="benchmark")
        for server in servers:
            assert json.loads(server.stdout.readline())["version"] == "v1.1.0"
    return answered


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rollbacks", type=int, default=30)
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    parser.add_argument("--followers", default="1,5,10", help="follower counts for the idle figures")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", metavar="FILE", help="write the figures to FILE as JSON")
    args = parser.parse_args()
    if args.device != "cpu":
        try:
            import torch
        except ImportError:
            sys.exit("the cuda variant needs torch: pip install torch")
        if not torch.cuda.is_available():
            sys.exit("no CUDA device here: run the cuda variant on a GPU machine")
    work = Path(tempfile.mkdtemp(prefix="rollback-bench-"))
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
        load_before = load_average()
        swaps: dict[str, list[float]] = {mode: [] for mode in MODES}
        idle: dict[str, dict[int, list[float]]] = {mode: {} for mode in MODES}
        for _ in range(3):  # interleaved: a round of rollbacks in each mode, three times
            for mode in MODES:
                servers = start_followers(store, 1, mode, args.device)
                try:
                    swaps[mode] += time_rollbacks(store, servers, expected, max(1, args.rollbacks // 3))
                finally:
                    stop(servers)
        for count in map(int, args.followers.split(",")):
            for _ in range(2):
                for mode in MODES:
                    servers = start_followers(store, count, mode, args.device)
                    try:
                        idle[mode].setdefault(count, []).append(idle_share(servers, args.idle_seconds))
                    finally:
                        stop(servers)
        load_after = load_average()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    figures = {
        "adapter_bytes": adapter_bytes, "device": args.device, "rollbacks": sum(map(len, swaps.values())),
        "load_average": [load_before, load_after],
        "answer_received": {mode: percentiles(samples) for mode, samples in swaps.items()},
        "idle_core_share_per_follower": {mode: {count: spread(shares) for count, shares in by_count.items()}
                                         for mode, by_count in idle.items()},
    }
    write_json(args.json, figures)
    print(f"rollbacks of a {adapter_bytes / 1e6:.0f} MB adapter, device {args.device}, load average "
          f"{load_before} -> {load_after}")
    for mode, f in figures["answer_received"].items():
        print(f"{mode:10} answer received p50 {f['p50_ms']:6.2f} ms  p99 {f['p99_ms']:6.2f} ms  "
              f"max {f['max_ms']:6.2f} ms  (target p99 < 100 ms)")
    for mode, by_count in figures["idle_core_share_per_follower"].items():
        cells = "  ".join(f"{count} followers {describe({k: v * 100 for k, v in share.items()}, '%')}"
                          for count, share in by_count.items())
        print(f"{mode:10} idle CPU per follower (share of a core): {cells}")


if __name__ == "__main__":
    main()

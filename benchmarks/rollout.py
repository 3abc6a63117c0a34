"""Rollout abort benchmark: from `tick` deciding to abort a canary until every follower serves production only.

Three follower processes (`artifactstore follow --node …`) serve acme/support@production with the canary
beside it (both versions resident). Each round starts a rollout (canary 10%), waits until all three report
serving the canary, records a window in which the canary fails every request, and runs `Store.rollout_tick`
at the window's end (ARTIFACTSTORE_NOW), which aborts: canary to 0%. The clock runs from the call to
`rollout_tick` (and, separately, from its return: the decision committed) until every follower's heartbeat
says it serves production with no canary, for the state the abort wrote. Two stores: a local directory
(followers are woken by inotify when the ref's file is replaced) and a shared bucket on a loopback S3 server
(moto, in its own process: tests/s3server.py; followers read the store's change marker with one GET every
0.5 s, the default, and their ref when it changed). The seeds'
target for a rollback, decision to confirmation, is 60 s.

Usage: python benchmarks/rollout.py [--rounds 50] [--json]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from latency import percentiles  # noqa: E402
from s3server import create_bucket, s3_environment, start_s3_server  # noqa: E402

from artifactstore import Store  # noqa: E402
from artifactstore.clock import NOW_VARIABLE  # noqa: E402
from artifactstore.demo import Version, lora_tensors, write_bundle  # noqa: E402

MODEL = "acme/support"
NODES = ("node-1", "node-2", "node-3")
SEEDS_TARGET_S = 60.0
POLICY = """\
gate: {required: false}
review: {required: false}
canary:
  steps: [{percent: 10, hold: 1h}, {percent: 100}]
  analysis: {interval: 1m, failure_limit: 0, min_requests: 10, metrics: {error_rate: {ceiling: 0.05}}}
"""


def fleet_shows(store: Store, state_id: str, canary: str | None) -> bool:
    beats = store.fleet(MODEL).heartbeats
    return len(beats) == len(NODES) and all(b.state == state_id and b.canary == canary for b in beats)


def wait(condition, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit("the fleet did not confirm within 120 s")
        time.sleep(0.001)


def run(location: str, work: Path, rounds: int, env: dict[str, str]) -> dict:
    store = Store.init(location, cache=work / "cache-bench" if location.startswith("s3://") else None)
    for name, seed in (("v1.0.0", 31), ("v1.1.0", 32)):
        version = Version(name, f"retrain {seed}", lora_tensors(range(8), seed=seed, scale=4), {"format": "pt"},
                          {"temperature": 0.2})
        store.push(write_bundle(version, work / "bundles" / name), f"{MODEL}@{name}")
    (work / "policy.yaml").write_text(POLICY)
    store.set_policy(MODEL, work / "policy.yaml")
    store.promote(f"{MODEL}@v1.0.0")
    adapter_bytes = store.show(f"{MODEL}@v1.0.0")["adapter_bytes"]
    followers = [subprocess.Popen([sys.executable, "-m", "artifactstore", "follow", f"{MODEL}@production",
                                   "--store", location, "--node", node, "--heartbeat-s", "1"],
                                  stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  env={**env, "ARTIFACTSTORE_CACHE": str(work / f"cache-{node}")})
                 for node in NODES]
    from_tick, from_decision, tick_seconds = [], [], []
    clock = datetime(2026, 11, 26, tzinfo=UTC)
    try:
        for _ in range(rounds):
            clock += timedelta(hours=1)
            os.environ[NOW_VARIABLE] = clock.isoformat()
            started = store.start_rollout(f"{MODEL}@v1.1.0", reason="benchmark")
            wait(lambda: fleet_shows(store, started.id, "v1.1.0"))
            end = clock + timedelta(minutes=1)
            store.record_metrics(MODEL, [
                {"version": version, "node": "node-1", "start": clock.isoformat(), "end": end.isoformat(),
                 "requests": requests, "errors": errors}
                for version, requests, errors in (("v1.1.0", 100, 100), ("v1.0.0", 900, 0))])
            os.environ[NOW_VARIABLE] = end.isoformat()
            ticked = time.monotonic()
            report = store.rollout_tick(MODEL)
            decided = time.monotonic()
            assert report.decision == "abort" and report.state is not None, report
            aborted = report.state.id
            wait(lambda: fleet_shows(store, aborted, None))
            confirmed = time.monotonic()
            from_tick.append(confirmed - ticked)
            from_decision.append(confirmed - decided)
            tick_seconds.append(decided - ticked)
    finally:
        for follower in followers:
            assert follower.stdin is not None
            follower.stdin.close()
        for follower in followers:
            follower.wait(timeout=60)
        os.environ.pop(NOW_VARIABLE, None)
    return {"adapter_bytes": adapter_bytes, "followers": len(NODES), "rounds": rounds,
            "tick_to_fleet": summary(from_tick), "decision_to_fleet": summary(from_decision),
            "tick_itself": summary(tick_seconds)}


def summary(samples: list[float]) -> dict:
    return percentiles(samples) | {"median_ms": statistics.median(samples) * 1e3, "min_ms": min(samples) * 1e3,
                                   "within_seeds_target": max(samples) <= SEEDS_TARGET_S}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results: dict = {"seeds_target_s": SEEDS_TARGET_S, "load_average_before": os.getloadavg()}
    work = Path(tempfile.mkdtemp(prefix="rollout-bench-"))
    env = {k: v for k, v in os.environ.items() if k != NOW_VARIABLE}
    try:
        results["local"] = run(str(work / "local" / "store"), work / "local", args.rounds, env)
        url, stop = start_s3_server()
        try:
            aws = s3_environment(url)
            os.environ.update(aws)
            create_bucket(url, "bench-rollout")
            results["shared_s3"] = run("s3://bench-rollout/store", work / "s3", args.rounds, {**env, **aws})
        finally:
            stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["load_average_after"] = os.getloadavg()
    if args.json:
        print(json.dumps(results, indent=1))
        return
    print(f"abort -> every follower serves production only: {len(NODES)} followers, {args.rounds} rounds each "
          f"(load average {results['load_average_before'][0]:.2f} before, {results['load_average_after'][0]:.2f} "
          f"after)")
    for label, key in (("local store", "local"), ("shared S3 bucket", "shared_s3")):
        for what, field in (("from tick", "tick_to_fleet"), ("from decision", "decision_to_fleet")):
            f = results[key][field]
            print(f"{label:17} {what:14} p50 {f['p50_ms']:8.1f} ms  p99 {f['p99_ms']:8.1f} ms  range "
                  f"{f['min_ms']:.1f}-{f['max_ms']:.1f} ms   (seeds' target {SEEDS_TARGET_S:.0f} s)")


if __name__ == "__main__":
    main()

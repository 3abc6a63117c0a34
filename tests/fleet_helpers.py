"""What the rollout and fleet tests share: tiny bundles with smoke tests, the clock, traffic reports,
and the smoke function follower processes load (``--smoke fleet_helpers:answer``)."""

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from artifactstore.demo import adapter_history, write_bundle

HISTORY = adapter_history(layers=2, scale=16)  # v1.0.0 … v1.2.1, tiny tensors
MODEL = "acme/support"
PROBES = ["base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight",
          "base_model.model.model.layers.0.mlp.down_proj.lora_B.weight"]
T0 = datetime(2026, 11, 26, tzinfo=UTC)
TESTS = Path(__file__).resolve().parent

# A quick plan: two steps of two hours, hourly windows; gate and review not required.
FAST_POLICY = """\
gate: {required: false}
review: {required: false}
canary:
  steps: [{percent: 10, hold: 2h}, {percent: 50, hold: 2h}, {percent: 100}]
  analysis: {interval: 1h, failure_limit: 1, inconclusive_limit: 1, min_requests: 100}
"""


def hours(h: float) -> datetime:
    return T0 + timedelta(hours=h)


def set_now(monkeypatch, moment: datetime) -> None:
    monkeypatch.setenv("ARTIFACTSTORE_NOW", moment.isoformat())


def answer(loaded, known_input):
    """A server's inference on one known input: the value of one weight. A node whose environment says
    its inference is broken for a version (a bad driver, say) answers garbage for it."""
    if loaded.version in os.environ.get("SMOKE_BROKEN_FOR", "").split(","):
        return -1.0
    return round(float(loaded.tensors[known_input["tensor"]].reshape(-1)[known_input["index"]]), 6)


def smoke_lines(version_index: int, count: int = 5) -> str:
    tensors = HISTORY[version_index].tensors
    tests = [{"name": f"probe-{i}", "input": {"tensor": PROBES[i % 2], "index": i},
              "expected": round(float(tensors[PROBES[i % 2]].reshape(-1)[i]), 6), "tolerance": 1e-6}
             for i in range(count)]
    return "".join(json.dumps(t) + "\n" for t in tests)


def push_versions(store, tmp_path, count: int = 2, smoke: bool = True, model: str = MODEL) -> None:
    for index in range(count):
        push_version(store, tmp_path, index, smoke=smoke, model=model)


def push_version(store, tmp_path, index: int, smoke: bool = True, model: str = MODEL) -> None:
    """``HISTORY[index]``, with smoke tests its weights pass."""
    version = HISTORY[index]
    bundle = write_bundle(version, tmp_path / "bundles" / model / version.name)
    if smoke:
        (bundle / "smoke_tests.jsonl").write_text(smoke_lines(index))
    store.push(bundle, f"{model}@{version.name}", actor="ci")


def with_policy(store, tmp_path, text: str = FAST_POLICY, model: str = MODEL) -> None:
    path = tmp_path / f"policy-{time.monotonic_ns()}.yaml"
    path.write_text(text)
    store.set_policy(model, path, actor="lead")


def report(store, hour: int, *, canary: tuple = (300, 1, 300.0), production: tuple = (900, 5, 300.0),
           version: str = "v1.1.0", baseline: str = "v1.0.0", model: str = MODEL, node: str = "srv-1") -> None:
    """One hour of traffic ending at ``hours(hour)``: (requests, errors, latency p95 ms) per version."""
    start, end = hours(hour - 1).isoformat(), hours(hour).isoformat()
    store.record_metrics(model, [
        {"version": v, "node": node, "start": start, "end": end, "requests": n, "errors": e,
         "latency_ms": {"p50": p95 / 3, "p95": p95, "p99": p95 * 2}}
        for v, (n, e, p95) in ((version, canary), (baseline, production))])


def start_follower(store_path, node: str, *, broken_for: str = "", pointer: str = "production",
                   heartbeat_s: float = 0.2, extra_env: dict | None = None) -> subprocess.Popen:
    """A real follower process (``artifactstore follow``) with a node name and the smoke function."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "SMOKE_BROKEN_FOR": broken_for, **(extra_env or {})}
    env.pop("ARTIFACTSTORE_NOW", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "artifactstore", "follow", f"{MODEL}@{pointer}", "--store", str(store_path),
         "--node", node, "--smoke", "fleet_helpers:answer", "--heartbeat-s", str(heartbeat_s), "--poll-ms", "2"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert process.stdout is not None
    first = process.stdout.readline()
    assert first, process.stderr.read() if process.stderr else "the follower died"
    return process


def stop(processes) -> None:
    for process in processes:
        process.stdin.close()
    for process in processes:
        process.wait(timeout=30)
        process.stdout.close()
        process.stderr.close()


def kill(processes) -> None:
    for process in processes:
        process.kill()
        process.wait()
        for stream in (process.stdin, process.stdout, process.stderr):
            stream.close()


def wait_until(condition, timeout: float = 30.0, what: str = "condition"):
    """Poll ``condition`` until it returns something true; its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"{what} not reached within {timeout} s")

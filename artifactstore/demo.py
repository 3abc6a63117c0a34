"""A realistic adapter history and the demo that stores it (``./scripts/demo``).

The adapters are LoRA weights in PEFT layout: bf16, rank 16, on every linear layer of a
Llama-3-8B-shaped model (about 80 MB), inside the seeds' bundle layout.
"""

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import blake3
import ml_dtypes
import numpy as np
import yaml
from safetensors.numpy import save_file

from .clock import NOW_VARIABLE
from .store import Store

RANK = 16
DEFAULT_EVAL_RESULTS = {"accuracy": 0.942, "hallucination_rate": 0.021}
HIDDEN, INTERMEDIATE, KV = 4096, 14336, 1024
LINEAR_SHAPES = {  # module -> (in_features, out_features)
    "self_attn.q_proj": (HIDDEN, HIDDEN),
    "self_attn.k_proj": (HIDDEN, KV),
    "self_attn.v_proj": (HIDDEN, KV),
    "self_attn.o_proj": (HIDDEN, HIDDEN),
    "mlp.gate_proj": (HIDDEN, INTERMEDIATE),
    "mlp.up_proj": (HIDDEN, INTERMEDIATE),
    "mlp.down_proj": (INTERMEDIATE, HIDDEN),
}

Tensors = dict[str, np.ndarray]


def lora_tensors(layers: range, seed: int, scale: int = 1, rank: int = RANK) -> Tensors:
    """LoRA A/B matrices for ``layers``; ``scale`` divides every dimension (for --small)."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for layer in layers:
        for module, (fan_in, fan_out) in LINEAR_SHAPES.items():
            prefix = f"base_model.model.model.layers.{layer}.{module}"
            a = rng.standard_normal((rank, fan_in // scale), dtype=np.float32) / np.sqrt(fan_in)
            b = rng.standard_normal((fan_out // scale, rank), dtype=np.float32) * 0.01
            tensors[f"{prefix}.lora_A.weight"] = a.astype(ml_dtypes.bfloat16)
            tensors[f"{prefix}.lora_B.weight"] = b.astype(ml_dtypes.bfloat16)
    return tensors


@dataclass(frozen=True)
class Version:
    name: str
    description: str
    tensors: Tensors
    safetensors_metadata: dict[str, str]
    inference_config: dict
    base_model: str = "meta-llama/Meta-Llama-3-8B-Instruct"
    eval_results: dict = field(default_factory=lambda: dict(DEFAULT_EVAL_RESULTS))


def adapter_history(layers: int = 32, scale: int = 1) -> list[Version]:
    """Four versions: initial, full retrain, inference-config patch, half-layer retrain, re-save."""
    first = lora_tensors(range(layers), seed=1, scale=scale)
    retrained = lora_tensors(range(layers), seed=2, scale=scale)
    half = {**retrained, **lora_tensors(range(layers // 2, layers), seed=3, scale=scale)}
    serving = {"temperature": 0.3, "top_p": 0.9, "max_tokens": 512}
    pt = {"format": "pt"}
    return [
        Version("v1.0.0", "initial adapter", first, pt, serving),
        Version("v1.1.0", "full retrain with Q1 tickets", retrained, pt, serving),
        Version("v1.1.1", "patch: temperature 0.3 -> 0.2", retrained, pt, {**serving, "temperature": 0.2}),
        Version("v1.2.0", "retrain of the upper half of the layers", half, pt, {**serving, "temperature": 0.2}),
        Version("v1.2.1", "re-save with different safetensors metadata", half,
                {"format": "pt", "saved_by": "peft 0.13.2"}, {**serving, "temperature": 0.2}),
    ]


def write_bundle(version: Version, directory: Path, *, eval_samples: str | None = None,
                 training_examples: int | None = None) -> Path:
    """The seeds' bundle layout for one version; ``eval_samples`` (JSON Lines) and
    ``training_examples`` are optional parts (docs/monitoring.md)."""
    weights = directory / "adapter_weights"
    weights.mkdir(parents=True)
    save_file(version.tensors, weights / "adapter_model.safetensors", metadata=version.safetensors_metadata)
    adapter_config = {"peft_type": "LORA", "base_model_name_or_path": version.base_model, "r": RANK,
                      "lora_alpha": 32, "lora_dropout": 0.05, "task_type": "CAUSAL_LM",
                      "target_modules": sorted(m.split(".")[1] for m in LINEAR_SHAPES)}
    (weights / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2))
    return write_bundle_files(directory, version.name, version.base_model, version.description,
                              version.inference_config, version.eval_results, eval_samples=eval_samples,
                              training_examples=training_examples)


def write_bundle_files(directory: Path, name: str, base_model: str, description: str, inference_config: dict,
                       eval_results: dict | None = None, *, eval_samples: str | None = None,
                       training_examples: int | None = None) -> Path:
    """Every file of the seeds' bundle layout but ``adapter_weights/`` (a PEFT save directory, say)."""
    (directory / "training_config.yaml").write_text(
        yaml.safe_dump({"learning_rate": 2e-4, "epochs": 3, "rank": RANK, "batch_size": 16}))
    (directory / "training_data.hash").write_text("b3:" + blake3.blake3(description.encode()).hexdigest() + "\n")
    (directory / "eval_results.json").write_text(json.dumps(eval_results or DEFAULT_EVAL_RESULTS))
    (directory / "inference_config.yaml").write_text(yaml.safe_dump(inference_config))
    (directory / "changelog.md").write_text(f"## {name}\n\n- {description}\n")
    metadata: dict[str, Any] = {"version": name, "base_model": base_model, "change_description": description}
    if training_examples is not None:
        metadata["training_examples"] = training_examples
    (directory / "metadata.yaml").write_text(yaml.safe_dump(metadata))
    if eval_samples is not None:
        (directory / "eval_samples.jsonl").write_text(eval_samples)
    return directory


def unique_tensor_bytes(history: list[Version]) -> int:
    """The ideal stored size of a history: every distinct tensor once."""
    seen: dict[bytes, int] = {}
    for version in history:
        for tensor in version.tensors.values():
            seen.setdefault(blake3.blake3(tensor.tobytes()).digest(), tensor.nbytes)
    return sum(seen.values())


def mib(n: int) -> str:
    return f"{n / 2**20:8.1f} MiB"


def store_history(store: Store, history: list[Version], bundles: list[Path]) -> None:
    print(f"{'version':8} {'logical':>12} {'new':>12} {'push':>10}  {'kind':8} change")
    for version, bundle in zip(history, bundles):
        started = time.perf_counter()
        result = store.push(bundle, f"acme/support@{version.name}", actor="training-job@ci")
        speed = result.logical_bytes / (time.perf_counter() - started) / 1e9
        print(f"{version.name:8} {mib(result.logical_bytes)} {mib(result.new_bytes)} {speed:6.2f} GB/s  "
              f"{result.change:8} {version.description}")
    stats = store.stats()
    ideal = unique_tensor_bytes(history)
    print(f"\nlogical {mib(stats.logical_bytes)}; stored {mib(stats.stored_bytes)} in {stats.packs} packs, "
          f"{stats.chunks} chunks; ideal (unique tensors) {mib(ideal)}; "
          f"stored/ideal = {stats.stored_bytes / ideal:.4f}")


def three_am(store: Store) -> None:
    """The seeds' story: a bad version reaches production and is rolled back in milliseconds."""
    print("\n--- release and the 3am rollback ---")
    store.promote("acme/support@v1.0.0", actor="jane@agency.com", reason="initial launch")
    store.promote("acme/support@v1.1.1", actor="jane@agency.com", reason="Q1 retrain, temperature 0.2")
    store.stage("acme/support@v1.2.0", actor="ci@agency.com", reason="eval passed")
    store.set_canary("acme/support@v1.2.0", 10, actor="jane@agency.com", reason="canary 10% for 24h")
    store.promote("acme/support@canary", actor="jane@agency.com", reason="canary healthy", expect="v1.1.1")
    print("production is v1.2.0. At 03:00 it starts answering garbage.")
    started = time.perf_counter()
    state = store.rollback("acme/support", actor="oncall@agency.com", reason="garbage outputs at 3am",
                           expect="v1.2.0")
    took = (time.perf_counter() - started) * 1e3
    print(f"rollback: production {state.entries[0].from_} -> {state.pointers['production']} in {took:.2f} ms\n")
    print("audit log of acme/support:")
    for e in store.log("acme/support"):
        share = f" {e.percent}%" if e.percent is not None else ""
        print(f"  {e.seq:3} {e.at[:19]} {e.actor:18} {e.action:8} {(e.pointer or '-'):15} "
              f"{e.from_ or '-':>7} -> {(e.to or '-') + share:10} {e.reason}")
    print("\nregistry (artifactstore registry export):")
    print(store.export_registry())


def tiering(store: Store) -> None:
    print("\n--- tiering: keep the hot set local, the rest in the object store ---")
    report = store.tier()
    print(f"hot set: {', '.join(v.split('@')[1] for v in report.hot_versions)}")
    print(f"moved to {store.cold_url}: {len(report.evicted)} packs, {mib(report.bytes_evicted).strip()} "
          f"(each uploaded, read back and compared before the local copy went)")
    pulled = store.pull("acme/support@v1.0.0")
    print(f"pull v1.0.0 back: transferred {mib(pulled.transferred_bytes).strip()} of "
          f"{mib(pulled.logical_bytes).strip()}")


def live_rollback(store: Store) -> None:
    """A serving process follows @production; a rollback reaches it in milliseconds."""
    print("--- a serving process follows acme/support@production ---")
    probe = next(iter(store.version_record("acme/support@production")["tensors"]))
    server = subprocess.Popen([sys.executable, "-m", "artifactstore", "follow", "acme/support@production",
                               "--store", str(store.path), "--poll-ms", "1", "--probe", probe],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert server.stdin is not None and server.stdout is not None
    try:
        print(f"serving {json.loads(server.stdout.readline())['version']}; "
              f"resident: {', '.join(json.loads(server.stdout.readline())['resident'])}")
        store.promote("acme/support@v1.2.1", actor="jane@agency.com", reason="re-saved weights")
        print(f"promoted; serving {json.loads(server.stdout.readline())['version']}")
        started = time.monotonic()
        store.rollback("acme/support", actor="oncall@agency.com", reason="rollback drill")
        reply = json.loads(server.stdout.readline())
        print(f"rolled back; serving {reply['version']}: the serving process swapped "
              f"{(reply['at'] - started) * 1e3:.1f} ms after the rollback began\n")
    finally:
        server.stdin.close()
        server.wait(timeout=30)


RELEASE_POLICY = """\
# acme/support: the seeds' pipeline, stage 1 (eval gate) and stage 2 (human review)
gate:
  defaults: {{max_drop_points: 2}}        # no metric more than 2 points worse than production
  metrics:
    hallucination_rate: {{ceiling: 0.03}}  # lower is better (from its name); never above 3%
review:
  min_samples: 20                        # someone who knows the client reads 20-30 outputs
hooks:
  - {{name: ops-channel, url: "{url}"}}
"""


class HookReceiver:
    """A stand-in for a team's chat relay: an HTTP server on 127.0.0.1 that keeps the events posted to it."""

    def __init__(self):
        self.events: list[dict] = []
        events = self.events

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                events.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/events"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def artifactstore(store: Store, *args: str) -> None:
    """Run the command line as a user would, and show it."""
    print(f"$ artifactstore {shlex.join(args)}")
    done = subprocess.run([sys.executable, "-m", "artifactstore", *args], capture_output=True, text=True,
                          env={**os.environ, "ARTIFACTSTORE_STORE": str(store.path)})
    print(done.stdout + done.stderr, end="")
    if done.returncode:
        print(f"(exit status {done.returncode})")


def release_gates(store: Store, history: list[Version], workdir: Path, layers: int, scale: int) -> None:
    """The seeds' stages 1 and 2 under a policy: the gate stops a regression, a trade-off is accepted
    with a documented reason, a reviewer signs off, and only then is the version promoted."""
    print("--- release gates: eval gate, trade-off, review, promotion ---")
    receiver = HookReceiver()
    policy = workdir / "policy.yaml"
    policy.write_text(RELEASE_POLICY.format(url=receiver.url))
    store.set_policy("acme/support", policy, actor="lead@agency.com", reason="the seeds' release pipeline")
    print(f"policy set: gate (2 points, hallucination ceiling 3%), review of 20+ outputs, hook to {receiver.url}")

    def retrain(name: str, seed: int, description: str, eval_results: dict) -> str:
        return retrain_version(store, history[-1], workdir, layers, scale, name, seed, description, eval_results)

    suites = {"refunds": {"accuracy": 0.93}, "bundles": {"accuracy": 0.85}}
    good = retrain("v1.3.0", 4, "monthly retrain: 3 months of support tickets",
                   {"accuracy": 0.958, "hallucination_rate": 0.014, "suites": suites})
    store.gate(good, actor="ci@agency.com")
    store.review(good, approve=True, actor="maria@agency.com", samples=24, notes="tone matches, refunds fixed")
    store.promote(good, actor="jane@agency.com", reason="monthly retrain, gate passed, reviewed")
    print("v1.3.0 (accuracy 95.8%, hallucination 1.4%): gate passed, approved after 24 outputs, promoted\n")

    bad = retrain("v1.4.0", 5, "retrain with scraped forum data",
                  {"accuracy": 0.910, "hallucination_rate": 0.050, "suites": suites})
    print("v1.4.0 is a regression. The gate stops it, and so does promote:")
    artifactstore(store, "gate", bad, "--by", "ci@agency.com")
    artifactstore(store, "promote", bad, "--by", "intern@agency.com", "--reason", "yolo")

    traded = retrain("v1.5.0", 6, "retrain with refund policies; bundle questions regress",
                     {"accuracy": 0.962, "hallucination_rate": 0.012,
                      "suites": {"refunds": {"accuracy": 0.96}, "bundles": {"accuracy": 0.81}}})
    print("\nv1.5.0 is better overall, but bundle questions drop 4 points: a trade-off, accepted with a reason:")
    artifactstore(store, "gate", traded, "--accept", "suites.bundles.accuracy", "--by", "jane@agency.com",
                  "--reason", "bundle questions are rare for acme; fixed in the next retrain; client informed")
    artifactstore(store, "review", traded, "--approve", "--by", "maria@agency.com", "--samples", "25",
                  "--notes", "refund answers much better")
    artifactstore(store, "promote", traded, "--by", "jane@agency.com", "--reason", "refund handling")
    print()
    artifactstore(store, "notice", "acme/support@production", "--kind", "update")
    receiver.close()
    print(f"\nhook events received by {receiver.url}:")
    for event in receiver.events:
        print(f"  {event['event']:16} {event['model']}@{event['version']}  by {event['actor']}")
    print()


TRAINING_EXAMPLES = 12_000
LANGUAGES, CATEGORIES = ["en", "de", "fr"], ["billing", "technical", "account", "shipping"]


def client_traffic(rng, n: int, drift: float = 0.0) -> dict[str, np.ndarray]:
    """``n`` requests of a support client as feature columns; ``drift`` (0..1) moves them towards
    long shipping questions, which the adapter answers at more length and with less confidence."""
    mix = (1 - drift) * np.array([0.4, 0.3, 0.2, 0.1]) + drift * np.array([0.15, 0.15, 0.1, 0.6])
    length = rng.lognormal(4.2 + 0.6 * drift, 0.5, n).round()
    return {"inputs.length": length, "inputs.language": rng.choice(LANGUAGES, n, p=[0.7, 0.2, 0.1]),
            "inputs.category": rng.choice(CATEGORIES, n, p=mix),
            "outputs.length": (length * 1.6 + rng.normal(60, 20, n)).round(),
            "outputs.confidence": rng.beta(8 - 2 * drift, 2, n).round(3), "outputs.refused": rng.random(n) < 0.03}


def eval_samples(rng, n: int = 2000) -> str:
    """The eval set's requests as JSON Lines: a bundle's eval_samples.jsonl, the drift baseline at promotion."""
    columns = client_traffic(rng, n)
    lines = []
    for i in range(n):
        request: dict[str, dict] = {"inputs": {}, "outputs": {}}
        for name, values in columns.items():
            section, feature = name.split(".")
            request[section][feature] = values[i].item()
        lines.append(json.dumps(request))
    return "\n".join(lines) + "\n"


def drift(store: Store, workdir: Path) -> None:
    """The second seed: PSI against the baseline frozen at promotion, alerts, the retrain decision."""
    print("\n--- drift: a client's traffic shifts under the production adapter ---")
    version = store.version_record("acme/support@production")["version"]
    report = store.drift("acme/support")
    print(f"production is {version}; its drift baseline was frozen at promotion from the bundle's "
          f"eval_samples.jsonl ({len(report.features)} features)")
    rng = np.random.default_rng(1)
    hours, per_node = 48, 400
    first = (int(time.time()) // 3600 - hours - 1) * 3600
    monitors = [store.monitor("acme/support", node=f"node-{i}") for i in range(3)]
    print(f"3 serving nodes count {per_node} requests an hour each for {hours} hours, flushing every hour; from "
          "hour 24 the client sends more and longer shipping questions. Each crossing alerts once:")
    for hour in range(hours):
        for monitor in monitors:
            monitor.observe_batch(client_traffic(rng, per_node, drift=max(0.0, (hour - 24) / 24)),
                                  at=first + hour * 3600 + 1800)
            monitor.flush()
        store.raise_alerts("acme/support", lambda alert: print(f"  alert: {alert.message()}"))
    report = store.drift("acme/support")
    shown = ["inputs.length", "inputs.category", "inputs.language", "outputs.length", "outputs.confidence"]
    columns = [report.features.index(f) for f in shown]
    statuses = report.statuses()
    print(f"\n{'window (UTC)':17} " + " ".join(f"{f:>20}" for f in shown))
    for w in range(0, len(report.starts), 6):
        start = time.strftime("%Y-%m-%d %H:%M", time.gmtime(int(report.starts[w])))
        print(f"{start:17} " + " ".join(f"{report.psi[w, c]:8.3f} {statuses[w, c]:>11}" for c in columns))
    from .monitoring.plot import plot_drift

    print(f"plot: {plot_drift(report, workdir / 'drift.png').resolve()}")
    scores = workdir / "eval-run.json"
    scores.write_text(json.dumps({"accuracy": 0.921, "hallucination_rate": 0.024}))
    change = store.record_eval("acme/support@production", scores).changes()["accuracy"]
    print(f"eval run: accuracy {change['latest']} ({change['relative']:+.1%} against the launch baseline "
          f"{change['launch']})")
    labelled = store.record_labelled("acme/support", 15_600)
    print(f"labelled data: {labelled.examples:,} examples, {labelled.growth:+.0%} over the "
          f"{labelled.training_examples:,} at training")
    check = store.retrain_check("acme/support")
    print("retrain-check acme/support:")
    for trigger in check.triggers:
        mark = "FIRED" if trigger.fired else "no" if trigger.measured else "n/a"
        print(f"  {mark:5}  {trigger.name:16} {trigger.evidence}")
    print(f"=> {check.verdict()}\n")


TOUR_POLICY = """\
# the seeds' pipeline, stages 1 and 2: docs/release.md explains every field
gate:
  defaults: {max_drop_points: 2}        # no metric more than 2 points worse than production
  metrics:
    hallucination_rate: {ceiling: 0.03}  # never above 3%
review:
  min_samples: 20                        # someone who knows the client reads 20-30 outputs
"""


def write_tour_files(directory: Path, small: bool = True) -> list[Path]:
    """What the README's tour uses: the demo's bundles (``bundles/v1.0.0`` …), a release policy
    (``policy.yaml``) and a day of served requests (``served.jsonl``); returns the paths written."""
    layers, scale = (8, 4) if small else (32, 1)
    samples = eval_samples(np.random.default_rng(0))
    written = [write_bundle(v, directory / "bundles" / v.name, eval_samples=samples,
                            training_examples=TRAINING_EXAMPLES)
               for v in adapter_history(layers=layers, scale=scale)]
    (directory / "policy.yaml").write_text(TOUR_POLICY)
    (directory / "served.jsonl").write_text(eval_samples(np.random.default_rng(1), 500))
    return [*written, directory / "policy.yaml", directory / "served.jsonl"]


SMOKE_TESTS = 6  # the seeds: 5-10 known inputs


def smoke_tests_for(tensors: Tensors) -> str:
    """smoke_tests.jsonl: known inputs and the outputs the trained weights give for them. The demo has no
    language model, so an "input" names a weight and the "output" is its value (``smoke_answer``)."""
    names = sorted(tensors)[-SMOKE_TESTS:]
    return "".join(json.dumps({"name": f"known-input-{i}", "input": {"tensor": name, "index": i},
                               "expected": float(tensors[name].reshape(-1)[i]), "tolerance": 1e-6}) + "\n"
                   for i, name in enumerate(names))


def smoke_answer(loaded, known_input: dict) -> float:
    """The demo servers' "inference" on one known input (``artifactstore follow --smoke``)."""
    return float(loaded.tensors[known_input["tensor"]].reshape(-1)[known_input["index"]])


def retrain_version(store: Store, latest: Version, workdir: Path, layers: int, scale: int, name: str, seed: int,
                    description: str, eval_results: dict, smoke_from: Tensors | None = None) -> str:
    """Push a version whose top two layers were retrained, with smoke tests (from ``smoke_from``'s weights
    when given: a bundle whose tests do not match its weights)."""
    tensors = {**latest.tensors, **lora_tensors(range(layers - 2, layers), seed=seed, scale=scale)}
    version = replace(latest, name=name, description=description, tensors=tensors, eval_results=eval_results)
    bundle = write_bundle(version, workdir / "bundles" / name)
    (bundle / "smoke_tests.jsonl").write_text(smoke_tests_for(smoke_from or tensors))
    store.push(bundle, f"acme/support@{name}", actor="training-job@ci")
    return f"acme/support@{name}"


ROLLOUT_POLICY = RELEASE_POLICY + """canary:                                  # the seeds: 10% for 24 h, 50% for 24 h, then 100%
  steps: [{{percent: 10, hold: 24h}}, {{percent: 50, hold: 24h}}, {{percent: 100}}]
  analysis:
    interval: 1h                         # each hour of traffic is one measurement
    failure_limit: 1                     # one noisy hour does not abort; a second failing one does
    min_requests: 100
    metrics:
      error_rate: {{max_drop_points: 1}}   # at most 1 point above production in the same hour
      latency_p95_ms: {{max_drop_percent: 20}}
      quality: {{max_drop: 0.03, floor: 0.8}}
smoke: {{required: true}}                  # every version carries known inputs; a failure rolls back
drill: {{every: 30d, max_seconds: 60}}     # the seeds: rehearse monthly, under 60 s
"""
NODES = ("srv-1", "srv-2", "srv-3")


def hour_of_traffic(store: Store, end: datetime, versions: dict[str, tuple[int, float]], rng) -> None:
    """What three inference servers report for one hour: per version (share of traffic, error rate)."""
    records = []
    for node in NODES:
        for version, (share, error_rate) in versions.items():
            requests = int(rng.normal(3000, 100) * share / 100)
            records.append({"version": version, "node": node, "start": (end - timedelta(hours=1)).isoformat(),
                            "end": end.isoformat(), "requests": requests,
                            "errors": int(rng.binomial(requests, error_rate)),
                            "latency_ms": {"p50": rng.normal(120, 3), "p95": rng.normal(340, 8),
                                           "p99": rng.normal(800, 20)},
                            "scores": {"quality": {"mean": rng.normal(0.91, 0.004), "count": requests // 10}}})
    store.record_metrics("acme/support", records)


def canary_rollouts(store: Store, history: list[Version], workdir: Path, layers: int, scale: int) -> None:
    """Stage 3 of the seeds' pipeline: a canary that advances 10 -> 50 -> 100 over two (simulated) days,
    another that aborts on a rising error rate; then a fleet of three servers that rolls production back
    by itself when a version fails its smoke check, and a rollback drill, timed."""
    print("--- canary rollouts: 10% for 24 h, 50% for 24 h, 100%; hourly analysis ---")
    receiver = HookReceiver()
    policy = workdir / "rollout-policy.yaml"
    policy.write_text(ROLLOUT_POLICY.format(url=receiver.url))
    store.set_policy("acme/support", policy, actor="lead@agency.com", reason="canary, smoke tests, drills")
    rng = np.random.default_rng(7)
    clock = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    os.environ[NOW_VARIABLE] = clock.isoformat()  # two days of a rollout, run in seconds
    production = store.state("acme/support").pointers["production"]

    def approved(ref: str) -> str:
        store.gate(ref, actor="ci@agency.com")
        store.review(ref, approve=True, actor="maria@agency.com", samples=24, notes="tone ok")
        return ref

    scores = {"accuracy": 0.964, "hallucination_rate": 0.011,
              "suites": {"refunds": {"accuracy": 0.96}, "bundles": {"accuracy": 0.86}}}
    good = approved(retrain_version(store, history[-1], workdir, layers, scale, "v1.6.0", 7, "monthly retrain",
                                    scores))
    artifactstore(store, "rollout", "start", good, "--by", "jane@agency.com", "--reason", "monthly retrain")
    percent, hour = 10, 0
    while store.state("acme/support").rollout is not None:
        hour += 1
        clock += timedelta(hours=1)
        os.environ[NOW_VARIABLE] = clock.isoformat()
        hour_of_traffic(store, clock, {production: (100 - percent, 0.004), "v1.6.0": (percent, 0.004)}, rng)
        report = store.rollout_tick("acme/support", actor="cron@agency.com")
        if report.decision not in ("hold", "nothing"):
            print(f"hour {hour:2}: {report.decision.upper()}: {report.note}")
        percent = report.percent or percent
    state = store.state("acme/support")
    print(f"{hour} hourly ticks; production {state.pointers['production']}, rollback target "
          f"{state.pointers['rollback_target']}\n")

    print("v1.7.0 passes the gate and review, but in production its error rate climbs:")
    bad = approved(retrain_version(store, history[-1], workdir, layers, scale, "v1.7.0", 8, "retrain, new tokenizer",
                                   scores))
    store.start_rollout(bad, actor="jane@agency.com", reason="tokenizer update")
    for hour, error_rate in enumerate((0.006, 0.03, 0.07), 1):
        clock += timedelta(hours=1)
        os.environ[NOW_VARIABLE] = clock.isoformat()
        hour_of_traffic(store, clock, {"v1.6.0": (90, 0.004), "v1.7.0": (10, error_rate)}, rng)
        report = store.rollout_tick("acme/support", actor="cron@agency.com")
        window = report.measured[0]
        print(f"hour {hour}: window {window['outcome'].upper():4} {window['note']}")
    entry = store.state("acme/support").entries[-1]
    failing = (entry.evidence or {}).get("measurements", [])
    print(f"-> {report.decision.upper()}: canary {entry.from_} -> {entry.to or '0%'}, production "
          f"{store.state('acme/support').pointers['production']} untouched; the audit entry keeps "
          f"{len(failing)} failing measurements\n")

    print("--- a fleet of three inference servers follows acme/support@production ---")
    servers = [subprocess.Popen([sys.executable, "-m", "artifactstore", "follow", "acme/support@production",
                                 "--store", str(store.path), "--node", node, "--smoke",
                                 "artifactstore.demo:smoke_answer", "--heartbeat-s", "1", "--poll-ms", "2"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
               for node in NODES]
    try:
        for server in servers:
            assert server.stdout is not None
            server.stdout.readline()
        wait_for_fleet(store, "v1.6.0")
        artifactstore(store, "drill", "acme/support", "--by", "oncall@agency.com", "--reason", "monthly rehearsal")

        print("\nv1.8.0 was exported from the wrong checkpoint: its gate and review passed on the right one, but "
              "its weights fail the smoke tests its training job wrote:")
        broken = approved(retrain_version(store, history[-1], workdir, layers, scale, "v1.8.0", 9, "weekly retrain",
                                          scores, smoke_from=lora_tensors(range(layers - 2, layers), seed=10, scale=scale)))
        started = time.monotonic()
        store.promote(broken, actor="jane@agency.com", reason="weekly retrain")
        wait_for_fleet(store, "v1.6.0")
        took = time.monotonic() - started
        rolled = next(e for e in reversed(store.log("acme/support")) if e.action == "rollback" and e.pointer)
        print(f"promoted v1.8.0; {rolled.actor} rolled it back:\n  {rolled.reason}")
        print(f"all three servers serve v1.6.0 again, confirmed {took:.2f} s after the promote\n")
        artifactstore(store, "status", "acme/support")
    finally:
        for server in servers:
            assert server.stdin is not None
            server.stdin.close()
        for server in servers:
            server.wait(timeout=30)
    receiver.close()
    print(f"\nhook events received by {receiver.url}:")
    for event in receiver.events:
        print(f"  {event['event']:16} {event['model']}@{event['version']}  by {event['actor']}")
    print()


def wait_for_fleet(store: Store, version: str, timeout: float = 60.0) -> None:
    """Until every server reports serving ``version`` for the registry's current state."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = store.state("acme/support")
        beats = [b for b in store.fleet("acme/support").heartbeats if b.node in NODES]
        if len(beats) == len(NODES) and all(b.serving == version and b.state == state.id for b in beats):
            return
        time.sleep(0.005)
    raise SystemExit(f"the fleet did not reach {version} within {timeout:g} s")


def run(workdir: Path, small: bool) -> None:
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    print(f"generating an adapter history in {workdir} ...")
    layers, scale = (8, 4) if small else (32, 1)
    history = adapter_history(layers=layers, scale=scale)
    samples = eval_samples(np.random.default_rng(0))
    bundles = [write_bundle(v, workdir / "bundles" / v.name, eval_samples=samples, training_examples=TRAINING_EXAMPLES)
               for v in history]
    store = Store.init(workdir / "store", cold=str(workdir / "object-store"), keep_hot=1)
    print(f"store: {store.path} (cold tier: {store.cold_url})\n")
    store_history(store, history, bundles)
    tiering(store)
    three_am(store)
    live_rollback(store)
    drift(store, workdir)
    release_gates(store, history, workdir, layers, scale)
    canary_rollouts(store, history, workdir, layers, scale)
    started = time.perf_counter()
    report = store.verify()
    print(f"verify: {'ok' if report.ok else report.problems} ({time.perf_counter() - started:.2f} s)")
    if not report.ok:
        raise SystemExit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--small", action="store_true", help="a quarter-size model with 8 layers")
    parser.add_argument("--workdir", type=Path, default=Path(".demo"), help="where the demo writes")
    args = parser.parse_args()
    run(args.workdir, args.small)


if __name__ == "__main__":
    main()

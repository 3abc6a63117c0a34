"""A small store with a month of history, for the dashboard's tests and screenshots: three clients,
releases under a policy with gates (passed, failed, a trade-off accepted) and reviews, a rollback,
a canary, staging, and drift that crosses 0.1 and then 0.2 with its alerts. Time is set with
ARTIFACTSTORE_NOW, so the history spreads over weeks in a second."""

import json
import os
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import blake3
import numpy as np

from artifactstore import Store
from artifactstore.demo import Version, adapter_history, lora_tensors, write_bundle

START = datetime(2026, 10, 27, 9, 0, tzinfo=UTC)
POLICY = """
gate:
  metrics:
    accuracy: {floor: 0.85}
    hallucination_rate: {direction: lower}
    latency_ms: {max_drop: 40}
review: {min_samples: 20}
"""


@contextmanager
def clock(moment: datetime):
    old = os.environ.get("ARTIFACTSTORE_NOW")
    os.environ["ARTIFACTSTORE_NOW"] = moment.isoformat().replace("+00:00", "Z")
    try:
        yield
    finally:
        if old is None:
            del os.environ["ARTIFACTSTORE_NOW"]
        else:
            os.environ["ARTIFACTSTORE_NOW"] = old


def requests(rng, count: int, start: datetime, hours: float, shift: float = 0.0, billing_share: float = 0.4) -> str:
    lines = []
    for i in range(count):
        at = start + timedelta(hours=hours * i / count)
        category = "billing" if rng.random() < billing_share else str(rng.choice(["tech", "sales", "account"]))
        lines.append(json.dumps({"inputs": {"length": float(rng.normal(120 + shift, 30)), "category": category},
                                 "outputs": {"length": float(rng.normal(300 + shift / 2, 60)),
                                             "refused": bool(rng.random() < 0.03)},
                                 "at": at.isoformat().replace("+00:00", "Z")}))
    return "\n".join(lines) + "\n"


def build_showcase(root: Path) -> tuple[Store, datetime]:
    """The store, and the time its history ends (run the server at it: ARTIFACTSTORE_NOW)."""
    work = root / "bundles"
    store = Store.init(root / "store")
    history = adapter_history(layers=2, scale=4)
    rng = np.random.default_rng(7)
    step = [START]

    def at(hours: float):
        step[0] += timedelta(hours=hours)
        return clock(step[0])

    def bundle(name: str, tensors, accuracy: float, hallucination: float, latency: float, description: str,
               data: str | None = None, base: str = "meta-llama/Meta-Llama-3-8B-Instruct") -> Path:
        version = Version(name, description, tensors, {"format": "pt"}, {"temperature": 0.2, "max_tokens": 512},
                          base, {"accuracy": accuracy, "hallucination_rate": hallucination, "latency_ms": latency})
        directory = write_bundle(version, work / f"{len(list(work.glob('*')) if work.exists() else [])}-{name}")
        if data is not None:  # the dataset it was trained on, by name
            (directory / "training_data.hash").write_text(f"b3:{blake3.blake3(data.encode()).hexdigest()}\n")
        return directory

    support = "acme/support"
    with at(0):
        store.set_policy(support, _policy(root), actor="lead@acme", reason="the seeds' pipeline")
    releases = [
        ("v1.0.0", history[0].tensors, 0.912, 0.031, 820, "initial adapter", "tickets-2026q2"),
        ("v1.1.0", history[1].tensors, 0.934, 0.024, 790, "retrain with Q3 tickets", "tickets-2026q3"),
        ("v1.2.0", history[3].tensors, 0.951, 0.019, 845, "retrain with refund cases", "tickets-2026q3-refunds"),
        ("v1.3.0", {**history[3].tensors, **lora_tensors(range(1, 2), seed=11, scale=4)}, 0.947, 0.018, 780,
         "fix refund tone: upper layer retrained", "tickets-2026q3-refunds"),
        ("v1.4.0", lora_tensors(range(2), seed=12, scale=4), 0.958, 0.016, 770, "retrain with October tickets",
         "tickets-2026-10"),
    ]
    for number, (name, tensors, accuracy, hallucination, latency, description, data) in enumerate(releases):
        with at(20):
            store.push(bundle(name, tensors, accuracy, hallucination, latency, description, data),
                       f"{support}@{name}", actor="training-job@ci")
        with at(2):
            store.stage(f"{support}@{name}", actor="training-job@ci", reason="candidate")
        with at(3):
            accept = ["latency_ms"] if name == "v1.2.0" else []
            store.gate(f"{support}@{name}", accept=accept, actor="jane@acme",
                       reason="refund accuracy matters more than 55 ms" if accept else "")
        if name == "v1.4.0":
            continue  # staged, gated: waiting for its review
        with at(6):
            store.review(f"{support}@{name}", approve=True, actor="maria@acme", samples=25, notes="refunds read well")
        with at(18):
            store.promote(f"{support}@{name}", actor="jane@acme",
                          reason="first release" if number == 0 else f"monthly release {name}")
        if name == "v1.2.0":
            with at(30):
                store.rollback(support, actor="oncall@acme", reason="refund answers too terse, client complained")
    with at(4):
        store.set_canary(f"{support}@v1.4.0", 10, actor="jane@acme", reason="canary while the review runs",
                         force=True)
    production = store.state(support).pointer("production")
    samples = root / "baseline.jsonl"
    samples.write_text(requests(rng, 2000, START, 24))
    with at(1):
        store.take_baseline(f"{support}@{production}", samples, window="6h")
    served = root / "served.jsonl"
    drift_start = step[0] - timedelta(days=6)
    chunks = []
    for day in range(6):
        shift = [0, 1, 3, 6, 11, 16][day]
        billing = [0.4, 0.4, 0.43, 0.5, 0.55, 0.6][day]
        chunks.append(requests(rng, 1600, drift_start + timedelta(days=day), 24, shift, billing))
    served.write_text("".join(chunks))
    with at(6):
        store.record(f"{support}@{production}", served, node="web-1", deliver=lambda alert: None)

    billing_bot = "acme/billing-bot"
    for i, (name, accuracy) in enumerate((("v1.0.0", 0.88), ("v1.1.0", 0.9), ("v2.0.0", 0.93))):
        base = "meta-llama/Llama-3.1-8B-Instruct" if name.startswith("v2") else "meta-llama/Meta-Llama-3-8B-Instruct"
        with at(5):
            store.push(bundle(name, lora_tensors(range(2), seed=30 + i, scale=4), accuracy, 0.02, 600, f"release {i}",
                              "tickets-2026q3" if i == 1 else None, base), f"{billing_bot}@{name}",
                       actor="training-job@ci")
        with at(1):
            store.promote(f"{billing_bot}@{name}", actor="sam@acme", reason=f"release {name}")
    for client, model, count in (("globex", "triage", 4), ("initech", "summarizer", 3), ("initech", "tagger", 2)):
        tensors = lora_tensors(range(2), seed=len(client + model), scale=4)
        for i in range(count):
            name = f"v1.{i}.0"
            if i:  # each retrain changes one of the two layers: the other one's chunks are stored once
                tensors = {**tensors, **lora_tensors(range(i % 2, i % 2 + 1), seed=50 + i + len(model), scale=4)}
            with at(3):
                store.push(bundle(name, tensors, 0.8 + i * 0.02, 0.03 - i * 0.003, 500 + 10 * i, f"retrain {i}"),
                           f"{client}/{model}@{name}", actor="training-job@ci")
            if i < count - 1:
                with at(1):
                    store.promote(f"{client}/{model}@{name}", actor="ops@agency", reason=f"release {name}")
    return store, step[0] + timedelta(hours=1)


def _policy(root: Path) -> Path:
    path = root / "policy.yaml"
    path.write_text(POLICY)
    return path

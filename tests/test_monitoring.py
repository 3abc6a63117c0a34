"""Drift monitoring: PSI against its definition, the Zarr arrays in every place, nodes recording
concurrently into S3, alerts, eval and labelled-data signals, gc / tier / verify of the data."""

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import Receiver

from artifactstore import Conflict, InvalidInput, InvalidParameter, NotFound, Store
from artifactstore.demo import adapter_history, write_bundle
from artifactstore.monitoring.alerts import alerts_key, parse_alert_key, raised_alerts
from artifactstore.monitoring.arrays import PREFIX
from artifactstore.monitoring.psi import DECILES, Thresholds
from artifactstore.monitoring.report import read_baseline
from artifactstore.registry.refs import ModelName

HISTORY = adapter_history(layers=2, scale=16)[:3]  # v1.0.0, v1.1.0, v1.1.1: tiny tensors
T0 = int(datetime(2026, 11, 26, 10, tzinfo=UTC).timestamp())
NOW = "2026-11-27T00:00:00Z"


@pytest.fixture(autouse=True)
def fixed_now(monkeypatch):
    monkeypatch.setenv("ARTIFACTSTORE_NOW", NOW)


def at(hour: int, minute: int = 0) -> str:
    return datetime.fromtimestamp(T0 + hour * 3600 + minute * 60, UTC).isoformat().replace("+00:00", "Z")


def write_jsonl(path: Path, requests: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in requests))
    return path


def traffic(rng, n: int, *, shift: float = 0.0, mix=(0.6, 0.3, 0.1), when: str | None = None) -> list[dict]:
    """Requests of a support client: input length and category, output length and refusals."""
    requests = []
    for _ in range(n):
        request = {"inputs": {"length": round(float(rng.lognormal(4 + shift, 0.4)), 1),
                              "category": str(rng.choice(["billing", "tech", "sales"], p=mix))},
                   "outputs": {"length": int(rng.integers(80, 200)), "refused": bool(rng.random() < 0.05)}}
        if when is not None:
            request["at"] = when
        requests.append(request)
    return requests


def push_history(store: Store, tmp_path: Path, **bundle_parts) -> None:
    for version in HISTORY:
        store.push(write_bundle(version, tmp_path / "bundles" / version.name, **bundle_parts),
                   f"acme/support@{version.name}")


@pytest.fixture
def store(tmp_path) -> Store:
    store = Store.init(tmp_path / "store")
    push_history(store, tmp_path)
    return store


def direct_psi(reference, current, numeric: bool) -> float:
    """The issue's definition, computed with plain numpy."""
    reference, current = np.asarray(reference), np.asarray(current)
    if numeric:
        edges = np.unique(np.quantile(reference.astype(float), [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]))
        ref = np.bincount(np.digitize(reference, edges), minlength=len(edges) + 1)
        cur = np.bincount(np.digitize(current, edges), minlength=len(edges) + 1)
    else:
        categories = sorted(set(reference.tolist()))
        ref = np.array([np.sum(reference == c) for c in categories] + [0])
        cur = np.array([np.sum(current == c) for c in categories] + [np.sum(~np.isin(current, categories))])
    with np.errstate(invalid="ignore"):
        pr, pc = ref / ref.sum(), cur / cur.sum()
    pr, pc = np.maximum(pr, 1e-4), np.maximum(pc, 1e-4)
    pr, pc = pr / pr.sum(), pc / pc.sum()
    return float(np.sum((pc - pr) * np.log(pc / pr)))


# -- PSI ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_psi_equals_the_definition_computed_directly(tmp_path, store, seed):
    rng = np.random.default_rng(seed)
    # numeric with ties (integers: duplicate deciles collapse) plus a continuous tail
    ref_n = np.concatenate([rng.integers(0, 6, 300), rng.normal(3, 2, 100 * (seed % 2))]).round(3)
    ref_c = rng.choice(["billing", "tech", "sales", "legal"], len(ref_n), p=[0.5, 0.3, 0.15, 0.05])
    write_jsonl(tmp_path / "ref.jsonl", [{"inputs": {"n": float(n), "c": str(c)}} for n, c in zip(ref_n, ref_c)])
    store.take_baseline("acme/support@v1.0.0", tmp_path / "ref.jsonl")
    edges = np.unique(np.quantile(ref_n, DECILES))
    windows = [
        # ties, and every edge itself (a value on an edge falls in the bin above)
        (np.concatenate([rng.integers(0, 8, 200), edges]), rng.choice(["billing", "tech"], 50)),
        # shifted numbers; unseen categories fall in "other"
        (rng.normal(4 + seed, 1, 150).round(2), rng.choice(["billing", "unseen", "also-unseen"], 80)),
        # no number at all: an empty window for n
        (np.array([]), rng.choice(["sales"], 5)),
    ]
    requests = []
    for hour, (numbers, texts) in enumerate(windows):
        requests += [{"inputs": {"n": float(n)}, "at": at(hour, 5)} for n in numbers]
        requests += [{"inputs": {"c": str(c)}, "at": at(hour, 30)} for c in texts]
    rng.shuffle(requests)
    store.record("acme/support@v1.0.0", write_jsonl(tmp_path / "cur.jsonl", requests), node="n1")

    report = store.drift("acme/support@v1.0.0")
    assert report.features == ["inputs.c", "inputs.n"]
    assert report.starts.tolist() == [T0, T0 + 3600, T0 + 7200]
    for w, (numbers, texts) in enumerate(windows):
        expected = [direct_psi(ref_c, texts, numeric=False), direct_psi(ref_n, numbers, numeric=True)]
        np.testing.assert_allclose(report.psi[w], expected, rtol=1e-12, atol=1e-15, equal_nan=True)
        assert report.counts[w].tolist() == [len(texts), len(numbers)]
    assert np.isnan(report.psi[2, 1]) and report.statuses()[2, 1] == "empty"
    assert report.to_json()["psi"][2] == [pytest.approx(report.psi[2, 0]), None]


def test_statuses_follow_the_thresholds():
    t = Thresholds()
    assert [t.status(v) for v in (0.0, 0.0999, 0.1, 0.2, 0.2001, float("nan"))] == \
        ["fine", "fine", "watch", "watch", "investigate", "empty"]
    assert t.statuses(np.array([0.05, 0.1, 0.2, 0.3, np.nan])).tolist() == \
        ["fine", "watch", "watch", "investigate", "empty"]


def test_batched_observation_counts_what_single_requests_count(tmp_path, store):
    rng = np.random.default_rng(7)
    many = [f"topic-{i:02d}" for i in range(12)]  # more than a handful: binned by binary search
    reference = [{"inputs": {"length": float(rng.normal(50, 10)), "topic": str(rng.choice(many)),
                             "lang": str(rng.choice(["en", "de"]))},
                  "outputs": {"refused": bool(rng.random() < 0.5)}} for _ in range(500)]
    store.take_baseline("acme/support@v1.0.0", write_jsonl(tmp_path / "ref.jsonl", reference))
    n = 2000
    length = rng.normal(55, 12, n)
    length[rng.random(n) < 0.1] = np.nan  # missing values
    topic = rng.choice(many + ["topic-new"], n)
    lang = [None if rng.random() < 0.1 else str(rng.choice(["en", "de", "fr"])) for _ in range(n)]
    refused = rng.random(n) < 0.3
    times = T0 + rng.integers(0, 3 * 3600, n).astype(float)

    with store.monitor("acme/support@v1.0.0", node="batch") as batch:
        for part in np.array_split(np.arange(n), 3):
            batch.observe_batch({"inputs.length": length[part], "inputs.topic": topic[part],
                                 "inputs.lang": [lang[i] for i in part], "outputs.refused": refused[part],
                                 "inputs.unknown": np.ones(len(part))}, at=times[part])
    assert batch.ignored == {"inputs.unknown"}
    with store.monitor("acme/support@v1.0.0", node="single") as single:
        for i in range(n):
            inputs = {"topic": str(topic[i]), "lang": lang[i]} | ({} if np.isnan(length[i]) else
                                                                  {"length": float(length[i])})
            single.observe(inputs, {"refused": bool(refused[i])}, at=float(times[i]))
    rows = dict(store.monitoring.read_rows(store.monitoring.store, "acme/support/v1.0.0", "counts"))
    assert set(rows) == {"batch", "single"}
    by_window = {node: {int(r[0]): r[1:] for r in rows[node]} for node in rows}
    assert by_window["batch"].keys() == by_window["single"].keys() == {T0, T0 + 3600, T0 + 7200}
    for start in by_window["batch"]:
        assert by_window["batch"][start].tolist() == by_window["single"][start].tolist()
    report = store.drift("acme/support@v1.0.0")
    assert report.counts.sum(axis=0).tolist() == [  # both nodes: lang, length, topic, refused
        2 * sum(v is not None for v in lang), 2 * int((~np.isnan(length)).sum()), 2 * n, 2 * n]


def test_a_request_with_a_feature_of_the_wrong_kind_is_refused_alone(tmp_path, store):
    rng = np.random.default_rng(3)
    store.take_baseline("acme/support@v1.0.0", write_jsonl(tmp_path / "ref.jsonl", traffic(rng, 500)))
    with store.monitor("acme/support@v1.0.0", node="web-1") as monitor:
        # first in the buffer, so a request that were buffered would fix its features' kinds there
        with pytest.raises(InvalidParameter, match="inputs.length is text or true/false, but the baseline "
                                                   "counts it as a numeric feature"):
            monitor.observe({"length": "forty-two", "category": "billing"}, at=T0 + 10)
        with pytest.raises(InvalidParameter, match="inputs.category is a number, but the baseline counts it "
                                                   "as a categorical feature"):
            monitor.observe({"length": 40.0, "category": 7}, at=T0 + 10)
        for i in range(100):
            monitor.observe({"length": 40.0 + i, "category": "tech", "note": i if i % 2 else "text"},
                            {"refused": False}, at=T0 + 20 + i)
    assert monitor.ignored == {"inputs.note"}  # unknown to the baseline: not counted, whatever its kind
    counts = store.drift("acme/support@v1.0.0").counts.sum(axis=0).tolist()  # category, length, out length, refused
    assert counts == [100, 100, 0, 100]


def test_a_time_that_is_not_finite_or_beyond_year_9999_is_refused_before_anything_is_counted(tmp_path, store):
    rng = np.random.default_rng(3)
    store.take_baseline("acme/support@v1.0.0", write_jsonl(tmp_path / "ref.jsonl", traffic(rng, 500)))
    monitor = store.monitor("acme/support@v1.0.0", node="web-1")
    for times in (np.array([T0 + 10, np.nan]), np.array([T0, np.inf]), [T0, 1e300], float("nan"), -float("inf")):
        with pytest.raises(InvalidParameter, match="time"):
            monitor.observe_batch({"inputs.length": [40.0, 50.0]}, at=times)
    with pytest.raises(InvalidParameter, match="time"):
        monitor.observe({"length": 40.0}, at=float("nan"))
    assert monitor.windows == [] and monitor.values == 0
    monitor.observe_batch({"inputs.length": [40.0, 50.0]}, at=np.array([T0 + 10, T0 + 20]))
    monitor.observe({"length": 45.0}, at=T0 + 30)
    monitor.flush()
    rows = store.monitoring.read_rows(store.monitoring.store, "acme/support/v1.0.0", "counts")
    assert [(node, r[:, 0].tolist()) for node, r in rows] == [("web-1", [T0])]
    assert store.drift("acme/support@v1.0.0").counts.sum() == 3
    assert store.verify().ok


def test_a_batch_bins_booleans_and_missing_values_as_single_requests_do(tmp_path, store):
    rng = np.random.default_rng(3)
    store.take_baseline("acme/support@v1.0.0", write_jsonl(tmp_path / "ref.jsonl", traffic(rng, 500)))
    refused = [True, False, None, False, np.True_]
    category = np.array(["billing", None, "tech", np.nan, "legal"], dtype=object)
    with store.monitor("acme/support@v1.0.0", node="batch") as batch:
        batch.observe_batch({"outputs.refused": refused, "inputs.category": category}, at=T0)
    with store.monitor("acme/support@v1.0.0", node="single") as single:
        for r, c in zip(refused, category):
            single.observe({"category": c if isinstance(c, str) else None},
                           {"refused": None if r is None else bool(r)}, at=T0)
    rows = dict(store.monitoring.read_rows(store.monitoring.store, "acme/support/v1.0.0", "counts"))
    assert rows["batch"].tolist() == rows["single"].tolist()
    report = store.drift("acme/support@v1.0.0")
    assert report.counts.sum(axis=0).tolist() == [2 * 3, 0, 0, 2 * 4]  # category, length, out length, refused

    monitor = store.monitor("acme/support@v1.0.0", node="refusing")
    wrong_kinds = [("outputs.refused", [True, 1.0]), ("inputs.category", np.array([1, 2])),
                   ("inputs.category", [b"billing", "tech"]), ("inputs.length", ["40", "50"]),
                   ("inputs.length", np.array([True, False])), ("inputs.length", [40.0, True])]
    for name, values in wrong_kinds:
        with pytest.raises(InvalidParameter, match=f"{name} is a (numeric|categorical) feature"):
            monitor.observe_batch({"outputs.length": [100.0, 120.0], name: values}, at=T0)
    with pytest.raises(InvalidParameter, match="inputs.length: a value is infinite"):
        monitor.observe_batch({"inputs.length": [40.0, np.inf]}, at=T0)  # as a single request's would be
    for columns, at in (({"inputs.length": [40.0, 50.0], "outputs.length": [100.0]}, T0),
                        ({"inputs.length": [40.0]}, np.array([T0, T0 + 1.0]))):  # not broadcast: refused
        with pytest.raises(InvalidParameter, match="one value per request in every column"):
            monitor.observe_batch(columns, at=at)
    assert monitor.windows == [] and monitor.values == 0


# -- concurrent nodes on a shared store -----------------------------------------------------------

NODE_SCRIPT = """
import sys
import numpy as np
from artifactstore import Store

store, node, flushes = Store(sys.argv[1]), sys.argv[2], int(sys.argv[3])
rng = np.random.default_rng(int(node.rpartition("-")[2]))
monitor = store.monitor("acme/support@v1.0.0", node=node)
for flush in range(flushes):
    monitor.observe_batch({"inputs.length": rng.lognormal(4, 0.4, 300),
                           "inputs.category": rng.choice(["billing", "tech", "sales", "new"], 300)},
                          at=float(sys.argv[4]) + (flush % 2) * 3600)
    monitor.flush()
"""


def test_three_nodes_recording_concurrently_into_s3_lose_no_count(tmp_path, s3_bucket):
    url = f"{s3_bucket}/store"
    store = Store.init(url, cache=tmp_path / "cache")
    store.push(write_bundle(HISTORY[0], tmp_path / "bundle"), "acme/support@v1.0.0")
    rng = np.random.default_rng(1)
    store.take_baseline("acme/support@v1.0.0", write_jsonl(tmp_path / "ref.jsonl", traffic(rng, 400)))
    flushes = 6
    nodes = [subprocess.Popen([sys.executable, "-c", NODE_SCRIPT, url, f"node-{i}", str(flushes), str(T0)],
                              env={**os.environ, "ARTIFACTSTORE_CACHE": str(tmp_path / f"cache-{i}")},
                              stderr=subprocess.PIPE, text=True) for i in range(3)]
    for node in nodes:
        _, err = node.communicate(timeout=300)
        assert node.returncode == 0, err

    reader = Store(url, cache=tmp_path / "cache")
    report = reader.drift("acme/support@v1.0.0", prefix="inputs.")
    assert report.starts.tolist() == [T0, T0 + 3600]
    assert report.counts.tolist() == [[3 * 3 * 300] * 2] * 2  # every node, every flush, both features
    rows = reader.monitoring.read_rows(reader.monitoring.store, "acme/support/v1.0.0", "counts")
    assert sorted(node for node, _ in rows) == ["node-0", "node-1", "node-2"]
    assert all(len(r) == flushes for _, r in rows)
    assert reader.verify().ok
    command = cli("drift", "acme/support@v1.0.0", "--json", "--store", url,
                  env={"ARTIFACTSTORE_CACHE": str(tmp_path / "cache")})
    assert command.returncode == 0 and command.stderr == ""  # no word from the S3 sessions Zarr opened
    assert json.loads(command.stdout)["windows"] == [at(0), at(1)]


# -- alerts ---------------------------------------------------------------------------------------


def test_an_alert_is_delivered_once_per_crossing(tmp_path, store):
    rng = np.random.default_rng(3)
    store.take_baseline("acme/support@v1.0.0", write_jsonl(tmp_path / "ref.jsonl", traffic(rng, 2000)))
    delivered = []
    # hours 0-1 fine, 2-3 drifting (watch or worse), 4-5 far off (investigate), 6 back to fine
    shifts = [0, 0, 0.15, 0.15, 0.6, 0.6, 0]
    for hour, shift in enumerate(shifts):
        requests = traffic(rng, 1500, shift=shift, when=at(hour, 10))
        store.record("acme/support@v1.0.0", write_jsonl(tmp_path / f"h{hour}.jsonl", requests), node="n1",
                     deliver=delivered.append)
    statuses = store.drift("acme/support@v1.0.0").only("inputs.length").statuses()[:, 0].tolist()
    assert statuses[:2] == ["fine", "fine"] and statuses[4:6] == ["investigate", "investigate"]
    assert statuses[6] == "fine"
    length_alerts = [(a.window, a.status) for a in delivered if a.feature == "inputs.length"]
    expected = []
    previous = "fine"
    for hour, status in enumerate(statuses):
        if ["fine", "watch", "investigate"].index(status) > ["fine", "watch", "investigate"].index(previous):
            expected.append((at(hour), status))
        previous = status
    assert length_alerts == expected and len(expected) >= 1
    again = []
    assert store.raise_alerts("acme/support@v1.0.0", again.append) == [] and again == []

    # a delivery that fails is released, and the next check delivers it
    requests = traffic(rng, 1500, shift=0.6, when=at(7, 10))
    failing = []

    def broken(alert):
        failing.append(alert)
        raise ConnectionError("hook down")

    with pytest.raises(ConnectionError):
        store.record("acme/support@v1.0.0", write_jsonl(tmp_path / "h7.jsonl", requests), node="n1", deliver=broken)
    assert failing and failing[0].window == at(7)
    retried = store.raise_alerts("acme/support@v1.0.0", lambda alert: None)
    assert [(a.feature, a.window) for a in retried] == [(a.feature, a.window) for a in failing]


def lengths(values, when: str | None = None) -> list[dict]:
    return [{"inputs": {"length": float(v)}} | ({"at": when} if when else {}) for v in values]


def late_counts(tmp_path, store, reference: int, window_1: tuple[float, int], late: tuple[float, int]) -> list:
    """A baseline of ``reference`` lengths around 100; node web-1's counts of window 0 (as many
    around 100) and of window 1 (``window_1``: mean, count); then web-2's counts of window 0, late
    (``late``: mean, count). The alerts delivered, as each came."""
    rng = np.random.default_rng(0)
    store.take_baseline("acme/support@v1.0.0", write_jsonl(tmp_path / "ref.jsonl",
                                                          lengths(rng.normal(100, 10, reference))))
    delivered: list = []
    first = lengths(rng.normal(100, 10, window_1[1]), at(0, 10)) + lengths(rng.normal(window_1[0], 10, window_1[1]),
                                                                           at(1, 10))
    store.record("acme/support@v1.0.0", write_jsonl(tmp_path / "a.jsonl", first), node="web-1", deliver=delivered.append)
    delivered.append("late")
    store.record("acme/support@v1.0.0", write_jsonl(tmp_path / "b.jsonl", lengths(rng.normal(late[0], 10, late[1]),
                                                                                   at(0, 20))),
                 node="web-2", deliver=delivered.append)
    return delivered


def test_counts_a_node_flushes_late_make_no_second_alert_for_an_excursion_already_alerted(tmp_path, store):
    delivered = late_counts(tmp_path, store, 2000, (130, 500), (130, 2000))
    assert [(a.window, a.status) for a in delivered if a != "late"] == [(at(1), "investigate")]
    assert delivered[-1] == "late", "one stay in investigate, one alert"
    assert store.drift("acme/support@v1.0.0").statuses()[:, 0].tolist() == ["investigate", "investigate"]
    rng = np.random.default_rng(1)
    delivered = [a for a in delivered if a != "late"]
    # a later excursion, after a fine window, is alerted again
    fine_then_shifted = lengths(rng.normal(100, 10, 3000), at(2, 10)) + lengths(rng.normal(130, 10, 500), at(3, 10))
    store.record("acme/support@v1.0.0", write_jsonl(tmp_path / "c.jsonl", fine_then_shifted), node="web-1",
                 deliver=delivered.append)
    assert [(a.window, a.status) for a in delivered] == [(at(1), "investigate"), (at(3), "investigate")]


def test_late_counts_that_show_a_higher_status_than_any_alerted_since_raise_it(tmp_path, store):
    """A later, lower alert does not cover a higher status found late in an earlier window: the
    excursion reached investigate, and nobody was told."""
    delivered = late_counts(tmp_path, store, 4000, (104, 4000), (140, 20000))
    assert store.drift("acme/support@v1.0.0").statuses()[:, 0].tolist() == ["investigate", "watch"]
    assert [(a.window, a.status) if a != "late" else a for a in delivered] == [
        (at(1), "watch"), "late", (at(0), "investigate")]


def test_an_idle_flush_raises_the_alerts_of_the_windows_that_ended_since(tmp_path, store, monkeypatch):
    rng = np.random.default_rng(0)
    store.take_baseline("acme/support@v1.0.0", write_jsonl(tmp_path / "ref.jsonl", lengths(rng.normal(100, 10, 1000))))
    delivered = []
    monitor = store.monitor("acme/support@v1.0.0", node="web-1", deliver=delivered.append)
    monitor.observe_batch({"inputs.length": rng.normal(160, 10, 200)}, at=T0 + 600)
    monkeypatch.setenv("ARTIFACTSTORE_NOW", at(1, 0))  # the window just ended: flushed, not over yet
    assert monitor.flush() == [] and delivered == []
    monkeypatch.setenv("ARTIFACTSTORE_NOW", at(1, 6))  # over: no new request, and its alert comes all the same
    assert [(a.window, a.status) for a in monitor.flush()] == [(at(0), "investigate")] and len(delivered) == 1


def test_a_record_whose_alert_check_fails_keeps_its_rows_and_succeeds(tmp_path, store, caplog):
    rng = np.random.default_rng(0)
    store.take_baseline("acme/support@v1.0.0", write_jsonl(tmp_path / "ref.jsonl", traffic(rng, 500)))
    model = ModelName.parse("acme/support")
    store.monitoring.store.backend.swap_ref(alerts_key(model), b"{not json", None)  # damaged
    shifted = write_jsonl(tmp_path / "cur.jsonl", traffic(rng, 100, shift=1.0, when=at(0)))
    delivered = []
    report = store.record("acme/support@v1.0.0", shifted, node="n1", deliver=delivered.append)
    assert report.alerts == [] and delivered == []
    assert "alerts not checked, the next check raises them" in caplog.text and "alerts.json: malformed" in caplog.text
    assert store.drift("acme/support@v1.0.0").only("inputs.length").counts.tolist() == [[100]]
    # the command too: exit 0, the warning on stderr, the rows counted once
    command = cli("monitor", "record", "acme/support@v1.0.0", "--from", shifted, "--node", "n2", "--store", store.path)
    assert command.returncode == 0 and "alerts.json: malformed" in command.stderr
    assert store.drift("acme/support@v1.0.0").only("inputs.length").counts.tolist() == [[200]]
    backend = store.monitoring.store.backend
    backend.swap_ref(alerts_key(model), b'{"raised": {}}', backend.read_ref(alerts_key(model))[1])  # repaired
    assert at(0) in [a.window for a in store.raise_alerts("acme/support@v1.0.0", delivered.append)]


def test_a_naive_time_is_utc_as_in_json_lines_not_the_machines_time(tmp_path, store, monkeypatch):
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        store.take_baseline("acme/support@v1.0.0", write_jsonl(tmp_path / "ref.jsonl",
                                                               [{"inputs": {"x": float(i)}} for i in range(10)]))
        with store.monitor("acme/support@v1.0.0", node="api") as monitor:
            monitor.observe({"x": 1.0}, at=datetime(2026, 11, 26, 10, 30))
            monitor.observe_batch({"inputs.x": np.array([1.0])}, at=datetime(2026, 11, 26, 11, 30))
        store.record("acme/support@v1.0.0", write_jsonl(tmp_path / "a.jsonl",
                                                        [{"inputs": {"x": 1.0}, "at": "2026-11-26T10:30:00"}]))
        assert store.drift("acme/support@v1.0.0").starts.tolist() == [T0, T0 + 3600]
    finally:
        monkeypatch.undo()
        time.tzset()


def test_the_dashboard_summarises_the_alerts_of_a_feature_whose_name_holds_spaces(tmp_path, store):
    from artifactstore.web.dashboard import drift_summary  # here: the dashboard needs the serve extra

    def spaced(requests):
        for request in requests:
            request["inputs"]["input length"] = request["inputs"].pop("length")
        return requests

    rng = np.random.default_rng(3)
    store.take_baseline("acme/support@v1.0.0", write_jsonl(tmp_path / "ref.jsonl", spaced(traffic(rng, 2000))))
    delivered = []
    for hour, shift in enumerate([0, 0.6]):
        requests = spaced(traffic(rng, 1500, shift=shift, when=at(hour, 10)))
        store.record("acme/support@v1.0.0", write_jsonl(tmp_path / f"h{hour}.jsonl", requests), node="n1",
                     deliver=delivered.append)
    assert ("inputs.input length", at(1), "investigate") in [(a.feature, a.window, a.status) for a in delivered]
    raised = raised_alerts(store.monitoring, ModelName.parse("acme/support"))
    assert sorted(parse_alert_key(key) for key in raised) == \
        sorted((a.version, a.feature, a.window, a.status) for a in delivered)
    summary = drift_summary(store.drift("acme/support@v1.0.0"), raised)
    assert ("inputs.input length", at(1), "investigate") in \
        [(a["feature"], a["window"], a["status"]) for a in summary.open_alerts]


# -- bundles, eval runs, labelled data, the retrain check -----------------------------------------


def test_promotion_takes_the_default_baseline_from_the_bundles_eval_samples(tmp_path):
    rng = np.random.default_rng(4)
    store = Store.init(tmp_path / "store")
    samples = "".join(json.dumps(r) + "\n" for r in traffic(rng, 300))
    push_history(store, tmp_path, eval_samples=samples, training_examples=10_000)
    assert store.version_record("acme/support@v1.0.0")["training_examples"] == 10_000
    with pytest.raises(NotFound, match="no drift baseline"):
        store.drift("acme/support@v1.0.0")
    store.promote("acme/support@v1.0.0")
    baseline = store.drift("acme/support")
    assert baseline.features == ["inputs.category", "inputs.length", "outputs.length", "outputs.refused"]
    _, frozen, window = read_baseline(store.monitoring, baseline_model(), "v1.0.0")
    assert frozen.source == "eval_samples.jsonl" and frozen.samples == 300 and window == 3600
    # an explicit baseline first: promotion keeps it
    store.take_baseline("acme/support@v1.1.0", write_jsonl(tmp_path / "mine.jsonl", traffic(rng, 50)))
    store.promote("acme/support@v1.1.0")
    _, kept, _ = read_baseline(store.monitoring, baseline_model(), "v1.1.0")
    assert kept.source == "mine.jsonl"


def baseline_model():
    from artifactstore.registry.refs import ModelName

    return ModelName("acme", "support")


def test_a_bundle_with_malformed_eval_samples_is_refused_naming_the_line(tmp_path):
    store = Store.init(tmp_path / "store")
    bundle = write_bundle(HISTORY[0], tmp_path / "bundle",
                          eval_samples='{"inputs": {"length": 3}}\n{"inputs": {"length": "long"}}\n')
    with pytest.raises(InvalidInput, match=r"eval_samples.jsonl line 2: inputs.length is text or true/false here "
                                           r"but a number on line 1"):
        store.push(bundle, "acme/support@v1.0.0")
    assert store.models() == []


@pytest.mark.parametrize("samples, said", [
    ("\n", "holds no request"),
    ('{"inputs": {"length": null}, "at": "2026-11-26T10:00:00Z"}\n', "no request has a feature value"),
    ('{"inputs": {' + ", ".join(f'"f{i}": {i}' for i in range(300)) + '}}\n', "300 features, more than the limit of 256"),
])
def test_a_bundle_whose_eval_samples_no_baseline_can_be_taken_from_is_refused_at_push(tmp_path, samples, said):
    """Its promotion would take the baseline from them: refused there, it would hold the promote back."""
    store = Store.init(tmp_path / "store")
    bundle = write_bundle(HISTORY[0], tmp_path / "bundle", eval_samples=samples)
    with pytest.raises(InvalidInput, match=f"eval_samples.jsonl: {said}"):
        store.push(bundle, "acme/support@v1.0.0")
    assert store.models() == []


def test_retrain_check_names_every_trigger_and_fires_on_the_evidence(tmp_path):
    rng = np.random.default_rng(5)
    store = Store.init(tmp_path / "store")
    samples = "".join(json.dumps(r) + "\n" for r in traffic(rng, 1000))
    push_history(store, tmp_path, eval_samples=samples, training_examples=10_000)
    store.promote("acme/support@v1.0.0")
    quiet = store.retrain_check("acme/support")
    assert not quiet.retrain and quiet.verdict() == "do not retrain: no trigger fired"
    assert [t.name for t in quiet.triggers] == ["input drift", "eval accuracy", "labelled data", "human sampling",
                                                "domain shift"]
    assert not any(t.measured for t in quiet.triggers)

    store.record("acme/support", write_jsonl(tmp_path / "calm.jsonl", traffic(rng, 2000, when=at(0))))
    (tmp_path / "eval.json").write_text(json.dumps({"accuracy": 0.93}))
    trend = store.record_eval("acme/support@production", tmp_path / "eval.json")
    assert trend.changes()["accuracy"]["relative"] == pytest.approx((0.93 - 0.942) / 0.942)
    store.record_labelled("acme/support", 11_000)
    calm = store.retrain_check("acme/support")
    assert not calm.retrain and all(t.measured for t in calm.triggers[:3])

    store.record("acme/support", write_jsonl(tmp_path / "drift.jsonl", traffic(rng, 2000, shift=0.5, when=at(1))))
    (tmp_path / "eval.json").write_text(json.dumps({"accuracy": 0.88, "hallucination_rate": 0.03}))
    store.record_eval("acme/support@production", tmp_path / "eval.json")
    assert store.record_labelled("acme/support", 12_500).growth == pytest.approx(0.25)
    check = store.retrain_check("acme/support")
    fired = {t.name: t for t in check.triggers if t.fired}
    assert set(fired) == {"input drift", "eval accuracy", "labelled data"}
    assert "inputs.length PSI" in fired["input drift"].evidence and fired["input drift"].value > 0.2
    assert check.verdict() == "retrain: input drift, eval accuracy, labelled data"
    assert len(store.eval_trend("acme/support@v1.0.0").runs) == 2

    (tmp_path / "bad.json").write_text(json.dumps({"f1": 0.5}))
    with pytest.raises(InvalidInput, match="f1 is not a metric of the launch baseline"):
        store.record_eval("acme/support@production", tmp_path / "bad.json")


@pytest.mark.parametrize(("accuracy", "examples", "fired"), [
    (0.855, 14_400, {"labelled data"}),  # exactly 5% below (not more), exactly +20% (at least)
    (0.854, 14_399, {"eval accuracy"}),
])
def test_the_retrain_triggers_judge_values_exactly_at_their_limits_as_the_doc_says(tmp_path, accuracy, examples,
                                                                                  fired):
    store = Store.init(tmp_path / "store")
    version = replace(HISTORY[0], eval_results={"accuracy": 0.9})
    store.push(write_bundle(version, tmp_path / "bundle", training_examples=12_000), "acme/support@v1.0.0")
    store.promote("acme/support@v1.0.0")
    (tmp_path / "run.json").write_text(json.dumps({"accuracy": accuracy}))
    store.record_eval("acme/support@v1.0.0", tmp_path / "run.json")
    store.record_labelled("acme/support", examples)
    assert {t.name for t in store.retrain_check("acme/support").triggers if t.fired} == fired


def test_canary_outputs_compare_with_production_in_the_same_windows(tmp_path, store):
    rng = np.random.default_rng(6)
    store.take_baseline("acme/support@v1.0.0", write_jsonl(tmp_path / "ref.jsonl", traffic(rng, 1000)))
    store.take_baseline("acme/support@v1.1.0", like="acme/support@v1.0.0")
    production = [[int(rng.integers(80, 200)) for _ in range(400)] for _ in range(2)]
    canary = [[int(rng.integers(60, 150)) for _ in range(300)] for _ in range(2)]
    for version, lengths in (("v1.0.0", production), ("v1.1.0", canary)):
        requests = [{"outputs": {"length": n}, "at": at(hour, 20)} for hour, part in enumerate(lengths) for n in part]
        store.record(f"acme/support@{version}", write_jsonl(tmp_path / f"{version}.jsonl", requests))
    report = store.drift("acme/support@v1.1.0", against="v1.0.0", prefix="outputs.")
    assert report.features == ["outputs.length", "outputs.refused"] and report.against == "acme/support@v1.0.0"
    assert np.isnan(report.psi[:, 1]).all()  # no refusal recorded in either version: nothing to compare
    _, frozen, _ = read_baseline(store.monitoring, baseline_model(), "v1.0.0")
    edges = frozen.features[frozen.find("outputs.length")].edges
    for w in range(2):
        ref = np.bincount(np.digitize(production[w], edges), minlength=len(edges) + 1)
        cur = np.bincount(np.digitize(canary[w], edges), minlength=len(edges) + 1)
        pr, pc = np.maximum(ref / ref.sum(), 1e-4), np.maximum(cur / cur.sum(), 1e-4)
        pr, pc = pr / pr.sum(), pc / pc.sum()
        assert report.psi[w, 0] == pytest.approx(float(np.sum((pc - pr) * np.log(pc / pr))), rel=1e-12)
    store.take_baseline("acme/support@v1.1.1", write_jsonl(tmp_path / "other.jsonl", traffic(rng, 100)))
    with pytest.raises(InvalidParameter, match="bin no outputs.length"):  # other deciles
        store.drift("acme/support@v1.1.1", against="v1.0.0", prefix="outputs.length")


def test_a_baseline_is_frozen(tmp_path, store):
    rng = np.random.default_rng(8)
    ref = write_jsonl(tmp_path / "ref.jsonl", traffic(rng, 100))
    store.take_baseline("acme/support@v1.0.0", ref)
    with pytest.raises(Conflict, match="already has a drift baseline"):
        store.take_baseline("acme/support@v1.0.0", ref)
    with pytest.raises(InvalidParameter, match="at least a minute"):
        store.take_baseline("acme/support@v1.1.0", ref, window="10s")


# -- gc, tier, verify -----------------------------------------------------------------------------


def monitoring_keys(root: Path) -> set[str]:
    base = root / PREFIX
    return {p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file()} if base.exists() else set()


def record_some(store: Store, tmp_path: Path, version: str, rng, hour: int = 0) -> None:
    path = tmp_path / f"{version}-{hour}.jsonl"
    store.record(f"acme/support@{version}", write_jsonl(path, traffic(rng, 200, when=at(hour))), node="n1")


def test_gc_keeps_monitoring_data_while_its_version_exists(tmp_path, store):
    rng = np.random.default_rng(9)
    ref = write_jsonl(tmp_path / "ref.jsonl", traffic(rng, 300))
    for version in ("v1.0.0", "v1.1.0"):
        store.take_baseline(f"acme/support@{version}", ref)
        record_some(store, tmp_path, version, rng)
    (tmp_path / "eval.json").write_text(json.dumps({"accuracy": 0.9}))
    store.record_eval("acme/support@v1.1.0", tmp_path / "eval.json")
    store.record_labelled("acme/support", 100)
    leftover = store.path / PREFIX / "acme/support/v1.1.1/nodes/n9/counts/c/0/0"  # a delete that stopped halfway
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"x")
    before = store.drift("acme/support@v1.0.0").psi

    assert store.gc(grace="0s").deleted_monitoring == ["store acme/support/v1.1.1"]
    assert not leftover.exists()
    store.delete("acme/support@v1.1.0")
    dry = store.gc(grace="0s", dry_run=True)
    assert dry.deleted_monitoring == ["store acme/support/v1.1.0"]
    assert any(k.startswith("acme/support/v1.1.0/") for k in monitoring_keys(store.path))
    assert store.gc(grace="0s").deleted_monitoring == ["store acme/support/v1.1.0"]
    keys = monitoring_keys(store.path)
    assert not any(k.startswith("acme/support/v1.1.0") for k in keys)
    assert any(k.startswith("acme/support/v1.0.0/nodes/n1/counts/") for k in keys)
    assert any(k.startswith("acme/support/labelled/") for k in keys)
    np.testing.assert_array_equal(store.drift("acme/support@v1.0.0").psi, before)
    assert store.gc(grace="0s").deleted_monitoring == []
    assert store.verify().ok


@pytest.fixture(params=["directory", "s3"])
def cold_url(request, tmp_path):
    if request.param == "directory":
        return str(tmp_path / "cold")
    return request.getfixturevalue("s3_bucket") + "/store"


def test_tier_moves_monitoring_data_with_its_version_and_back(tmp_path, cold_url):
    rng = np.random.default_rng(10)
    store = Store.init(tmp_path / "store", cold=cold_url, keep_hot=1)
    push_history(store, tmp_path)
    store.promote("acme/support@v1.1.1")
    ref = write_jsonl(tmp_path / "ref.jsonl", traffic(rng, 300))
    for version in ("v1.0.0", "v1.1.1"):
        store.take_baseline(f"acme/support@{version}", ref)
        record_some(store, tmp_path, version, rng)
    before = store.drift("acme/support@v1.0.0").counts

    assert store.tier(dry_run=True).monitoring_to_cold == ["acme/support@v1.0.0"]
    assert store.monitoring.locate(baseline_model(), "v1.0.0").name == "store"
    report = store.tier()
    assert report.monitoring_to_cold == ["acme/support@v1.0.0"] and report.monitoring_bytes > 0
    assert store.monitoring.locate(baseline_model(), "v1.0.0").name == "cold"
    assert store.monitoring.locate(baseline_model(), "v1.1.1").name == "store"
    assert not any(k.startswith("acme/support/v1.0.0") for k in monitoring_keys(store.path))
    np.testing.assert_array_equal(store.drift("acme/support@v1.0.0").counts, before)
    record_some(store, tmp_path, "v1.0.0", rng, hour=1)  # a record for a cold version appends in the cold tier
    assert store.drift("acme/support@v1.0.0").counts.shape[0] == 2
    assert store.verify().ok
    assert store.tier().monitoring_to_cold == []

    store.promote("acme/support@v1.0.0")
    assert store.tier().monitoring_to_hot == ["acme/support@v1.0.0"]
    assert store.monitoring.locate(baseline_model(), "v1.0.0").name == "store"
    assert not store.monitoring.cold.has_root("acme/support/v1.0.0")
    assert store.drift("acme/support@v1.0.0").counts.shape[0] == 2
    assert store.verify().ok


def test_a_move_that_stopped_halfway_is_finished_by_the_next_tier(tmp_path):
    rng = np.random.default_rng(11)
    store = Store.init(tmp_path / "store", cold=str(tmp_path / "cold"), keep_hot=1)
    push_history(store, tmp_path)
    store.take_baseline("acme/support@v1.0.0", write_jsonl(tmp_path / "ref.jsonl", traffic(rng, 300)))
    record_some(store, tmp_path, "v1.0.0", rng)
    counts = store.drift("acme/support@v1.0.0").counts
    # copied to the cold tier, but stopped before the store's copy was deleted: both have a root
    arrays = store.monitoring
    for key in arrays.keys(arrays.store, "acme/support/v1.0.0"):
        arrays.cold.backend.write(key, arrays.store.backend.read(key))
    (tmp_path / "cold" / PREFIX / "acme/support/v1.0.0/nodes/n1/counts/zarr.json").unlink()  # and not all of it
    assert arrays.locate(baseline_model(), "v1.0.0").name == "store"
    np.testing.assert_array_equal(store.drift("acme/support@v1.0.0").counts, counts)
    assert store.tier().monitoring_to_cold == ["acme/support@v1.0.0"]
    np.testing.assert_array_equal(store.drift("acme/support@v1.0.0").counts, counts)
    assert store.verify().ok


def test_an_append_killed_after_the_shape_was_written_leaves_data_that_reads_and_verifies(tmp_path, store):
    rng = np.random.default_rng(15)
    store.take_baseline("acme/support@v1.0.0", write_jsonl(tmp_path / "ref.jsonl", traffic(rng, 300)))
    record_some(store, tmp_path, "v1.0.0", rng)
    before = store.drift("acme/support@v1.0.0")
    counts = zarr.open_array(zarr.storage.LocalStore(store.path / PREFIX), path="acme/support/v1.0.0/nodes/n1/counts",
                             mode="r+")
    counts.resize((counts.shape[0] + 2, counts.shape[1]))  # Zarr's append: the shape first, then the chunk
    after = store.drift("acme/support@v1.0.0")
    np.testing.assert_array_equal(after.counts, before.counts)
    np.testing.assert_array_equal(after.starts, before.starts)
    assert store.verify().ok
    record_some(store, tmp_path, "v1.0.0", rng, hour=1)  # the next append continues after the torn rows
    assert store.drift("acme/support@v1.0.0").starts.tolist() == [T0, T0 + 3600]
    assert store.verify().ok


def test_verify_names_damaged_monitoring_data(tmp_path, store):
    rng = np.random.default_rng(12)
    store.take_baseline("acme/support@v1.0.0", write_jsonl(tmp_path / "ref.jsonl", traffic(rng, 300)))
    record_some(store, tmp_path, "v1.0.0", rng)
    assert store.verify().ok
    zarr_store = zarr.storage.LocalStore(store.path / PREFIX)
    counts = zarr.open_array(zarr_store, path="acme/support/v1.0.0/nodes/n1/counts", mode="r+")
    counts[0, 3] = -5
    edges = zarr.open_array(zarr_store, path="acme/support/v1.0.0/baseline/edges", mode="r+")
    edges[:2] = edges[:2][::-1].copy()
    wrong = zarr.create_array(zarr_store, name="acme/support/v1.0.0/nodes/n2/counts", shape=(1, 3), dtype="int64",
                              chunks=(256, 3), fill_value=0)
    wrong[:] = 1
    problems = store.verify().problems
    assert any("node n1: negative counts" in p for p in problems)
    assert any("edges of inputs.length are not finite and strictly increasing" in p for p in problems)
    assert any("node n2: counts are int64 (1, 3)" in p for p in problems)

    chunk = store.path / PREFIX / "acme/support/v1.0.0/nodes/n1/counts/c/0/0"
    chunk.write_bytes(b"not zstd")
    assert any("not readable" in p and "v1.0.0" in p for p in store.verify().problems)


# -- the command line -----------------------------------------------------------------------------


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "artifactstore", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


def test_commands_report_and_plot(tmp_path, store):
    rng = np.random.default_rng(13)
    s = ("--store", store.path)
    ref = write_jsonl(tmp_path / "ref.jsonl", traffic(rng, 500))
    baseline = cli("monitor", "baseline", "acme/support@v1.0.0", "--from", ref, *s, "--json")
    assert baseline.returncode == 0, baseline.stderr
    assert json.loads(baseline.stdout)["samples"] == 500
    store.promote("acme/support@v1.0.0")
    requests = traffic(rng, 800, when=at(0)) + traffic(rng, 800, shift=0.5, when=at(1))
    record = cli("monitor", "record", "acme/support", "--from", write_jsonl(tmp_path / "cur.jsonl", requests),
                 "--node", "web-1", *s)
    assert record.returncode == 0, record.stderr
    assert "1600 requests" in record.stdout and "(node web-1)" in record.stdout
    assert "alert: acme/support@v1.0.0: inputs.length PSI" in record.stderr

    drift = cli("drift", "acme/support", "--json", "--plot", tmp_path / "psi.png", *s)
    assert drift.returncode == 0, drift.stderr
    report = json.loads(drift.stdout)
    assert report["windows"] == [at(0), at(1)]
    assert report["status"][1][report["features"].index("inputs.length")] == "investigate"
    assert (tmp_path / "psi.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = cli("drift", "acme/support", "--since", "2026-11-26T11:00:00Z", *s)
    assert text.returncode == 0 and "2026-11-26 11:00" in text.stdout and "2026-11-26 10:00" not in text.stdout

    (tmp_path / "eval.json").write_text(json.dumps({"accuracy": 0.85}))
    assert cli("eval", "record", "acme/support", tmp_path / "eval.json", *s).returncode == 0
    trend = json.loads(cli("eval", "trend", "acme/support", "--json", *s).stdout)
    assert trend["changes"]["accuracy"]["latest"] == 0.85
    assert "labelled examples" in cli("data", "record", "acme/support", "--examples", "500", *s).stdout
    check = cli("retrain-check", "acme/support", *s)
    assert check.returncode == 0 and "FIRED  input drift" in check.stdout
    assert check.stdout.strip().splitlines()[-1] == "retrain: input drift, eval accuracy"
    assert json.loads(cli("retrain-check", "acme/support", "--json", *s).stdout)["retrain"] is True


def test_command_errors_are_one_line_and_change_nothing(tmp_path, store):
    rng = np.random.default_rng(14)
    s = ("--store", store.path)
    store.take_baseline("acme/support@v1.0.0", write_jsonl(tmp_path / "ref.jsonl", traffic(rng, 200)))
    good = json.dumps(traffic(rng, 1, when=at(0))[0])
    (tmp_path / "bad.jsonl").write_text(f"{good}\n{good}\n{{\"inputs\": {{\"length\": [1, 2]}}}}\n")
    (tmp_path / "kind.jsonl").write_text('{"inputs": {"length": 5}}\n{"inputs": {"category": 3}}\n')
    (tmp_path / "eval.json").write_text(json.dumps({"accuracy": "high"}))
    (tmp_path / "huge.json").write_text('{"accuracy": ' + "9" * 400 + "}")  # no float holds it
    write_jsonl(tmp_path / "nulls.jsonl", [{"inputs": {"length": None}, "outputs": {}}])
    write_jsonl(tmp_path / "vast.jsonl", [{"inputs": {"x": x}} for x in (-9e307, -9e307, 9e307, 9e307)])
    write_jsonl(tmp_path / "part.jsonl", [{"inputs": {"category": "billing"}}])
    write_jsonl(tmp_path / "year1.jsonl", [{"inputs": {"length": 3.0}, "at": "0001-01-01T00:30:00+01:00"}])
    no_matplotlib = tmp_path / "shim"
    (no_matplotlib / "matplotlib").mkdir(parents=True)
    (no_matplotlib / "matplotlib" / "__init__.py").write_text("raise ImportError('no matplotlib here')\n")
    before = monitoring_keys(store.path)
    cases = [
        (("monitor", "record", "acme/support@v1.0.0", "--from", tmp_path / "bad.jsonl"),
         f"{tmp_path / 'bad.jsonl'} line 3: inputs.length: a list is not a feature value"),
        (("monitor", "record", "acme/support@v1.0.0", "--from", tmp_path / "kind.jsonl"),
         f"{tmp_path / 'kind.jsonl'} line 2: inputs.category is a number, but the baseline counts it as a "
         "categorical feature"),
        (("monitor", "record", "acme/support@v1.1.0", "--from", tmp_path / "ref.jsonl"), "has no drift baseline"),
        (("monitor", "record", "acme/support@v1.0.0", "--from", tmp_path / "missing.jsonl"), "no such file"),
        (("monitor", "record", "acme/support@v1.0.0", "--from", tmp_path / "ref.jsonl", "--node", "Bad Node"),
         "invalid node name"),
        (("monitor", "baseline", "acme/support@v1.0.0", "--from", tmp_path / "ref.jsonl"), "already has a drift"),
        (("monitor", "baseline", "acme/support@v9.0.0", "--from", tmp_path / "ref.jsonl"), "has no version v9.0.0"),
        (("drift", "acme/support"), "acme/support@production is not set"),
        (("drift", "acme/support@v1.0.0", "--since", "yesterday"), "--since 'yesterday'"),
        (("drift", "acme/support@v1.0.0", "--thresholds", "0.3,0.1"), "need 0 < WATCH <= INVESTIGATE"),
        (("drift", "acme/support@v1.0.0", "--prefix", "zzz"), "--prefix 'zzz' matches no feature of "
                                                            "acme/support@v1.0.0 (it has inputs.category, "),
        (("eval", "record", "acme/support@v1.0.0", tmp_path / "eval.json"), "accuracy: 'high' is not a finite"),
        (("data", "record", "acme/nobody", "--examples", "5"), "no model acme/nobody"),
        (("data", "record", "acme/support", "--examples", "-5"), "--examples must be a whole number >= 0"),
        (("data", "record", "acme/support", "--examples", "9" * 20), "at most 9,223,372,036,854,775,807"),
        (("eval", "record", "acme/support@v1.0.0", tmp_path / "huge.json"), "is not a finite number"),
        (("monitor", "baseline", "acme/support@v1.1.0", "--from", tmp_path / "nulls.jsonl"),
         "no request has a feature value"),
        (("monitor", "baseline", "acme/support@v1.1.0", "--from", tmp_path / "vast.jsonl"),
         "inputs.x: the reference's values span more than a float can hold"),
        (("monitor", "baseline", "acme/support@v1.1.0", "--from", tmp_path / "ref.jsonl", "--window", "367d"),
         "at most 366 days"),
        (("monitor", "baseline", "acme/support@v1.1.0", "--like", "acme/support@v1.0.0", "--from",
          tmp_path / "part.jsonl"), "no value of inputs.length, outputs.length, outputs.refused, which the "
                                    "baseline of acme/support@v1.0.0 counts"),
        (("monitor", "record", "acme/support@v1.0.0", "--from", tmp_path / "year1.jsonl"),
         "year1.jsonl line 1: \"at\": '0001-01-01T00:30:00+01:00' is outside the years 1 to 9999 in UTC"),
    ]
    for args, message in cases:
        result = cli(*args, *s)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
    plot = cli("drift", "acme/support@v1.0.0", "--plot", tmp_path / "p.png", *s,
               env={"PYTHONPATH": f"{no_matplotlib}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})
    assert plot.returncode == 1 and plot.stderr == \
        "error: --plot needs matplotlib, which is not installed: pip install 'artifactstore[plot]'\n"
    assert monitoring_keys(store.path) == before
    assert not (tmp_path / "p.png").exists()


def test_labelled_data_for_a_model_without_versions_is_refused_not_kept_until_gc(tmp_path, store):
    """gc deletes the monitoring data of a model without versions: what it would record is lost."""
    policy = tmp_path / "policy.yaml"
    policy.write_text("review: {min_samples: 20}\n")
    store.set_policy("acme/new", policy, actor="lead")  # the model exists, with no version yet
    before = monitoring_keys(store.path)
    result = cli("data", "record", "acme/new", "--examples", "5", "--store", store.path)
    assert result.returncode == 1 and result.stderr == (
        "error: acme/new has no version yet: labelled data is compared with a version's training examples "
        "(push one first)\n")
    assert monitoring_keys(store.path) == before


def test_the_policy_sets_the_thresholds_and_its_hooks_hear_the_alerts(tmp_path, store):
    receiver = Receiver()
    try:
        rng = np.random.default_rng(5)
        store.take_baseline("acme/support@v1.0.0", write_jsonl(tmp_path / "ref.jsonl", traffic(rng, 2000)))
        policy = tmp_path / "policy.yaml"
        policy.write_text("gate: {required: false}\nreview: {required: false}\n"
                          "drift: {watch: 0.02, investigate: 0.5, max_eval_drop: 0.03}\n"
                          f"hooks:\n  - {{name: ml-team, url: '{receiver.url}', events: [drift_watch]}}\n")
        store.set_policy("acme/support", policy, actor="lead")
        requests = traffic(rng, 1500, shift=0.15, when=at(0, 10))  # about 0.1: watch at 0.02, fine at the seed's
        store.record("acme/support@v1.0.0", write_jsonl(tmp_path / "h0.jsonl", requests), node="n1")
        report = store.drift("acme/support@v1.0.0")
        assert (report.thresholds.watch, report.thresholds.investigate) == (0.02, 0.5)
        assert "watch" in report.only("inputs.length").statuses()[:, 0].tolist()
        deadline = time.monotonic() + 10
        while not receiver.received and time.monotonic() < deadline:
            time.sleep(0.05)
        events = [r["event"] for r in receiver.received]
        assert events and {e["event"] for e in events} == {"drift_watch"}
        assert {"feature", "window", "psi", "threshold"} <= set(events[0]) and events[0]["threshold"] == 0.02
        assert store.drift_policy("acme/support").max_eval_drop == 0.03
    finally:
        receiver.close()

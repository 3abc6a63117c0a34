"""Canary rollouts: every decision path of a tick (pure and through the registry), a 48-hour plan run in
seconds with ARTIFACTSTORE_NOW, kills between any two writes, racing ticks in two processes, the
commands and their one-line errors, and the hooks a rollout fires."""

import json
import math
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from dataclasses import replace

import blake3
import numpy as np
import pytest
from conftest import run_cli, snapshot
from fleet_helpers import FAST_POLICY, MODEL, hours, push_versions, report, set_now, with_policy
from test_hooks import Receiver

from artifactstore import InvalidInput, InvalidParameter, NotFound, Refused, Store
from artifactstore.backends.local import LocalBackend
from artifactstore.clock import timestamp
from artifactstore.content.manifest import canonical_json
from artifactstore.monitoring.psi import psi
from artifactstore.registry import metrics
from artifactstore.registry.analysis import Rollout, decide, interference, judge, population_stability_index
from artifactstore.registry.metrics import METRICS_CONTEXT, MetricsCollector, Traffic, aggregate, records_in_window
from artifactstore.registry.policy import CanaryAnalysis, CanarySection
from artifactstore.registry.refs import ModelName
from artifactstore.registry.rollout import measurements, read_measurement
from artifactstore.registry.state import ModelState


@pytest.fixture
def fleet_store(store, tmp_path, monkeypatch):
    """acme/support: v1.0.0 in production, v1.1.0 pushed, the fast plan (2 h at 10%, 2 h at 50%)."""
    push_versions(store, tmp_path)
    with_policy(store, tmp_path)
    store.promote(f"{MODEL}@v1.0.0", actor="jane", reason="launch")
    set_now(monkeypatch, hours(0))
    return store


def tick_at(store, monkeypatch, hour: float):
    set_now(monkeypatch, hours(hour))
    return store.rollout_tick(MODEL, actor="cron")


# -- the pure decisions --------------------------------------------------------------------------

PLAN = CanarySection.model_validate({"steps": [{"percent": 10, "hold": "2h"}, {"percent": 50, "hold": "2h"},
                                               {"percent": 100}],
                                     "analysis": {"interval": "1h", "failure_limit": 1, "inconclusive_limit": 1}})
STARTED = Rollout("v1.1.0", "v1.0.0", None, 0, timestamp(hours(0)), timestamp(hours(0)))


@pytest.mark.parametrize("rollout, now, measured, kind, step", [
    (STARTED, hours(0.5), [], "nothing", 0),
    (STARTED, hours(1), [("m1", "pass")], "hold", 0),  # passing, but the 2 h hold is not over
    (STARTED, hours(2), [("m1", "pass"), ("m2", "pass")], "advance", 1),
    (STARTED, hours(2), [("m1", "pass"), ("m2", "inconclusive")], "hold", 0),  # the hold is over, the last is not a pass
    (STARTED, hours(2), [("m1", "inconclusive"), ("m2", "inconclusive")], "pause", 0),  # more than 1 in a row
    (STARTED, hours(2), [("m1", "fail"), ("m2", "pass")], "advance", 1),  # one noisy window does not abort
    (STARTED, hours(2), [("m1", "fail"), ("m2", "fail")], "abort", 0),  # one more than the failure limit
    (Rollout("v1.1.0", "v1.0.0", None, 1, timestamp(hours(0)), timestamp(hours(2)), windows=1, last="pass"),
     hours(4), [("m4", "pass")], "complete", 2),
    (Rollout("v1.1.0", "v1.0.0", None, 1, timestamp(hours(0)), timestamp(hours(2)), failed=("m1",)),
     hours(3), [("m3", "fail")], "abort", 1),  # failures count over the whole rollout
    (Rollout("v1.1.0", "v1.0.0", None, 0, timestamp(hours(0)), timestamp(hours(0)),
             paused={"at": timestamp(hours(1)), "reason": "looking"}), hours(9), [], "paused", 0),
])
def test_every_decision_of_the_pure_function(rollout, now, measured, kind, step):
    decision = decide(rollout, PLAN, now, measured)
    assert decision.kind == kind and decision.rollout.step == step
    if kind == "advance":
        assert decision.rollout.step_started == timestamp(now) and decision.rollout.windows == 0
    if kind == "pause":
        assert decision.rollout.paused["reason"].startswith("2 inconclusive windows in a row")


def traffic(requests=1000, errors=10, p95=300.0, scores=None, outputs=None) -> Traffic:
    return Traffic(requests, errors, {"p95": p95}, scores or {}, {n: requests for n in scores or {}}, outputs or {})


@pytest.mark.parametrize("metrics, canary, production, outcome, note", [
    ({"error_rate": {"max_drop_points": 1}}, traffic(errors=15), traffic(errors=10), "pass", "error_rate 0.015"),
    ({"error_rate": {"max_drop_points": 1}}, traffic(errors=40), traffic(errors=10), "fail",
     "error_rate rose 3 points, more than the 1 point allowed"),
    ({"error_rate": {"ceiling": 0.02}}, traffic(errors=25), traffic(errors=30), "fail", "above the ceiling of 0.02"),
    ({"latency_p95_ms": {"max_drop_percent": 20}}, traffic(p95=390.0), traffic(p95=300.0), "fail", "rose 90"),
    ({"latency_p95_ms": {"max_drop_percent": 20}}, traffic(p95=350.0), traffic(p95=300.0), "pass", "latency_p95_ms"),
    ({"quality": {"floor": 0.8}}, traffic(scores={"quality": 0.7}), traffic(), "fail", "below the floor of 0.8"),
    ({"quality": {"max_drop": 0.05}}, traffic(scores={"quality": 0.9}), traffic(), "inconclusive",
     "not reported for both versions: quality"),
    ({"quality": {"floor": 0.8}}, traffic(), traffic(), "inconclusive", "not reported for both versions: quality"),
    ({"quality": {"floor": 0.8, "missing": "pass"}}, traffic(), traffic(), "pass", ""),
    ({"error_rate": {"max_drop_points": 1}}, traffic(requests=50), traffic(), "inconclusive",
     "the canary had 50 requests"),
    ({"output_psi": {"ceiling": 0.2}}, traffic(outputs={"short": 90, "long": 10}),
     traffic(outputs={"short": 10, "long": 90}), "fail", "output_psi"),
    ({"output_psi": {"ceiling": 0.2}}, traffic(outputs={"short": 50, "long": 50}),
     traffic(outputs={"short": 52, "long": 48}), "pass", "output_psi"),
])
def test_a_window_is_judged_against_absolute_and_relative_thresholds(metrics, canary, production, outcome, note):
    judged = judge(CanaryAnalysis.model_validate({"metrics": metrics}), canary, production)
    assert judged.outcome == outcome and note in judged.note


QUALITY_NOT_SCORED_BY_PRODUCTION = (traffic(scores={"quality": 0.1}), traffic())


@pytest.mark.parametrize("rule, canary, production, outcome, note", [
    ({"max_drop": 0.03, "missing": "fail"}, *QUALITY_NOT_SCORED_BY_PRODUCTION, "fail",
     "quality not reported by production (missing: fail)"),
    ({"max_drop": 0.03, "missing": "fail"}, traffic(), traffic(scores={"quality": 0.9}), "fail",
     "quality not reported by the canary (missing: fail)"),
    ({"max_drop": 0.03, "missing": "fail"}, traffic(), traffic(), "fail",
     "quality not reported by the canary and production (missing: fail)"),
    ({"max_drop": 0.03, "floor": 0.8, "missing": "pass"}, *QUALITY_NOT_SCORED_BY_PRODUCTION, "fail",
     "quality below the floor of 0.8"),
    ({"max_drop": 0.03, "floor": 0.05, "missing": "pass"}, *QUALITY_NOT_SCORED_BY_PRODUCTION, "pass", "quality 0.1"),
    ({"max_drop": 0.03}, *QUALITY_NOT_SCORED_BY_PRODUCTION, "inconclusive", "not reported for both versions: quality"),
])
def test_missing_decides_a_window_in_which_a_version_did_not_report_a_metric(rule, canary, production, outcome,
                                                                              note):
    judged = judge(CanaryAnalysis.model_validate({"metrics": {"quality": rule}}), canary, production)
    assert judged.outcome == outcome and note in judged.note


def test_psi_is_the_drift_definition():
    expected, actual = {"a": 30, "b": 70, "c": 0}, {"a": 60, "b": 40}
    floored = [[max(x, 1e-4) for x in row] for row in ([0.3, 0.7, 0.0], [0.6, 0.4, 0.0])]
    ref, cur = ([x / sum(row) for x in row] for row in floored)
    assert population_stability_index(expected, actual) == pytest.approx(
        sum((c - r) * math.log(c / r) for r, c in zip(ref, cur)))
    assert population_stability_index(expected, expected) == 0
    counts = np.array([[30, 70, 0], [60, 40, 0]])
    assert population_stability_index(expected, actual) == pytest.approx(float(psi(counts[0], counts[1], [3])[0])), \
        "the canary's PSI and the drift monitor's agree"


def test_records_are_summed_per_version_and_a_collector_makes_records():
    collector = MetricsCollector("srv-1")
    for latency in range(1, 101):
        collector.observe("v1.1.0", float(latency), error=latency > 97, scores={"quality": 0.9}, output="short")
    collector.observe("v1.0.0", 5.0)
    records = collector.take(hours(1))
    by_version = {r.version: r for r in records}
    assert by_version["v1.1.0"].latency_ms == {"p50": 50.0, "p95": 95.0, "p99": 99.0}
    assert by_version["v1.1.0"].errors == 3 and by_version["v1.1.0"].scores["quality"].count == 100
    other = by_version["v1.1.0"].model_copy(update={"node": "srv-2", "requests": 300,
                                                    "latency_ms": {"p95": 195.0}})
    summed = aggregate([by_version["v1.1.0"], other])["v1.1.0"]
    assert summed.requests == 400 and summed.latency_ms["p95"] == pytest.approx((95 * 100 + 195 * 300) / 400)
    assert summed.nodes == ("srv-1", "srv-2") and collector.take(hours(2)) == []


@pytest.mark.parametrize("request_, refusal", [
    ({"latency_ms": math.nan}, "latency_ms: Value error, nan is not a finite number"),
    ({"latency_ms": -1.0}, "latency_ms: Input should be greater than or equal to 0"),
    ({"scores": {"quality": math.nan}}, "scores.quality: Value error, nan is not a finite number"),
    ({"scores": {"quality": math.inf}}, "scores.quality: Value error, inf is not a finite number"),
    ({"scores": {"Accuracy": 0.9}}, "scores.Accuracy.[key]: String should match pattern"),
    ({"scores": {"error_rate": 0.1}}, "error_rate is a built-in metric's name"),
    ({"output": "x" * 65}, "output: String should have at most 64 characters"),
    ({"version": "1.1.0"}, "version: String should match pattern"),
])
def test_a_request_no_record_could_hold_is_refused_and_the_others_are_kept(request_, refusal):
    """Refused when observed, one request cannot make taking the records fail and lose every version's."""
    collector = MetricsCollector("srv-1")
    for latency in range(1, 101):
        collector.observe("v1.0.0", float(latency), scores={"quality": 0.9})
        collector.observe("v1.1.0", float(latency), scores={"quality": 0.8}, output="short")
    bad = {"version": "v1.1.0", "latency_ms": 30.0} | request_
    with pytest.raises(InvalidParameter, match=re.escape(refusal)):
        collector.observe(bad.pop("version"), bad.pop("latency_ms"), **bad)
    written: list = []
    assert collector.flush(written.extend) == 2
    assert {r.version: (r.requests, r.scores["quality"].count) for r in written} == {"v1.0.0": (100, 100),
                                                                                     "v1.1.0": (100, 100)}


def test_taking_records_cannot_fail_on_requests_the_collector_took():
    """A record covers at most a day and a score's mean must be finite: a longer pause between takes, or
    finite scores whose sum overflows, still make records (they used to raise and lose the requests)."""
    collector = MetricsCollector("srv-1")
    collector.take(hours(0))
    collector.observe("v1.1.0", 20.0, scores={"quality": 1e308})
    collector.observe("v1.1.0", 20.0, scores={"quality": 1e308})
    [record] = collector.take(hours(30))
    assert (record.start, record.end) == (timestamp(hours(6)), timestamp(hours(30)))
    assert record.requests == 2 and record.scores["quality"].mean == 1e308


# -- ticks through the registry ------------------------------------------------------------------


def test_a_48_hour_plan_runs_in_seconds_10_50_100(store, tmp_path, monkeypatch):
    """The seeds' plan (the policy's defaults): 10% for 24 h, 50% for 24 h, then 100%; hourly windows."""
    push_versions(store, tmp_path)
    with_policy(store, tmp_path, "gate: {required: false}\nreview: {required: false}\n")
    store.promote(f"{MODEL}@v1.0.0", actor="jane")
    set_now(monkeypatch, hours(0))
    started = store.start_rollout(f"{MODEL}@v1.1.0", actor="jane", reason="monthly retrain")
    assert started.canary == {"version": "v1.1.0", "percent": 10}
    decisions = {}
    for hour in range(1, 49):
        report(store, hour)
        decisions[hour] = tick_at(store, monkeypatch, hour).decision
    assert decisions[24] == "advance" and decisions[48] == "complete"
    assert {d for h, d in decisions.items() if h not in (24, 48)} == {"hold"}
    state = store.state(MODEL)
    assert (state.pointer("production"), state.pointer("rollback_target"), state.canary, state.rollout) == \
        ("v1.1.0", "v1.0.0", None, None)
    moves = [(e.action, e.pointer, e.percent) for e in store.log(MODEL) if e.pointer == "canary"]
    assert moves == [("rollout-start", "canary", 10), ("rollout-step", "canary", 50), ("rollout-complete", "canary",
                                                                                       None)]
    last = store.rollout_status(MODEL)["last"]
    assert last["outcome"] == "complete" and last["version"] == "v1.1.0"
    assert store.verify().ok


def test_a_tick_holds_on_inconclusive_windows_then_pauses_and_resume_restarts_the_step(fleet_store, monkeypatch):
    fleet_store.start_rollout(f"{MODEL}@v1.1.0", actor="jane")
    report(fleet_store, 1, canary=(20, 0, 300.0))  # too little traffic to judge
    held = tick_at(fleet_store, monkeypatch, 1)
    assert held.decision == "hold" and held.measured[0]["outcome"] == "inconclusive"
    assert "the canary had 20 requests" in held.measured[0]["note"]
    paused = tick_at(fleet_store, monkeypatch, 2)  # no traffic at all: a second inconclusive window in a row
    assert paused.decision == "pause" and fleet_store.state(MODEL).rollout["paused"]["reason"].startswith("2 incon")
    assert fleet_store.state(MODEL).canary == {"version": "v1.1.0", "percent": 10}, "a pause keeps the canary"
    before = fleet_store.state(MODEL).id
    assert tick_at(fleet_store, monkeypatch, 5).decision == "paused" and fleet_store.state(MODEL).id == before
    fleet_store.resume_rollout(MODEL, actor="jane", reason="traffic is back")
    rollout = fleet_store.state(MODEL).rollout
    assert rollout["step_started"] == timestamp(hours(5)) and rollout["windows"] == 0 and rollout["paused"] is None
    report(fleet_store, 6)
    report(fleet_store, 7)
    assert tick_at(fleet_store, monkeypatch, 7).decision == "advance"


def test_a_tick_aborts_past_the_failure_limit_and_keeps_the_evidence(fleet_store, monkeypatch):
    fleet_store.start_rollout(f"{MODEL}@v1.1.0", actor="jane")
    report(fleet_store, 1, canary=(300, 30, 300.0))  # 10% errors against 0.6%: one noisy window is survived
    first = tick_at(fleet_store, monkeypatch, 1)
    assert first.decision == "hold" and first.measured[0]["outcome"] == "fail"
    report(fleet_store, 2, canary=(300, 60, 300.0))
    aborted = tick_at(fleet_store, monkeypatch, 2)
    assert aborted.decision == "abort" and "2 windows failed, more than the failure limit of 1" in aborted.note
    state = fleet_store.state(MODEL)
    assert state.canary is None and state.rollout is None and state.pointer("production") == "v1.0.0"
    entry = state.entries[-1]
    assert (entry.action, entry.pointer, entry.from_, entry.to) == ("rollout-abort", "canary", "v1.1.0", None)
    failing = [read_measurement(fleet_store.registry, m) for m in entry.evidence["measurements"]]
    assert [m["window"] for m in failing] == [0, 1] and {m["outcome"] for m in failing} == {"fail"}
    assert all("error_rate rose" in note for note in entry.evidence["failures"])
    assert failing[1]["canary"]["errors"] == 60 and failing[1]["production_traffic"]["requests"] == 900
    assert "error_rate rose" in entry.reason
    last = fleet_store.rollout_status(MODEL)["last"]
    assert last["outcome"] == "aborted" and last["evidence"] == entry.evidence
    assert fleet_store.verify().ok


def test_a_tick_with_nothing_due_or_no_rollout_changes_nothing(fleet_store, monkeypatch):
    assert tick_at(fleet_store, monkeypatch, 1).decision == "idle"
    set_now(monkeypatch, hours(0))
    fleet_store.start_rollout(f"{MODEL}@v1.1.0", actor="jane")
    before = fleet_store.state(MODEL).id
    nothing = tick_at(fleet_store, monkeypatch, 0.99)
    assert nothing.decision == "nothing" and nothing.state is None and fleet_store.state(MODEL).id == before
    report(fleet_store, 1)
    assert tick_at(fleet_store, monkeypatch, 1.5).decision == "hold"
    measured = fleet_store.state(MODEL).id
    assert tick_at(fleet_store, monkeypatch, 1.5).decision == "nothing", "a window is measured once"
    assert fleet_store.state(MODEL).id == measured


def test_missed_ticks_measure_every_window_in_order(fleet_store, monkeypatch):
    fleet_store.start_rollout(f"{MODEL}@v1.1.0", actor="jane")
    for hour in (1, 2):
        report(fleet_store, hour)
    caught_up = tick_at(fleet_store, monkeypatch, 2.5)
    assert caught_up.decision == "advance" and [m["window"] for m in caught_up.measured] == [0, 1]
    chain = measurements(fleet_store.registry, fleet_store.state(MODEL).rollout["measurement"])
    assert [m["window"] for m in chain] == [1, 0] and chain[0]["previous"] == chain[1]["id"]


def test_start_requires_gate_and_review_under_a_policy(store, tmp_path, monkeypatch):
    push_versions(store, tmp_path)
    store.promote(f"{MODEL}@v1.0.0", actor="jane")
    with_policy(store, tmp_path, "{}")
    with pytest.raises(Refused, match="may not become canary under its policy: no gate result"):
        store.start_rollout(f"{MODEL}@v1.1.0", actor="jane")
    assert store.state(MODEL).rollout is None
    forced = store.start_rollout(f"{MODEL}@v1.1.0", actor="jane", reason="hotfix", force=True)
    assert "no review" in forced.entries[0].override and forced.rollout["version"] == "v1.1.0"


def test_start_is_refused_when_it_cannot_run(fleet_store, tmp_path):
    with pytest.raises(InvalidParameter, match="production already"):
        fleet_store.start_rollout(f"{MODEL}@v1.0.0")
    fleet_store.start_rollout(f"{MODEL}@v1.1.0")
    with pytest.raises(InvalidParameter, match="already rolling out v1.1.0"):
        fleet_store.start_rollout(f"{MODEL}@v1.1.0")
    with pytest.raises(InvalidParameter, match="needs a --reason"):
        fleet_store.abort_rollout(MODEL)
    with pytest.raises(InvalidParameter, match="is not paused"):
        fleet_store.resume_rollout(MODEL)


def test_the_canary_is_not_moved_by_hand_during_a_rollout_and_moves_outside_end_it(fleet_store, monkeypatch):
    fleet_store.start_rollout(f"{MODEL}@v1.1.0", actor="jane")
    with pytest.raises(Refused, match="driven by the rollout of v1.1.0"):
        fleet_store.set_canary(f"{MODEL}@v1.1.0", 60)
    fleet_store.set_canary(f"{MODEL}@v1.1.0", 0, reason="by hand", force=True)
    ended = tick_at(fleet_store, monkeypatch, 0.5)
    assert ended.decision == "abort" and "the canary was ended outside the rollout" in ended.note
    assert fleet_store.state(MODEL).rollout is None

    fleet_store.start_rollout(f"{MODEL}@v1.1.0", actor="jane")
    fleet_store.set_canary(f"{MODEL}@v1.1.0", 100, reason="all of it now", force=True)
    report(fleet_store, 1)
    resized = tick_at(fleet_store, monkeypatch, 1)
    assert resized.decision == "abort" and "set to 100% outside the rollout (its step 1 is at 10%)" in resized.note
    assert fleet_store.state(MODEL).rollout is None and fleet_store.state(MODEL).canary is None

    fleet_store.start_rollout(f"{MODEL}@v1.1.0", actor="jane")
    fleet_store.promote(f"{MODEL}@v1.1.0", actor="jane", reason="skip the rest")
    done = tick_at(fleet_store, monkeypatch, 1.1)
    assert done.decision == "complete" and "promoted outside the rollout" in done.note
    assert fleet_store.state(MODEL).rollout is None and fleet_store.state(MODEL).canary is None


def test_a_canary_failing_a_metric_production_did_not_report_does_not_complete(store, tmp_path, monkeypatch):
    push_versions(store, tmp_path)
    with_policy(store, tmp_path, """\
gate: {required: false}
review: {required: false}
canary:
  steps: [{percent: 10, hold: 1h}, {percent: 100}]
  analysis: {interval: 1h, metrics: {quality: {max_drop: 0.03, missing: fail}}}
""")
    set_now(monkeypatch, hours(0))
    store.promote(f"{MODEL}@v1.0.0", actor="jane", reason="launch")
    store.start_rollout(f"{MODEL}@v1.1.0", actor="jane", reason="retrain")
    window = {"node": "srv-1", "start": hours(0).isoformat(), "end": hours(1).isoformat(), "errors": 0}
    store.record_metrics(MODEL, [window | {"version": "v1.1.0", "requests": 300,
                                           "scores": {"quality": {"mean": 0.10, "count": 300}}},
                                 window | {"version": "v1.0.0", "requests": 900}])  # production unscored
    ticked = tick_at(store, monkeypatch, 1)
    assert [m["outcome"] for m in ticked.measured] == ["fail"] and ticked.decision == "hold"
    assert store.state(MODEL).pointer("production") == "v1.0.0"


def test_a_canary_percent_changed_outside_the_rollout_ends_it():
    state = ModelState(ModelName.parse(MODEL), pointers={"production": "v1.0.0"},
                       canary={"version": "v1.1.0", "percent": 100})
    assert interference(STARTED, state, PLAN) == (
        "abort", "the canary was set to 100% outside the rollout (its step 1 is at 10%)")
    at_its_step = ModelState(ModelName.parse(MODEL), pointers={"production": "v1.0.0"},
                             canary={"version": "v1.1.0", "percent": 10})
    assert interference(STARTED, at_its_step, PLAN) is None


def test_production_moved_away_and_back_outside_the_rollout_ends_it():
    """A promote then a rollback between two ticks leave production's version as it was; the
    windows since were measured beside another production, so the rollout ends all the same."""
    at_its_step = {"version": "v1.1.0", "percent": 10}
    started = replace(STARTED, production_deployed=timestamp(hours(-1)))
    deployed_before = ModelState(ModelName.parse(MODEL), pointers={"production": "v1.0.0"}, canary=at_its_step,
                                 deployments={"v1.0.0": {"at": timestamp(hours(-1)), "by": "jane"}})
    assert interference(started, deployed_before, PLAN) is None
    back_since = replace(deployed_before, deployments={"v1.0.0": {"at": timestamp(hours(0.5)), "by": "ops"}})
    assert interference(STARTED, back_since, PLAN) is None, "a rollout started before it was kept: not known"
    assert interference(started, back_since, PLAN) == (
        "abort", f"production moved away from v1.0.0 and back outside the rollout, at {timestamp(hours(0.5))}: "
                 "the windows measured since it started compared another production")


def test_an_empty_output_histogram_has_no_psi_and_the_window_does_not_report_it():
    analysis = CanaryAnalysis.model_validate({"min_requests": 1, "metrics": {"output_psi": {"ceiling": 0.2}}})
    canary = Traffic(requests=100, outputs={"short": 90, "long": 10})
    for production in (Traffic(requests=100, outputs={"short": 0, "long": 0}), Traffic(requests=100)):
        judged = judge(analysis, canary, production)
        assert "output_psi" not in [m.metric for m in judged.metrics]


class PowerCut(BaseException):
    """Stops a command between two writes, as kill -9 would."""


def _rollout_steps(store, monkeypatch):
    """A whole rollout of the fast plan, one command at a time: (name, run)."""
    def at(hour, then):
        def run(current):
            set_now(monkeypatch, hours(hour))
            return then(current)
        return run

    return [("start", at(0, lambda s: s.start_rollout(f"{MODEL}@v1.1.0", actor="jane", reason="go"))),
            ("report 1", at(1, lambda s: report(s, 1))),
            ("tick 1: hold", at(1, lambda s: s.rollout_tick(MODEL, actor="cron"))),
            ("report 2", at(2, lambda s: report(s, 2))),
            ("tick 2: advance", at(2, lambda s: s.rollout_tick(MODEL, actor="cron"))),
            ("report 3 and 4", at(4, lambda s: (report(s, 3), report(s, 4)))),
            ("tick 4: complete", at(4, lambda s: s.rollout_tick(MODEL, actor="cron")))]


def test_a_kill_between_any_two_writes_leaves_a_state_the_next_command_continues_from(fleet_store, tmp_path,
                                                                                    monkeypatch):
    """Run the whole rollout once counting each command's writes; then, for every command and every
    write, stop the command just before that write, run it again on the copy, and finish the rollout:
    the end is byte for byte the uninterrupted one's."""
    write = LocalBackend.write  # every object, and the ref too: swap_ref writes it with write, under its lock
    start = tmp_path / "start"
    shutil.copytree(fleet_store.path, start)
    writes = []
    for name, run in _rollout_steps(fleet_store, monkeypatch):
        count = [0]
        monkeypatch.setattr(LocalBackend, "write", lambda b, k, d: (count.__setitem__(0, count[0] + 1), write(b, k, d)))
        run(Store(fleet_store.path))
        writes.append(count[0])
    monkeypatch.setattr(LocalBackend, "write", write)
    assert writes == [2, 1, 3, 1, 3, 2, 4]  # measurements, then the state, then the ref
    expected = (fleet_store.path / "registry/refs/acme/support.json").read_bytes()
    assert fleet_store.state(MODEL).pointer("production") == "v1.1.0"

    steps = _rollout_steps(fleet_store, monkeypatch)
    for index, (name, run) in enumerate(steps):
        for cut in range(writes[index]):
            copy = tmp_path / f"cut-{index}-{cut}"
            shutil.copytree(start, copy)
            for _, earlier in steps[:index]:
                earlier(Store(copy))
            done = [0]

            def cut_write(backend, key, data, cut=cut, done=done):
                if done[0] == cut:
                    raise PowerCut
                done[0] += 1
                write(backend, key, data)

            monkeypatch.setattr(LocalBackend, "write", cut_write)
            with pytest.raises(PowerCut):
                run(Store(copy))
            monkeypatch.setattr(LocalBackend, "write", write)
            assert Store(copy).verify().ok, (name, cut)
            for _, rest in steps[index:]:
                rest(Store(copy))
            assert (copy / "registry/refs/acme/support.json").read_bytes() == expected, (name, cut)
            shutil.rmtree(copy)


RACER = textwrap.dedent("""
    import json, sys, time
    from artifactstore import Store
    store, go = Store(sys.argv[1]), float(sys.argv[2])
    while time.time() < go:
        pass
    print(json.dumps([store.rollout_tick("acme/support", actor=sys.argv[3]).decision for _ in range(3)]))
""")


def test_racing_ticks_from_two_processes_advance_exactly_once(fleet_store, monkeypatch):
    fleet_store.start_rollout(f"{MODEL}@v1.1.0", actor="jane")
    report(fleet_store, 1)
    report(fleet_store, 2)
    set_now(monkeypatch, hours(2))
    go = time.time() + 1.5
    racers = [subprocess.Popen([sys.executable, "-c", RACER, str(fleet_store.path), str(go), f"cron-{i}"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
              for i in range(2)]
    decisions = []
    for racer in racers:
        out, err = racer.communicate(timeout=120)
        assert racer.returncode == 0, err
        decisions += json.loads(out)
    assert sorted(decisions) == ["advance"] + ["nothing"] * 5
    log = fleet_store.log(MODEL)
    assert [e.action for e in log].count("rollout-step") == 1
    assert [e.action for e in log].count("rollout-measure") == 1
    assert fleet_store.state(MODEL).rollout["step"] == 1 and fleet_store.verify().ok


# -- metrics records and the command line --------------------------------------------------------


def test_metrics_records_are_checked_before_anything_is_written(fleet_store):
    before = snapshot(fleet_store.path)
    good = {"version": "v1.1.0", "node": "srv-1", "start": "2026-11-26T00:00:00Z", "end": "2026-11-26T01:00:00Z",
            "requests": 10}
    with pytest.raises(NotFound, match="has no version v9.0.0"):
        fleet_store.record_metrics(MODEL, [good, good | {"version": "v9.0.0"}])
    with pytest.raises(InvalidInput, match="record 2: requests: Input should be a valid integer"):
        fleet_store.record_metrics(MODEL, [good, good | {"requests": "10"}])
    with pytest.raises(InvalidInput, match="11 errors in 10 requests"):
        fleet_store.record_metrics(MODEL, [good | {"errors": 11}])
    with pytest.raises(InvalidInput, match="end must follow start"):
        fleet_store.record_metrics(MODEL, [good | {"end": "2026-11-25T23:00:00Z"}])
    assert snapshot(fleet_store.path) == before
    stored = fleet_store.record_metrics(MODEL, [good])
    assert fleet_store.record_metrics(MODEL, [good]) == stored, "the same report is stored once"


def test_metrics_records_refuse_values_that_are_not_finite(fleet_store):
    before = snapshot(fleet_store.path)
    good = {"version": "v1.1.0", "node": "srv-1", "start": "2026-11-26T00:00:00Z", "end": "2026-11-26T01:00:00Z",
            "requests": 10}
    with pytest.raises(InvalidInput, match="record 1: scores.quality.mean: Value error, nan is not a finite number"):
        fleet_store.record_metrics(MODEL, [good | {"scores": {"quality": {"mean": math.nan, "count": 10}}}])
    with pytest.raises(InvalidInput, match="record 1: latency_ms.p95: Value error, inf is not a finite number"):
        fleet_store.record_metrics(MODEL, [good | {"latency_ms": {"p95": math.inf}}])
    assert snapshot(fleet_store.path) == before


def test_a_batch_stored_with_a_nan_score_fails_the_metric_it_holds(fleet_store, tmp_path, monkeypatch):
    """A batch written before non-finite values were refused is still read, and its NaN fails the metric
    instead of passing every threshold (each comparison with NaN is False)."""
    with_policy(fleet_store, tmp_path, FAST_POLICY.replace("min_requests: 100}",
                                                           "min_requests: 100, metrics: {quality: {floor: 0.8}}}"))
    fleet_store.start_rollout(f"{MODEL}@v1.1.0", actor="jane")
    window = {"node": "srv-1", "start": timestamp(hours(0)), "end": timestamp(hours(1)), "errors": 0, "latency_ms": {},
              "outputs": {}}
    records = [window | {"version": "v1.1.0", "requests": 300, "scores": {"quality": {"mean": math.nan, "count": 300}}},
               window | {"version": "v1.0.0", "requests": 900, "scores": {"quality": {"mean": 0.95, "count": 900}}}]
    encoded = canonical_json({"kind": "metrics-batch", "model": MODEL, "records": records})
    digest = blake3.blake3(encoded, derive_key_context=METRICS_CONTEXT).hexdigest()
    fleet_store.registry.backend.write(f"metrics/{MODEL}/{hours(1):%Y-%m-%dT%H}/{digest}.json", encoded)
    ticked = tick_at(fleet_store, monkeypatch, 1)
    assert ticked.measured[0]["outcome"] == "fail"
    assert "quality the candidate's value is nan, not a finite number" in ticked.measured[0]["note"]


def test_a_write_that_stored_its_batch_and_then_failed_is_counted_once(fleet_store, monkeypatch):
    """The records of a failed write are written again alone, as the same batch: merged with the next
    take's they would be another batch, and a write that had stored its batch (an answer lost on the
    way back) would count them twice."""
    backend, write = fleet_store.registry.backend, fleet_store.registry.backend.write

    def stored_then_timed_out(key, data):
        write(key, data)
        raise TimeoutError("the PUT's answer did not come back")

    collector = MetricsCollector("srv-1")
    for _ in range(100):
        collector.observe("v1.0.0", 20.0)
    monkeypatch.setattr(backend, "write", stored_then_timed_out)
    set_now(monkeypatch, hours(0.25))
    with pytest.raises(TimeoutError):
        collector.flush(lambda records: fleet_store.record_metrics(MODEL, records))
    monkeypatch.setattr(backend, "write", write)
    for _ in range(50):
        collector.observe("v1.0.0", 20.0)
    set_now(monkeypatch, hours(0.5))
    assert collector.flush(lambda records: fleet_store.record_metrics(MODEL, records)) == 2
    found, _ = records_in_window(fleet_store.registry, ModelName.parse(MODEL), hours(0), hours(1))
    assert aggregate(found)["v1.0.0"].requests == 150


def test_failed_writes_are_kept_whole_up_to_the_limit(fleet_store, monkeypatch):
    """Part of a failed write would be another batch: what a long outage drops is whole writes, the oldest."""
    backend, write = fleet_store.registry.backend, fleet_store.registry.backend.write

    def unreachable(key, data):
        raise OSError("the store is out of reach")

    monkeypatch.setattr(metrics, "UNWRITTEN_LIMIT", 3)
    monkeypatch.setattr(backend, "write", unreachable)
    collector = MetricsCollector("srv-1")
    for minute in (10, 20):  # two failed writes of two records each: only the newest fits the limit
        collector.observe("v1.0.0", 20.0)
        collector.observe("v1.1.0", 20.0)
        set_now(monkeypatch, hours(minute / 60))
        with pytest.raises(OSError):
            collector.flush(lambda records: fleet_store.record_metrics(MODEL, records))
    monkeypatch.setattr(backend, "write", write)
    assert collector.flush(lambda records: fleet_store.record_metrics(MODEL, records)) == 2
    found, _ = records_in_window(fleet_store.registry, ModelName.parse(MODEL), hours(0), hours(1))
    assert sorted((r.version, r.end) for r in found) == [("v1.0.0", timestamp(hours(1 / 3))),
                                                          ("v1.1.0", timestamp(hours(1 / 3)))]


def test_cli_rollout_commands_and_one_line_errors(fleet_store, monkeypatch):
    env = {"ARTIFACTSTORE_STORE": str(fleet_store.path), "ARTIFACTSTORE_ACTOR": "jane@agency",
           "ARTIFACTSTORE_NOW": hours(0).isoformat()}
    started = run_cli("rollout", "start", f"{MODEL}@v1.1.0", "--reason", "monthly", env=env)
    assert started.returncode == 0 and "acme/support@canary: - -> v1.1.0 (10%)" in started.stdout
    lines = "".join(json.dumps({"version": v, "node": "srv-1", "start": hours(0).isoformat(),
                                "end": hours(1).isoformat(), "requests": n, "errors": 1,
                                "latency_ms": {"p95": 250}}) + "\n"
                    for v, n in (("v1.1.0", 200), ("v1.0.0", 1800)))
    recorded = run_cli("metrics", "record", MODEL, "--from", "-", "--json", input=lines, env=env)
    assert recorded.returncode == 0 and json.loads(recorded.stdout)["records"] == 2
    bad = run_cli("metrics", "record", MODEL, "--from", "-", input='{"version": "v1.1.0"}\nnot json\n', env=env)
    assert bad.returncode == 1 and len(bad.stderr.splitlines()) == 1
    assert "stdin line 1: node: Field required" in bad.stderr and "stdin line 2: not valid JSON" in bad.stderr
    ticked = run_cli("rollout", "tick", MODEL, "--json", env=env | {"ARTIFACTSTORE_NOW": hours(1).isoformat()})
    assert json.loads(ticked.stdout)["decision"] == "hold"
    status = run_cli("rollout", "status", MODEL, env=env)
    assert "step 1 of 3: canary at 10%" in status.stdout and "window 0: PASS" in status.stdout
    assert json.loads(run_cli("rollout", "status", MODEL, "--json", env=env).stdout)["rollout"]["windows"] == 1
    assert run_cli("rollout", "pause", MODEL, "--reason", "weekend", env=env).returncode == 0
    again = run_cli("rollout", "pause", MODEL, "--reason", "weekend", env=env)
    assert again.returncode == 1 and again.stderr == "error: acme/support's rollout of v1.1.0 is paused already\n"
    assert run_cli("rollout", "resume", MODEL, env=env).returncode == 0
    aborted = run_cli("rollout", "abort", MODEL, "--reason", "changed our mind", "--json", env=env)
    assert json.loads(aborted.stdout)["canary"] is None
    watched = run_cli("rollout", "watch", "--count", "1", "--interval", "0.01", env=env)
    assert watched.returncode == 0 and watched.stdout == ""
    none = run_cli("rollout", "status", MODEL, env=env)
    assert "no rollout in progress" in none.stdout and "last rollout: v1.1.0 aborted" in none.stdout


def test_hooks_fire_for_every_rollout_event(fleet_store, tmp_path, monkeypatch):
    receiver = Receiver()
    try:
        with_policy(fleet_store, tmp_path, FAST_POLICY + f"hooks:\n  - {{name: ops, url: '{receiver.url}'}}\n")
        fleet_store.start_rollout(f"{MODEL}@v1.1.0", actor="jane", reason="go")
        fleet_store.pause_rollout(MODEL, actor="jane", reason="holiday")
        fleet_store.resume_rollout(MODEL, actor="jane")
        set_now(monkeypatch, hours(0))
        for hour in (1, 2, 3, 4):
            report(fleet_store, hour)
            tick_at(fleet_store, monkeypatch, hour)
        fleet_store.start_rollout(f"{MODEL}@v1.0.0", actor="jane", reason="back again")
        report(fleet_store, 5, version="v1.0.0", baseline="v1.1.0", canary=(300, 90, 300.0))
        report(fleet_store, 6, version="v1.0.0", baseline="v1.1.0", canary=(300, 90, 300.0))
        tick_at(fleet_store, monkeypatch, 6)
    finally:
        receiver.close()
    assert receiver.events() == ["canary_started", "canary_paused", "canary_resumed", "canary_advanced",
                                 "canary_completed", "canary_started", "canary_aborted"]
    events = [r["event"] for r in receiver.received]
    assert events[0]["percent"] == 10 and events[3]["percent"] == 50
    assert events[4]["version"] == "v1.1.0" and events[4]["from"] == "v1.0.0"
    assert len(events[6]["evidence"]["measurements"]) == 2 and "error_rate rose" in events[6]["reason"]


# -- retention ------------------------------------------------------------------------------------

def metrics_keys(store) -> list[str]:
    return sorted(store.backend.list(f"metrics/{MODEL}"))


def test_gc_expires_telemetry_older_than_its_retention_except_what_a_running_rollout_may_measure(
        fleet_store, monkeypatch):
    def window(hour: float, version: str = "v1.0.0") -> dict:
        return {"node": "srv-1", "start": hours(hour).isoformat(), "end": hours(hour + 1).isoformat(),
                "version": version, "requests": 100, "errors": 0}

    fleet_store.start_rollout(f"{MODEL}@v1.1.0", actor="jane")  # at hour 0
    fleet_store.record_metrics(MODEL, [window(0), window(0, "v1.1.0")])
    fleet_store.record_metrics(MODEL, [window(24 * 40)])
    fleet_store.record_metrics(MODEL, [{"node": "srv-1", "start": "9999-12-30T23:30:00Z", "end": "9999-12-31T23:30:00Z",
                                        "version": "v1.0.0", "requests": 1, "errors": 0}])  # a wrong clock's
    for node, silent_days in (("srv-gone", 40), ("srv-1", 0)):
        key = f"fleet/{MODEL}/{node}.json"
        fleet_store.backend.write(key, b"{}")  # what a heartbeat holds does not matter: when it was written does
        written = time.time() - silent_days * 86400
        os.utime(fleet_store.path / key, (written, written))
    set_now(monkeypatch, hours(24 * 41))
    with pytest.raises(InvalidParameter, match="too short: a canary analysis reads up to a day back"):
        fleet_store.gc(keep_telemetry="1d")
    kept = fleet_store.gc(keep_telemetry="30d")
    assert kept.expired_metrics_batches == 0, "the rollout started at hour 0 may still measure its first windows"
    assert kept.forgotten_nodes == [f"{MODEL} srv-gone"]
    assert not fleet_store.backend.exists(f"fleet/{MODEL}/srv-gone.json")
    assert fleet_store.backend.exists(f"fleet/{MODEL}/srv-1.json")

    fleet_store.abort_rollout(MODEL, actor="jane", reason="superseded")
    before = metrics_keys(fleet_store)
    dry = fleet_store.gc(keep_telemetry="30d", dry_run=True)
    assert dry.expired_metrics_batches == 1 and metrics_keys(fleet_store) == before
    cli = run_cli("gc", "--keep-telemetry", "30d", "--store", fleet_store.path,
                  env={"ARTIFACTSTORE_NOW": hours(24 * 41).isoformat()})
    assert cli.returncode == 0 and "expire: 1 metrics batches older than 30d; forget 0 nodes" in cli.stdout
    assert [k.split("/")[3] for k in metrics_keys(fleet_store)] == [hours(24 * 40 + 1).strftime("%Y-%m-%dT%H"),
                                                                    "9999-12-31T23"]
    assert fleet_store.verify().ok

"""The eval gate: every verdict of the pure computation, and the recorded result where it is shown."""

import json
import math
from dataclasses import replace

import pytest
import yaml
from conftest import reuse_deleted_number, run_cli, snapshot

from artifactstore import InvalidInput, InvalidParameter, Refused
from artifactstore.demo import adapter_history, write_bundle
from artifactstore.registry.bundle import metric_values
from artifactstore.registry.checks import missing_checks
from artifactstore.registry.gate import direction_of, evaluate
from artifactstore.registry.policy import GateSection

HISTORY = adapter_history(layers=2, scale=16)  # v1.0.0 … v1.2.1, tiny tensors
BY_NAME = {v.name: v for v in HISTORY}
SEED_PRODUCTION = {"accuracy": 0.958, "hallucination_rate": 0.014}
SEED_REGRESSION = {"accuracy": 0.910, "hallucination_rate": 0.050}  # the numbers


def push(store, tmp_path, name: str, scores: dict, model: str = "acme/support") -> str:
    """Push history version ``name`` of ``model`` with ``scores`` as its eval results."""
    bundle = write_bundle(replace(BY_NAME[name], eval_results=scores), tmp_path / "bundles" / model / name)
    return store.push(bundle, f"{model}@{name}", actor="ci@agency").ref


def gate_of(settings: dict | None, production: dict | None, candidate: dict, accepted: dict | None = None) -> dict:
    checks = evaluate(GateSection.model_validate(settings or {}), production, candidate, accepted)
    return {c.metric: c for c in checks}


# -- the computation -----------------------------------------------------------------------------


@pytest.mark.parametrize("before, after, verdict, note", [
    (0.958, 0.950, "pass", "within the 2 points allowed"),
    (0.958, 0.938, "pass", "within the 2 points allowed"),  # exactly at the limit, whatever floats say
    (0.958, 0.937, "fail", "dropped 2.1 points, more than the 2 points allowed"),
    (0.958, 0.910, "fail", "dropped 4.8 points, more than the 2 points allowed"),
    (0.942, 0.958, "pass", "within the 2 points allowed"),  # better
    (95.8, 94.0, "pass", "within the 2 points allowed"),  # a rate written in percent
    (95.8, 91.0, "fail", "dropped 4.8 points, more than the 2 points allowed"),
])
def test_a_higher_is_better_rate_may_drop_two_points(before, after, verdict, note):
    check = gate_of(None, {"accuracy": before}, {"accuracy": after})["accuracy"]
    assert (check.verdict, check.note, check.direction) == (verdict, note, "higher")
    assert check.change == pytest.approx(after - before)


@pytest.mark.parametrize("before, after, verdict", [
    (0.014, 0.050, "fail"), (0.014, 0.033, "pass"), (0.014, 0.035, "fail"), (0.021, 0.014, "pass")])
def test_a_lower_is_better_metric_fails_when_it_rises(before, after, verdict):
    check = gate_of(None, {"hallucination_rate": before}, {"hallucination_rate": after})["hallucination_rate"]
    assert check.direction == "lower" and check.verdict == verdict
    if verdict == "fail":
        assert check.note.startswith("rose ")


def test_the_seed_regression_fails_on_both_metrics():
    checks = gate_of(None, SEED_PRODUCTION, SEED_REGRESSION)
    assert checks["accuracy"].note == "dropped 4.8 points, more than the 2 points allowed"
    assert checks["hallucination_rate"].note == "rose 3.6 points, more than the 2 points allowed"
    assert checks["accuracy"].allowed == pytest.approx(0.02) and checks["accuracy"].scale == "fraction"


@pytest.mark.parametrize("name, direction", [
    ("accuracy", "higher"), ("hallucination_rate", "lower"), ("latency_p95_ms", "lower"), ("eval_loss", "lower"),
    ("error_rate", "lower"), ("errors", "lower"), ("toxicity", "lower"), ("avg_response_time_s", "lower"),
    ("avgResponseTime", "lower"), ("timeliness", "higher"), ("latency.p95", "lower"), ("suites.refunds.f1", "higher"),
    ("perplexity", "lower"), ("bleu", "higher")])
def test_direction_from_the_name(name, direction):
    assert direction_of(name) == direction


def test_the_policy_sets_direction_limits_floors_and_ceilings():
    settings = {"metrics": {
        "time_saved": {"direction": "higher"},
        "latency_ms": {"max_drop": 50},
        "tokens_per_s": {"max_drop_percent": 10},
        "accuracy": {"max_drop_points": 0.5, "floor": 0.9},
        "hallucination_rate": {"ceiling": 0.03},
        "score": {"scale": "percent"}}}
    before = {"time_saved": 10, "latency_ms": 1300, "tokens_per_s": 200, "accuracy": 0.95, "hallucination_rate": 0.02,
              "score": 0.9}
    checks = gate_of(settings, before, {"time_saved": 9, "latency_ms": 1360, "tokens_per_s": 181, "accuracy": 0.946,
                                        "hallucination_rate": 0.031, "score": 0.2})
    assert checks["time_saved"].direction == "higher" and checks["time_saved"].verdict == "pass"  # 1 point down
    assert checks["latency_ms"].verdict == "fail" and checks["latency_ms"].allowed == 50
    assert checks["tokens_per_s"].verdict == "pass" and checks["tokens_per_s"].allowed == pytest.approx(20)
    assert checks["accuracy"].verdict == "pass" and checks["accuracy"].allowed == pytest.approx(0.005)
    assert checks["hallucination_rate"].verdict == "fail"
    assert checks["hallucination_rate"].note == "above the ceiling of 0.03"  # +1.1 points is within the limit
    assert checks["score"].verdict == "pass"  # written in percent: 0.7 points
    below_floor = gate_of(settings, before, {**before, "accuracy": 0.899})["accuracy"]
    assert below_floor.verdict == "fail" and "below the floor of 0.9" in below_floor.note


@pytest.mark.parametrize("metric, production, slightly_worse, much_worse", [
    ("eval_loss", 0.6, 0.65, 2.5), ("avg_response_time_s", 0.8, 0.9, 2.7)])
def test_the_scale_is_read_from_production_so_a_much_worse_candidate_fails_too(metric, production, slightly_worse,
                                                                               much_worse):
    for candidate in (slightly_worse, much_worse):
        check = gate_of(None, {metric: production}, {metric: candidate})[metric]
        assert (check.verdict, check.scale) == ("fail", "fraction") and check.allowed == pytest.approx(0.02)


@pytest.mark.parametrize("metric, sign", [("eval_loss", 1), ("accuracy", -1)])
@pytest.mark.parametrize("production", [0.3, 0.6, 1.0, 5.0, 50.0, 99.5, 150.0])
def test_a_bigger_regression_never_passes_where_a_smaller_one_fails(metric, sign, production):
    worsenings = [0.005, 0.01, 0.05, 0.5, 1.0, 1.9, 2.5, 5.0, 50.0, 200.0]
    candidates = [production + sign * w for w in worsenings if production + sign * w >= 0]
    verdicts = [gate_of(None, {metric: production}, {metric: c})[metric].verdict for c in candidates]
    assert verdicts == sorted(verdicts, key=lambda verdict: verdict == "fail"), list(zip(candidates, verdicts))


def test_points_of_a_value_that_is_not_a_rate_count_as_percent_of_production():
    assert gate_of(None, {"latency_ms": 1300}, {"latency_ms": 1326})["latency_ms"].verdict == "pass"  # +2.0 %
    failed = gate_of(None, {"latency_ms": 1300}, {"latency_ms": 1400})["latency_ms"]
    assert failed.verdict == "fail" and failed.scale is None and failed.note == "rose 100, more than the 26 allowed"


def test_defaults_apply_to_every_metric_a_rule_does_not_settle():
    settings = {"defaults": {"max_drop_points": 5}, "metrics": {"accuracy": {"max_drop_points": 1}}}
    checks = gate_of(settings, {"accuracy": 0.95, "f1": 0.95}, {"accuracy": 0.93, "f1": 0.91})
    assert checks["accuracy"].verdict == "fail" and checks["f1"].verdict == "pass"


def test_a_missing_metric_fails_unless_the_policy_says_otherwise():
    production = {"accuracy": 0.95, "f1": 0.9}
    missing = gate_of(None, production, {"accuracy": 0.95})["f1"]
    assert missing.verdict == "fail" and missing.note == "missing from the candidate's eval results"
    listed = gate_of({"metrics": {"rouge": {}}}, production, production)["rouge"]  # listed, measured by neither
    assert listed.verdict == "fail"
    assert gate_of({"metrics": {"f1": {"missing": "pass"}}}, production, {"accuracy": 0.95})["f1"].verdict == "pass"
    assert gate_of({"defaults": {"missing": "pass"}}, production, {"accuracy": 0.95})["f1"].verdict == "pass"
    ignored = gate_of({"unlisted": "ignore", "metrics": {"accuracy": {}}}, production, {"accuracy": 0.95})
    assert list(ignored) == ["accuracy"]


def test_new_metrics_and_a_first_release_pass_unless_below_a_floor():
    new = gate_of(None, {"accuracy": 0.95}, {"accuracy": 0.95, "f1": 0.1})["f1"]
    assert new.verdict == "pass" and new.note == "new: production has no such metric"
    first = gate_of({"metrics": {"accuracy": {"floor": 0.9}}}, None, {"accuracy": 0.85, "f1": 0.1})
    assert first["f1"].note == "no production version to compare with" and first["f1"].verdict == "pass"
    assert first["accuracy"].verdict == "fail"


@pytest.mark.parametrize("production, candidate, note", [
    (0.95, math.nan, "the candidate's value is nan, not a finite number"),
    (0.95, math.inf, "the candidate's value is inf, not a finite number"),
    (math.nan, 0.95, "production's value is nan, not a finite number to compare with"),
    (-math.inf, 0.95, "production's value is -inf, not a finite number to compare with"),
])
def test_a_value_that_is_not_a_finite_number_fails_its_metric(production, candidate, note):
    """Every comparison with NaN is False: without this rule a failed measurement passed any floor and limit."""
    settings = {"metrics": {"accuracy": {"floor": 0.9, "ceiling": 1.0, "max_drop_points": 1}}}
    check = gate_of(settings, {"accuracy": production}, {"accuracy": candidate})["accuracy"]
    assert (check.verdict, check.note, check.change) == ("fail", note, None)


def test_nested_results_are_addressed_by_dotted_path():
    production = {"accuracy": 0.958, "suites": {"refunds": {"accuracy": 0.93}, "bundles": {"accuracy": 0.85}}}
    candidate = {"accuracy": 0.962, "suites": {"refunds": {"accuracy": 0.96}, "bundles": {"accuracy": 0.81}}}
    assert metric_values(candidate) == {"accuracy": 0.962, "suites.refunds.accuracy": 0.96,
                                        "suites.bundles.accuracy": 0.81}
    settings = {"metrics": {"suites.refunds.accuracy": {"floor": 0.95}}}
    checks = gate_of(settings, metric_values(production), metric_values(candidate))
    assert {m: c.verdict for m, c in checks.items()} == {
        "accuracy": "pass", "suites.bundles.accuracy": "fail", "suites.refunds.accuracy": "pass"}


def test_an_accepted_trade_off_turns_a_failure_into_accepted_and_nothing_else():
    acceptance = {"by": "jane", "at": "2026-03-10T10:00:00Z", "reason": "bundles regress; fixed next retrain"}
    checks = gate_of(None, SEED_PRODUCTION, {"accuracy": 0.962, "hallucination_rate": 0.050},
                     {"hallucination_rate": acceptance, "accuracy": acceptance})
    assert checks["hallucination_rate"].verdict == "accepted" and checks["hallucination_rate"].accepted == acceptance
    assert checks["accuracy"].verdict == "pass" and checks["accuracy"].accepted is None


# -- eval_results.json may be nested --------------------------------------------------------------


@pytest.mark.parametrize("results, message", [
    ({"accuracy": "high"}, "eval_results.json: accuracy: text, not a number or a mapping of numbers"),
    ({"suite": {"qa": {"f1": True}}}, "eval_results.json: suite.qa.f1: a bool, not a number"),
    ({"suite": {"qa": [0.9]}}, "eval_results.json: suite.qa: a list, not a number"),
    ({"suite.qa": 0.9, "suite": {"qa": 0.8}}, "eval_results.json: suite.qa: named twice"),
])
def test_eval_results_hold_numbers_or_mappings_of_numbers(store, tmp_path, results, message):
    before = snapshot(store.path)
    with pytest.raises(InvalidInput, match=message.replace(".", r"\.")):
        push(store, tmp_path, "v1.0.0", results)
    assert snapshot(store.path) == before


# -- recorded, shown, exit status ----------------------------------------------------------------


@pytest.fixture
def regression(store, tmp_path):
    """acme/support: v1.0.0 in production with the seed's scores, v1.1.0 the seed's regression."""
    push(store, tmp_path, "v1.0.0", SEED_PRODUCTION)
    store.promote("acme/support@v1.0.0", actor="jane", reason="launch")
    push(store, tmp_path, "v1.1.0", SEED_REGRESSION)
    return store


def test_the_gate_result_is_recorded_and_shown_everywhere(regression):
    result = regression.gate("acme/support@v1.1.0", actor="ci@agency")
    assert result.verdict == "fail" and result.failed() == ["accuracy", "hallucination_rate"]
    assert result.production == "v1.0.0" and result.policy is None and result.id.startswith("b3:")
    entry = regression.log("acme/support")[-1]
    assert (entry.action, entry.pointer, entry.from_, entry.to, entry.actor) == \
        ("gate", None, "v1.0.0", "v1.1.0", "ci@agency")
    assert entry.reason == "failed: accuracy, hallucination_rate"
    shown = regression.show("acme/support@v1.1.0")["gate"]
    assert shown["verdict"] == "fail" and shown["id"] == result.id and shown["failed"] == result.failed()
    assert regression.diff("acme/support@v1.0.0", "acme/support@v1.1.0")["gate"]["verdict"] == "fail"
    assert "**Evaluation gate:** failed against v1.0.0" in regression.changelog("acme/support@v1.0.0",
                                                                               "acme/support@v1.1.0")
    exported = yaml.safe_load(regression.export_registry())["clients"]["acme"]["models"]["support"]
    assert exported["gate"] == {"v1.1.0": "fail"} and "policy" not in exported
    assert regression.verify().ok


def test_a_trade_off_is_accepted_with_a_reason_and_carried_to_a_rerun(store, tmp_path):
    production = {"accuracy": 0.958, "suites": {"bundles": {"accuracy": 0.85}}}
    push(store, tmp_path, "v1.0.0", production)
    store.promote("acme/support@v1.0.0", actor="jane", reason="launch")
    push(store, tmp_path, "v1.1.0", {"accuracy": 0.962, "suites": {"bundles": {"accuracy": 0.81}}})
    with pytest.raises(InvalidParameter, match="--accept needs a --reason"):
        store.gate("acme/support@v1.1.0", accept=["suites.bundles.accuracy"])
    with pytest.raises(InvalidParameter, match="--accept accuracy: it passes the gate"):
        store.gate("acme/support@v1.1.0", accept=["accuracy"], reason="x")
    with pytest.raises(InvalidParameter, match="--accept f1: the gate has no such metric"):
        store.gate("acme/support@v1.1.0", accept=["f1"], reason="x")
    reason = "bundle questions regress; fixed in the next retrain, client informed"
    result = store.gate("acme/support@v1.1.0", accept=["suites.bundles.accuracy"], reason=reason, actor="jane")
    assert result.verdict == "accepted" and result.passed
    [accepted] = [m for m in result.metrics if m.verdict == "accepted"]
    assert accepted.accepted["reason"] == reason and accepted.accepted["by"] == "jane"
    assert store.log("acme/support")[-1].reason == f"passed, trade-off accepted: suites.bundles.accuracy ({reason})"
    again = store.gate("acme/support@v1.1.0", actor="ci")  # same production, settings and results
    assert again.verdict == "accepted" and again.id != result.id
    text = store.changelog("acme/support@v1.0.0", "acme/support@v1.1.0")
    assert "### Known Limitations\n- suites.bundles.accuracy: 85.0% → 81.0% (" + reason + ")" in text
    assert "| suites.bundles.accuracy | 85.0% | 81.0% |" in text


def test_gating_production_itself_is_refused(regression):
    with pytest.raises(InvalidParameter, match="is production: the gate compares a candidate with production"):
        regression.gate("acme/support@production")


def test_cli_gate_prints_each_metric_and_exits_1_on_failure(regression):
    store = regression.path
    before = snapshot(store)
    dry = run_cli("gate", "acme/support@v1.1.0", "--dry-run", "--store", store)
    assert dry.returncode == 1 and "not recorded" in dry.stdout and snapshot(store) == before
    human = run_cli("gate", "acme/support@v1.1.0", "--store", store)
    assert human.returncode == 1, human.stderr
    lines = human.stdout.splitlines()
    assert lines[0] == "acme/support@v1.1.0 against production v1.0.0 (policy none: the default gate)"
    assert lines[2].split()[:6] == ["accuracy", "95.8%", "91.0%", "-4.8", "pts", "2.0"]
    assert lines[3].split()[:7] == ["hallucination_rate", "(lower)", "1.4%", "5.0%", "+3.6", "pts", "2.0"]
    assert "FAIL" in lines[3] and lines[-1].startswith("gate: FAIL; recorded as b3:")
    as_json = run_cli("gate", "acme/support@v1.1.0", "--json", "--store", store)
    assert as_json.returncode == 1
    result = json.loads(as_json.stdout)
    assert result["verdict"] == "fail" and result["kind"] == "gate-result"
    assert [(m["metric"], m["production"], m["candidate"], m["verdict"]) for m in result["metrics"]] == [
        ("accuracy", 0.958, 0.91, "fail"), ("hallucination_rate", 0.014, 0.05, "fail")]
    accepted = run_cli("gate", "acme/support@v1.1.0", "--accept", "accuracy", "--accept", "hallucination_rate",
                       "--reason", "client asked for the faster model", "--store", store)
    assert accepted.returncode == 0 and accepted.stdout.splitlines()[-1].startswith("gate: ACCEPTED")
    error = run_cli("gate", "acme/support@v9.0.0", "--store", store)
    assert error.returncode == 1 and error.stderr == "error: acme/support has no version v9.0.0\n"


@pytest.fixture
def production_pushed_again(store, tmp_path):
    """acme/support, gate required: v1.1.0 gated against production v1.2.0, its accuracy drop
    accepted; then v1.2.0 rolled back from, deleted, pushed again with other eval results, gated and
    promoted again: production has v1.2.0's version name, not the bytes v1.1.0 was gated against.
    Pushing a deleted number again is refused now; a store from before holds such versions."""
    push(store, tmp_path, "v1.0.0", SEED_PRODUCTION)
    store.promote("acme/support@v1.0.0", actor="jane", reason="launch")
    push(store, tmp_path, "v1.2.0", {"accuracy": 0.958, "hallucination_rate": 0.014})
    store.promote("acme/support@v1.2.0", actor="jane", reason="retrain")
    (tmp_path / "policy.yaml").write_text("review: {required: false}\n")
    store.set_policy("acme/support", tmp_path / "policy.yaml", actor="lead")
    push(store, tmp_path, "v1.1.0", {"accuracy": 0.935, "hallucination_rate": 0.014})
    accepted = store.gate("acme/support@v1.1.0", accept=["accuracy"], reason="shorter answers", actor="jane")
    assert accepted.verdict == "accepted" and accepted.production == "v1.2.0"
    store.rollback("acme/support", actor="oncall", reason="3am")
    store.delete("acme/support@v1.2.0", reason="data removal request")
    again = replace(BY_NAME["v1.2.0"], name="v1.3.0", eval_results={"accuracy": 0.990, "hallucination_rate": 0.010})
    store.push(write_bundle(again, tmp_path / "again"), "acme/support@v1.3.0", actor="ci@agency")
    reuse_deleted_number(store, "acme/support@v1.3.0", "v1.2.0")  # as a store from an older release may have it
    store.gate("acme/support@v1.2.0")
    store.promote("acme/support@v1.2.0", actor="jane", reason="v1.2.0 retrained without the removed data")
    return store


def test_a_gate_result_against_production_s_earlier_bytes_is_stale(production_pushed_again):
    state = production_pushed_again.state("acme/support")
    assert missing_checks(production_pushed_again.registry, state, "v1.1.0") == [
        "the gate compared it with another v1.2.0, since deleted and pushed again (run the gate again)"]
    with pytest.raises(Refused, match="another v1.2.0, since deleted and pushed again"):
        production_pushed_again.promote("acme/support@v1.1.0", actor="jane", reason="uses the old gate result")


def test_accepted_trade_offs_do_not_carry_over_to_production_pushed_again(production_pushed_again):
    rerun = production_pushed_again.gate("acme/support@v1.1.0", actor="ci")
    assert rerun.verdict == "fail" and rerun.failed() == ["accuracy"]

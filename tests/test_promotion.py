"""Enforcement: with a policy, production takes only a version that passed the gate and review,
unless forced with a reason (recorded as an override); review, rollback targets, client notices."""

import json
from dataclasses import replace

import pytest
from conftest import run_cli, snapshot
from test_gate import BY_NAME, SEED_PRODUCTION, SEED_REGRESSION, push

from artifactstore import InvalidParameter, Refused
from artifactstore.demo import write_bundle

GOOD = {"accuracy": 0.962, "hallucination_rate": 0.012}


@pytest.fixture
def gated(store, tmp_path):
    """acme/support: v1.0.0 in production (the seed's scores), v1.1.0 the seed's regression, v1.2.0 a
    good retrain, and the seeds' policy (gate with the defaults, review of at least 20 outputs)."""
    push(store, tmp_path, "v1.0.0", SEED_PRODUCTION)
    store.promote("acme/support@v1.0.0", actor="jane", reason="launch")
    push(store, tmp_path, "v1.1.0", SEED_REGRESSION)
    push(store, tmp_path, "v1.2.0", GOOD)
    policy = tmp_path / "policy.yaml"
    policy.write_text("review: {min_samples: 20}\n")
    store.set_policy("acme/support", policy, actor="lead", reason="seed pipeline")
    return store


def refusal(store, ref: str, **kwargs) -> str:
    before = snapshot(store.path)
    with pytest.raises(Refused) as error:
        store.promote(ref, actor="intern", reason="yolo", **kwargs)
    assert snapshot(store.path) == before
    return str(error.value)


def test_without_a_policy_promote_behaves_as_before(store, tmp_path):
    push(store, tmp_path, "v1.0.0", SEED_PRODUCTION)
    store.promote("acme/support@v1.0.0")
    push(store, tmp_path, "v1.1.0", SEED_REGRESSION)
    assert store.promote("acme/support@v1.1.0", actor="intern", reason="yolo").pointers["production"] == "v1.1.0"
    assert store.gate("acme/support@v1.0.0").verdict == "pass"  # the gate still informs


def test_production_needs_a_passed_gate_and_an_approval(gated):
    message = refusal(gated, "acme/support@v1.1.0")
    assert message == ("acme/support@v1.1.0 may not become production under its policy: no gate result (run "
                       "`artifactstore gate`); no review (approve after at least 20 outputs: `artifactstore review`) "
                       "(or --force with a --reason, recorded as an override)")
    gated.gate("acme/support@v1.1.0")
    assert "the gate failed on accuracy, hallucination_rate (fix them, or accept a trade-off" in \
        refusal(gated, "acme/support@v1.1.0")
    with pytest.raises(InvalidParameter, match="asks an approval to review at least 20 outputs; --samples 10"):
        gated.review("acme/support@v1.2.0", approve=True, actor="rev", samples=10)
    gated.gate("acme/support@v1.2.0")
    assert "no gate result" not in (text := refusal(gated, "acme/support@v1.2.0")) and "no review" in text
    gated.review("acme/support@v1.2.0", approve=False, actor="rev", samples=5, notes="tone too casual")
    assert "rejected by rev at " in refusal(gated, "acme/support@v1.2.0")
    review = gated.review("acme/support@v1.2.0", approve=True, actor="rev", samples=24, notes="tone fixed")
    assert review.approved and review.samples == 24 and review.id.startswith("b3:")
    state = gated.promote("acme/support@v1.2.0", actor="jane", reason="monthly retrain")
    assert state.pointers == {"production": "v1.2.0", "rollback_target": "v1.0.0"}
    assert all(e.override is None for e in state.entries)
    assert [(e.action, e.to, e.actor) for e in gated.log("acme/support")[-3:]] == [
        ("review", "v1.2.0", "rev"), ("promote", "v1.2.0", "jane"), ("promote", "v1.0.0", "jane")]
    assert gated.log("acme/support")[-3].reason == "approved after 24 outputs: tone fixed"
    shown = gated.show("acme/support@v1.2.0")
    assert shown["review"]["approved"] and shown["review"]["notes"] == "tone fixed"
    assert shown["gate"]["verdict"] == "pass"
    assert gated.verify().ok


def test_an_accepted_trade_off_passes_the_gate(gated):
    gated.gate("acme/support@v1.1.0", accept=["accuracy", "hallucination_rate"], reason="client asked for speed")
    gated.review("acme/support@v1.1.0", approve=True, actor="rev", samples=20)
    assert gated.promote("acme/support@v1.1.0", actor="jane", reason="trade-off").pointers["production"] == "v1.1.0"


def test_force_overrides_with_a_reason_and_the_audit_log_keeps_the_refusal(gated):
    with pytest.raises(InvalidParameter, match="--force needs a --reason"):
        gated.promote("acme/support@v1.1.0", actor="intern", force=True)
    expected = refusal(gated, "acme/support@v1.1.0").removesuffix(" (or --force with a --reason, recorded as an "
                                                                  "override)")
    state = gated.promote("acme/support@v1.1.0", actor="oncall", reason="client demo at 9am", force=True)
    promote, target = state.entries
    assert (promote.pointer, promote.to, promote.override, promote.reason) == \
        ("production", "v1.1.0", expected, "client demo at 9am")
    assert target.pointer == "rollback_target" and target.override is None
    logged = json.loads(run_cli("log", "acme/support", "--json", "--store", gated.path).stdout)["entries"]
    assert logged[-2]["override"] == expected and "override" not in logged[-1]
    assert "[override: acme/support@v1.1.0 may not become production" in \
        run_cli("log", "acme/support", "--store", gated.path).stdout
    assert gated.verify().ok


def test_cli_promote_refusal_is_one_line_and_force_records_it(gated):
    refused = run_cli("promote", "acme/support@v1.1.0", "--by", "intern", "--reason", "yolo", "--store", gated.path)
    assert refused.returncode == 1 and len(refused.stderr.splitlines()) == 1
    assert refused.stderr.startswith("error: acme/support@v1.1.0 may not become production under its policy")
    no_reason = run_cli("promote", "acme/support@v1.1.0", "--force", "--store", gated.path)
    assert no_reason.returncode == 1 and "--force needs a --reason" in no_reason.stderr
    forced = run_cli("promote", "acme/support@v1.1.0", "--force", "--by", "oncall", "--reason", "hotfix",
                     "--store", gated.path)
    assert forced.returncode == 0, forced.stderr
    assert "  override recorded: acme/support@v1.1.0 may not become production" in forced.stdout


def test_a_gate_run_against_another_production_or_other_settings_is_stale(gated, tmp_path):
    gated.gate("acme/support@v1.2.0")
    gated.review("acme/support@v1.2.0", approve=True, actor="rev", samples=20)
    gated.promote("acme/support@v1.1.0", actor="oncall", reason="forced", force=True)
    assert "the gate compared it with v1.0.0, but production is v1.1.0 now (run the gate again)" in \
        refusal(gated, "acme/support@v1.2.0")
    gated.gate("acme/support@v1.2.0")
    stricter = tmp_path / "stricter.yaml"
    stricter.write_text("gate: {defaults: {max_drop_points: 1}}\nreview: {min_samples: 20}\n")
    gated.set_policy("acme/support", stricter)
    assert "the gate ran under other gate settings than the policy's now" in refusal(gated, "acme/support@v1.2.0")
    gated.gate("acme/support@v1.2.0")
    more_samples = tmp_path / "more-samples.yaml"
    more_samples.write_text("gate: {defaults: {max_drop_points: 1}}\nreview: {min_samples: 30}\n")
    gated.set_policy("acme/support", more_samples)  # the gate's settings did not change: its result stands
    assert refusal(gated, "acme/support@v1.2.0").startswith(
        "acme/support@v1.2.0 may not become production under its policy: approved after 20 outputs; the policy asks "
        "for 30 (or --force")


def test_a_policy_without_required_checks_refuses_nothing(gated, tmp_path):
    relaxed = tmp_path / "relaxed.yaml"
    relaxed.write_text("gate: {required: false}\nreview: {required: false}\n")
    gated.set_policy("acme/support", relaxed)
    assert gated.promote("acme/support@v1.1.0", reason="x").pointers["production"] == "v1.1.0"


def test_a_rollback_restores_what_served_a_never_served_one_is_a_promote_and_the_canary_is_gated(gated):
    gated.promote("acme/support@v1.1.0", actor="oncall", reason="forced", force=True)
    assert gated.rollback("acme/support", actor="oncall", reason="3am").pointers["production"] == "v1.0.0"
    assert gated.rollback("acme/support", to="v1.1.0", actor="oncall").pointers["production"] == "v1.1.0"  # served
    gated.rollback("acme/support", to="v1.0.0", actor="oncall")
    before = snapshot(gated.path)
    with pytest.raises(Refused, match="v1.2.0 may not become production under its policy: no gate result"):
        gated.rollback("acme/support", to="v1.2.0", actor="oncall")
    cli = run_cli("rollback", "acme/support", "--to", "v1.2.0", "--store", gated.path)
    assert cli.returncode != 0 and cli.stderr.count("\n") == 1 and "v1.2.0 may not become production" in cli.stderr
    assert snapshot(gated.path) == before
    forced = gated.rollback("acme/support", to="v1.2.0", actor="oncall", reason="hotfix", force=True)
    assert forced.pointers["production"] == "v1.2.0"
    assert forced.entries[0].override.startswith("acme/support@v1.2.0 may not become production")
    gated.rollback("acme/support", to="v1.0.0", actor="oncall")
    with pytest.raises(Refused, match="may not become canary under its policy"):
        gated.set_canary("acme/support@v1.1.0", 10, actor="jane")
    state = gated.set_canary("acme/support@v1.1.0", 10, actor="jane", reason="client insists", force=True)
    assert state.entries[0].override.startswith("acme/support@v1.1.0 may not become canary")
    assert gated.set_canary("acme/support@v1.1.0", 0, actor="jane").canary is None  # ending one is never refused


def test_target_set_names_the_rollback_target(gated):
    gated.gate("acme/support@v1.2.0")
    gated.review("acme/support@v1.2.0", approve=True, actor="rev", samples=20)
    gated.promote("acme/support@v1.2.0", actor="jane", reason="retrain")
    with pytest.raises(InvalidParameter, match="v1.2.0 is acme/support@production: a rollback target must be another"):
        gated.set_rollback_target("acme/support@v1.2.0")
    with pytest.raises(InvalidParameter, match="is already v1.0.0"):
        gated.set_rollback_target("acme/support@v1.0.0")
    # v1.1.0 never served: a rollback to it would be its promote, so naming it needs production's checks
    with pytest.raises(Refused, match="v1.1.0 may not become rollback_target under its policy: no gate result"):
        gated.set_rollback_target("acme/support@v1.1.0", actor="jane", reason="skip back further")
    state = gated.set_rollback_target("acme/support@v1.1.0", actor="jane", reason="skip back further",
                                      expect="v1.0.0", force=True)
    entry = state.entries[0]
    assert (entry.action, entry.pointer, entry.from_, entry.to) == ("target", "rollback_target", "v1.0.0", "v1.1.0")
    assert entry.override.startswith("acme/support@v1.1.0 may not become rollback_target")
    result = run_cli("target", "set", "acme/support@v1.0.0", "--expect", "v1.1.0", "--by", "jane", "--reason", "back",
                     "--json", "--store", gated.path)
    assert result.returncode == 0 and json.loads(result.stdout)["rollback_target"] == "v1.0.0"
    assert gated.rollback("acme/support", actor="oncall").pointers["production"] == "v1.0.0"


def test_a_policy_is_refused_while_the_rollback_target_lacks_its_checks(store, tmp_path):
    """A rollback to the target is never checked, because the target passed the rules when it was
    named: one named before the policy (or under a looser one) would reach production unchecked."""
    push(store, tmp_path, "v1.0.0", SEED_PRODUCTION)
    store.promote("acme/support@v1.0.0", actor="jane", reason="launch")
    push(store, tmp_path, "v1.1.0", SEED_REGRESSION)
    push(store, tmp_path, "v1.2.0", GOOD)
    store.set_rollback_target("acme/support@v1.1.0", actor="intern", reason="just in case")  # no rules yet
    policy = tmp_path / "policy.yaml"
    policy.write_text("review: {min_samples: 20}\n")
    before = snapshot(store.path)
    result = run_cli("policy", "set", "acme/support", str(policy), "--by", "lead", "--store", store.path)
    assert result.returncode == 1 and result.stderr == (
        "error: acme/support's rollback target v1.1.0 never served production, and under this policy it lacks: no "
        "gate result (run `artifactstore gate`); no review (approve after at least 20 outputs: `artifactstore "
        "review`). Name a version that has its checks or served before (`artifactstore target set`), then set the "
        "policy\n")
    assert snapshot(store.path) == before
    store.gate("acme/support@v1.2.0")
    store.review("acme/support@v1.2.0", approve=True, actor="rev", samples=20)
    store.set_rollback_target("acme/support@v1.2.0", actor="lead", reason="checked")
    store.set_policy("acme/support", policy, actor="lead")
    tighter = tmp_path / "tighter.yaml"
    tighter.write_text("review: {min_samples: 50}\n")
    with pytest.raises(InvalidParameter, match="rollback target v1.2.0 never served production, and under this policy it "
                                      "lacks: approved after 20 outputs; the policy asks for 50"):
        store.set_policy("acme/support", tighter, actor="lead")
    store.set_rollback_target("acme/support@v1.1.0", actor="intern", reason="yolo", force=True)  # an override
    assert store.rollback("acme/support", actor="oncall").pointers["production"] == "v1.1.0"


def test_a_promote_whose_baseline_cannot_be_taken_changes_nothing(store, tmp_path, monkeypatch):
    """The drift baseline is taken before production moves: a bundle an older release let through
    (here, 300 features where a baseline holds 256) refuses the promote instead of failing after it."""
    import artifactstore.registry.bundle

    push(store, tmp_path, "v1.0.0", SEED_PRODUCTION)
    samples = "".join(json.dumps({"inputs": {f"f{i}": i for i in range(300)}}) + "\n" for _ in range(3))
    bundle = write_bundle(replace(BY_NAME["v1.1.0"], eval_results=GOOD), tmp_path / "wide", eval_samples=samples)
    with monkeypatch.context() as older_release:
        older_release.setattr(artifactstore.registry.bundle, "_check_eval_samples", lambda *args: None)
        store.push(bundle, "acme/support@v1.1.0")
    before = snapshot(store.path)
    result = run_cli("promote", "acme/support@v1.1.0", "--by", "jane", "--store", store.path)
    assert result.returncode == 1 and result.stderr == (
        "error: acme/support@v1.1.0 eval_samples.jsonl: 300 features, more than the limit of 256\n")
    assert snapshot(store.path) == before and store.state("acme/support").pointer("production") is None
    assert store.promote("acme/support@v1.0.0").pointer("production") == "v1.0.0"


def test_notices_for_clients(gated):
    with pytest.raises(InvalidParameter, match="replaces no production version"):
        gated.notice("acme/support@v1.0.0", "update")
    upcoming = gated.notice("acme/support@v1.2.0", "update")  # not yet production: against production
    assert upcoming["from"] == "v1.0.0" and upcoming["text"].startswith("## Model Update: acme/support v1.2.0")
    gated.gate("acme/support@v1.2.0")
    gated.review("acme/support@v1.2.0", approve=True, actor="rev", samples=20)
    gated.promote("acme/support@v1.2.0", actor="jane", reason="retrain")
    update = gated.notice("acme/support@production", "update")
    assert update["from"] == "v1.0.0" and "| accuracy | 95.8% | 96.2% |" in update["text"]
    assert "**Evaluation gate:** passed against v1.0.0" in update["text"]
    with pytest.raises(InvalidParameter, match="production is v1.2.0, not v1.0.0: a rollback notice"):
        gated.notice("acme/support@v1.0.0", "rollback")
    gated.rollback("acme/support", actor="oncall", reason="3am")
    rolled = gated.notice("acme/support@production", "rollback")
    assert rolled["from"] == "v1.2.0" and rolled["text"] == (
        "We identified an issue with the latest model update and have rolled back to the previous stable version "
        "(v1.0.0). Service is restored. We're investigating the root cause and will provide an update within 24 "
        "hours.\n")
    cli = run_cli("notice", "acme/support@production", "--kind", "rollback", "--store", gated.path)
    assert cli.returncode == 0 and cli.stdout == rolled["text"]


def test_cli_review(gated):
    for verdicts in ([], ["--approve", "--reject"]):  # none, or both: never the last one given
        unclear = run_cli("review", "acme/support@v1.2.0", *verdicts, "--by", "rev", "--samples", "20", "--store",
                          gated.path)
        assert unclear.returncode == 2 and unclear.stderr == "error: give one of --approve and --reject\n"
    usage = run_cli("log", "acme/support", "--limit", "0", "--store", gated.path)  # click's own usage errors too
    assert usage.returncode == 2 and usage.stderr.startswith("error: ") and usage.stderr.count("\n") == 1
    approved = run_cli("review", "acme/support@v1.2.0", "--approve", "--by", "rev", "--samples", "24", "--notes",
                       "tone ok", "--json", "--store", gated.path)
    assert approved.returncode == 0, approved.stderr
    assert json.loads(approved.stdout) | {"at": None, "id": None, "record": None} == {
        "model": "acme/support", "version": "v1.2.0", "approved": True, "by": "rev", "samples": 24, "notes": "tone ok",
        "at": None, "id": None, "record": None}


def test_deleting_a_version_drops_its_checks(gated):
    gated.gate("acme/support@v1.1.0")
    assert "v1.1.0" in gated.state("acme/support").checks
    gated.delete("acme/support@v1.1.0", reason="data removal")
    assert "v1.1.0" not in gated.state("acme/support").checks and gated.verify().ok


def test_verify_names_a_damaged_gate_result_or_policy(gated):
    result = gated.gate("acme/support@v1.1.0")
    state = gated.state("acme/support")
    assert gated.verify().ok
    for object_id in (result.id, state.policy):
        path = gated.path / "registry" / "objects" / object_id[3:5] / f"{object_id[3:]}.json"
        good = path.read_bytes()
        path.write_bytes(good.replace(b'"', b"'", 1))
        report = gated.verify()
        assert not report.ok and any(object_id in p and "does not match its id" in p for p in report.problems)
        path.write_bytes(good)
    assert gated.verify().ok


def test_a_rollout_step_the_policy_refuses_is_reported_blocked_and_its_tick_writes_nothing(store, tmp_path,
                                                                                          monkeypatch):
    from fleet_helpers import FAST_POLICY, MODEL, hours, push_versions, report, set_now, with_policy

    push_versions(store, tmp_path)
    store.promote(f"{MODEL}@v1.0.0", actor="jane", reason="launch")
    with_policy(store, tmp_path, FAST_POLICY.replace("review: {required: false}", "review: {min_samples: 1}"))
    set_now(monkeypatch, hours(0))
    store.start_rollout(f"{MODEL}@v1.1.0", actor="jane", reason="hotfix", force=True)  # without its review
    for hour in (1, 2):
        report(store, hour)
    set_now(monkeypatch, hours(2.5))
    before = snapshot(store.path)
    blocked = store.rollout_tick(MODEL, actor="cron")
    assert blocked.decision == "blocked" and blocked.note.startswith("advance refused: acme/support@v1.1.0 may not "
                                                                     "become canary under its policy: no review")
    cli = run_cli("rollout", "tick", MODEL, "--store", store.path)
    assert cli.returncode == 0 and cli.stdout.startswith(f"{MODEL}: BLOCKED (step 1, 10%): advance refused")
    assert snapshot(store.path) == before  # not even the windows' measurements
    store.review(f"{MODEL}@v1.1.0", approve=True, actor="rev", samples=1)
    advanced = store.rollout_tick(MODEL, actor="cron")
    assert advanced.decision == "advance" and [m["window"] for m in advanced.measured] == [0, 1]

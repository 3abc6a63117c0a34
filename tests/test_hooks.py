"""Hooks: events delivered to a real HTTP server on 127.0.0.1 and to a command; a dead or hanging
endpoint never blocks or fails a promote, and what was not delivered waits in the outbox."""

import json
import os
import socket
import sys
import time

import pytest
from conftest import Receiver, run_cli
from test_gate import SEED_PRODUCTION, SEED_REGRESSION, push

from artifactstore import CorruptObject
from artifactstore.registry.hooks import DELIVERED, OUTBOX, attempt_delivery, deliver_pending


@pytest.fixture
def receiver():
    running = Receiver()
    yield running
    running.close()


def dead_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then closed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def with_hooks(store, tmp_path, hooks: str):
    """acme/support: v1.0.0 in production, v1.1.0 the seed's regression, a policy with ``hooks``
    that requires neither gate nor review (so promotes go through)."""
    push(store, tmp_path, "v1.0.0", SEED_PRODUCTION)
    store.promote("acme/support@v1.0.0", actor="jane", reason="launch")
    push(store, tmp_path, "v1.1.0", SEED_REGRESSION)
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"gate: {{required: false}}\nreview: {{required: false}}\nhooks:\n{hooks}")
    store.set_policy("acme/support", policy, actor="lead")
    return store


def test_events_are_posted_to_a_real_http_server(store, tmp_path, receiver, monkeypatch):
    monkeypatch.setenv("HOOK_TOKEN", "s3cret")
    with_hooks(store, tmp_path, f"  - {{name: relay, url: '{receiver.url}', env_headers: {{X-Token: HOOK_TOKEN}}}}\n")
    store.gate("acme/support@v1.1.0", actor="ci")
    store.review("acme/support@v1.1.0", approve=True, actor="rev", samples=24, notes="ok")
    store.promote("acme/support@v1.1.0", actor="jane", reason="retrain")
    store.rollback("acme/support", actor="oncall", reason="3am")
    assert receiver.events() == ["gate_failed", "review_recorded", "promoted", "rolled_back"]
    gate, review, promoted, rolled = (r["event"] for r in receiver.received)
    assert gate["model"] == "acme/support" and gate["version"] == "v1.1.0" and gate["from"] == "v1.0.0"
    assert gate["gate"]["failed"] == ["accuracy", "hallucination_rate"]
    assert [m["metric"] for m in gate["gate"]["metrics"]] == ["accuracy", "hallucination_rate"]
    assert review["review"]["samples"] == 24 and review["actor"] == "rev"
    assert (promoted["version"], promoted["from"], promoted["actor"], promoted["reason"]) == \
        ("v1.1.0", "v1.0.0", "jane", "retrain")
    assert (rolled["version"], rolled["from"]) == ("v1.0.0", "v1.1.0")
    assert rolled["state"] == store.state("acme/support").id and len(rolled["id"]) == 64
    headers = receiver.received[2]["headers"]
    assert headers["Content-Type"] == "application/json" and headers["X-Artifactstore-Event"] == "promoted"
    assert headers["X-Token"] == "s3cret" and headers["X-Artifactstore-Delivery"].endswith("-relay")
    assert list(store.backend.list(OUTBOX)) == []
    log = store.hook_log()
    assert [d["event"] for d in log] == ["rolled_back", "promoted", "review_recorded", "gate_failed"]
    assert {(d["status"], d["attempts"], d["hook"]) for d in log} == {("delivered", 1, "relay")}
    stored = json.loads(store.backend.read(f"{DELIVERED}/{log[0]['id']}.json"))
    assert "s3cret" not in json.dumps(stored) and stored["hook"]["env_headers"] == {"X-Token": "HOOK_TOKEN"}
    assert store.verify().ok


def test_a_hook_gets_only_the_events_it_asks_for(store, tmp_path, receiver):
    with_hooks(store, tmp_path, f"  - {{name: pager, url: '{receiver.url}', events: [rolled_back]}}\n")
    store.gate("acme/support@v1.1.0")
    store.promote("acme/support@v1.1.0", actor="jane", reason="retrain")
    store.rollback("acme/support", actor="oncall", reason="3am")
    assert receiver.events() == ["rolled_back"]


def test_a_dead_endpoint_never_fails_a_promote_and_a_later_run_delivers(store, tmp_path):
    port = dead_port()
    with_hooks(store, tmp_path, f"  - {{name: relay, url: 'http://127.0.0.1:{port}/hook', retries: 1, backoff: 0}}\n")
    promoted = run_cli("promote", "acme/support@v1.1.0", "--by", "jane", "--reason", "retrain", "--store", store.path)
    assert promoted.returncode == 0 and promoted.stderr == ""
    assert store.state("acme/support").pointers["production"] == "v1.1.0"
    [pending] = store.hook_log()
    assert pending["status"] == "pending" and pending["attempts"] == 1 and pending["event"] == "promoted"
    assert "refused" in pending["last_error"].lower()
    failed = run_cli("hooks", "deliver", "--store", store.path)
    assert failed.returncode == 1 and failed.stdout == "delivered 0, still pending 1\n"
    assert failed.stderr == "error: 1 deliveries still pending (see `artifactstore hooks log`)\n"
    assert store.hook_log()[0]["attempts"] == 3  # the first, then 1 + retries
    revived = Receiver(port=port)
    try:
        delivered = run_cli("hooks", "deliver", "--json", "--store", store.path)
        assert delivered.returncode == 0 and json.loads(delivered.stdout) == {"delivered": 1, "pending": 0}
        assert revived.events() == ["promoted"]
    finally:
        revived.close()
    log = json.loads(run_cli("hooks", "log", "--json", "--store", store.path).stdout)["deliveries"]
    assert [(d["status"], d["attempts"], d["last_error"]) for d in log] == [("delivered", 4, None)]
    assert list(store.backend.list(OUTBOX)) == []


def test_a_hanging_endpoint_does_not_hold_a_promote(store, tmp_path):
    hanging = Receiver(hang=True)
    try:
        with_hooks(store, tmp_path, f"  - {{name: slow, url: '{hanging.url}', timeout: 30}}\n")
        # the timeout only bounds the test if something is wrong; the promote waits at most INLINE_WAIT
        promoted = run_cli("promote", "acme/support@v1.1.0", "--by", "jane", "--reason", "retrain",
                           "--store", store.path, timeout=25)
        assert promoted.returncode == 0
        [pending] = store.hook_log()
        assert pending["status"] == "pending" and pending["event"] == "promoted"
    finally:
        hanging.close()


def test_retries_back_off_until_the_endpoint_answers(store, tmp_path):
    flaky = Receiver(statuses=(500, 503, 502))
    try:
        with_hooks(store, tmp_path, f"  - {{name: flaky, url: '{flaky.url}', retries: 3, backoff: 0.5}}\n")
        store.promote("acme/support@v1.1.0", actor="jane", reason="retrain")  # first attempt: 500
        pauses: list[float] = []
        assert deliver_pending(store.registry, sleep=pauses.append) == {"delivered": 1, "pending": 0}
        assert pauses == [0.5, 1.0] and len(flaky.received) == 4
        [delivered] = store.hook_log()
        assert delivered["status"] == "delivered" and delivered["attempts"] == 4
        attempts = json.loads(store.backend.read(f"{DELIVERED}/{delivered['id']}.json"))["attempts"]
        assert [(a["ok"], a["status"], a["error"]) for a in attempts] == [
            (False, 500, "HTTP 500 Internal Server Error"), (False, 503, "HTTP 503 Service Unavailable"),
            (False, 502, "HTTP 502 Bad Gateway"), (True, 200, None)]
    finally:
        flaky.close()


def test_a_command_hook_gets_the_event_on_stdin(store, tmp_path):
    out = tmp_path / "events.jsonl"
    script = tmp_path / "hook.py"
    script.write_text(f"import sys\nopen({str(out)!r}, 'a').write(sys.stdin.read() + '\\n')\n")
    failing = tmp_path / "fail.py"
    failing.write_text("import sys\nsys.stderr.write('no pager configured\\n')\nsys.exit(3)\n")
    with_hooks(store, tmp_path, f"  - {{name: log, command: ['{sys.executable}', '{script}']}}\n"
                                f"  - {{name: pager, command: ['{sys.executable}', '{failing}'], retries: 0}}\n")
    store.promote("acme/support@v1.1.0", actor="jane", reason="retrain")
    [event] = [json.loads(line) for line in out.read_text().splitlines()]
    assert event["event"] == "promoted" and event["version"] == "v1.1.0"
    by_hook = {d["hook"]: d for d in store.hook_log()}
    assert by_hook["log"]["status"] == "delivered"
    assert by_hook["pager"]["status"] == "pending" and by_hook["pager"]["last_error"] == \
        "exit status 3: no pager configured"


def test_a_missing_header_variable_fails_the_delivery_not_the_command(store, tmp_path, receiver, monkeypatch):
    monkeypatch.delenv("NO_SUCH_TOKEN", raising=False)
    with_hooks(store, tmp_path,
               f"  - {{name: relay, url: '{receiver.url}', env_headers: {{X-Token: NO_SUCH_TOKEN}}}}\n")
    store.promote("acme/support@v1.1.0", actor="jane", reason="retrain")
    assert receiver.received == []
    assert store.hook_log()[0]["last_error"] == "environment variable NO_SUCH_TOKEN (for a header) is not set"


def test_without_hooks_nothing_is_written(store, tmp_path):
    push(store, tmp_path, "v1.0.0", SEED_PRODUCTION)
    store.promote("acme/support@v1.0.0", actor="jane", reason="launch")
    assert list(store.backend.list("hooks")) == [] and store.hook_log() == []
    assert run_cli("hooks", "deliver", "--store", store.path).stdout == "delivered 0, still pending 0\n"


def test_a_header_secret_with_a_line_break_is_a_failed_attempt_that_never_shows_it(store, tmp_path, receiver):
    """A secret read from a file (a Kubernetes secret, say) often ends in a newline, which no header
    may carry: the attempt fails, naming the variable, and the value is printed nowhere."""
    secret = "s3cret-value-never-printed"
    with_hooks(store, tmp_path,
               f"  - {{name: relay, url: '{receiver.url}', env_headers: {{X-Token: HOOK_TOKEN}}, backoff: 0}}\n")
    env = {"HOOK_TOKEN": secret + "\n"}
    promoted = run_cli("promote", "acme/support@v1.1.0", "--by", "jane", "--reason", "retrain", "--store", store.path,
                       env=env)
    assert promoted.returncode == 0 and promoted.stderr == ""
    [pending] = store.hook_log()
    assert (pending["status"], pending["attempts"]) == ("pending", 1)
    assert pending["last_error"] == "environment variable HOOK_TOKEN (for a header) holds a line break or NUL"
    delivered = run_cli("hooks", "deliver", "--store", store.path, env=env)
    assert delivered.returncode == 1 and delivered.stdout == "delivered 0, still pending 1\n"
    assert secret not in delivered.stderr and store.hook_log()[0]["attempts"] == 5  # the first, then 1 + retries
    assert receiver.received == []


def test_an_attempt_a_header_value_breaks_is_recorded_without_the_value(receiver, monkeypatch):
    """http.client refuses a value it cannot encode with a ValueError: a failed attempt, not a crash,
    and its message, which may quote the value, is not the recorded error."""
    secret = "s3cret-€-value"
    hook = {"name": "relay", "url": receiver.url, "timeout": 2.0, "env_headers": {"X-Token": "HOOK_TOKEN"}}
    event = {"event": "promoted", "model": "acme/support", "version": "v1.1.0"}
    monkeypatch.setenv("HOOK_TOKEN", secret)
    attempt = attempt_delivery(hook, event, "0" * 32 + "-relay")
    assert attempt["ok"] is False and attempt["status"] is None and secret not in attempt["error"]
    assert attempt["error"] == "the request could not be made (UnicodeEncodeError in a header or the URL)"
    assert receiver.received == []


def test_a_delivery_whose_id_is_not_one_key_component_is_refused_before_it_is_sent(store, tmp_path, receiver):
    """An outbox record written under looser rules (a hook name with '/' and '..') must not name a key
    outside hooks/: it is refused before its attempt, and nothing is written for it."""
    escaping = "0" * 32 + "-x/../../../../escaped"
    record = {"kind": "hook-delivery", "id": escaping, "created_at": "2026-11-26T10:00:00.000000Z", "attempts": [],
              "hook": {"name": "x/../../../../escaped", "url": receiver.url, "command": None, "timeout": 2.0,
                       "retries": 0, "backoff": 0.0, "env_headers": {}},
              "event": {"id": "0" * 64, "event": "promoted", "model": "acme/support", "version": "v1.1.0"}}
    store.backend.write(f"{OUTBOX}/queued.json", json.dumps(record).encode())
    with pytest.raises(CorruptObject, match="is not a plain key component"):
        deliver_pending(store.registry, sleep=lambda _: None)
    assert receiver.received == [] and list(tmp_path.rglob("escaped*")) == []


def test_gc_with_a_retention_expires_old_delivery_records_and_keeps_pending_ones(store, tmp_path, receiver):
    with_hooks(store, tmp_path, f"  - {{name: relay, url: '{receiver.url}'}}\n"
                                f"  - {{name: dead, url: 'http://127.0.0.1:{dead_port()}/hook', retries: 0}}\n")
    store.promote("acme/support@v1.1.0", actor="jane", reason="retrain")
    store.rollback("acme/support", actor="oncall", reason="3am")
    delivered = sorted(d["id"] for d in store.hook_log() if d["status"] == "delivered")
    pending = sorted(d["id"] for d in store.hook_log() if d["status"] == "pending")
    assert len(delivered) == len(pending) == 2
    old, recent = delivered
    for delivery_id in [old, *pending]:  # delivered or not 40 days ago
        for place in (DELIVERED, OUTBOX):
            path = store.path / f"{place}/{delivery_id}.json"
            if path.exists():
                os.utime(path, (time.time() - 40 * 86400,) * 2)
    # a crash between the record and the outbox copy's removal left a copy of the old delivery
    store.backend.write(f"{OUTBOX}/{old}.json", store.backend.read(f"{DELIVERED}/{old}.json"))

    dry = store.gc(keep_telemetry="30d", dry_run=True)
    assert dry.expired_hook_deliveries == 1 and store.backend.exists(f"{DELIVERED}/{old}.json")
    report = run_cli("gc", "--keep-telemetry", "30d", "--json", "--store", store.path)
    assert report.returncode == 0 and json.loads(report.stdout)["expired_hook_deliveries"] == 1
    assert sorted(d["id"] for d in store.hook_log()) == sorted([recent, *pending])
    assert not store.backend.exists(f"{OUTBOX}/{old}.json"), "else the next deliver would send it again"
    assert deliver_pending(store.registry, sleep=lambda _: None) == {"delivered": 0, "pending": 2}
    assert receiver.events() == ["promoted", "rolled_back"]
    assert store.gc().expired_hook_deliveries == 0, "without a retention period the log is kept"
    assert store.verify().ok

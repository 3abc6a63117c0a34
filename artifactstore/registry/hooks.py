"""Hooks: a model's policy names endpoints and commands that hear about its events.

Events come from the audit entries of a committed state (a gate run, a review, a promotion, a
rollback), never from inside a transaction: ``announce`` runs after the ref was swapped. Each
(event, hook) pair becomes a *delivery*, written to the store's outbox (``hooks/outbox/``) before
its first attempt, so that nothing is lost when an endpoint is dead or slow. A command waits at
most ``INLINE_WAIT`` seconds for those first attempts and never fails because of them;
``deliver_pending`` (``artifactstore hooks deliver``) retries what is left, with backoff. A
delivered one moves to ``hooks/delivered/`` with every attempt: the delivery log.

Delivery is at least once: a receiver that must not act twice keys on the event's ``id``.
"""

import http.client
import json
import logging
import os
import re
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any

import blake3

from ..backends.remote import mask_url
from ..clock import timestamp
from ..content.manifest import canonical_json
from ..errors import ArtifactStoreError, CorruptObject, NotFound
from .drills import drill_summary
from .gate import gate_result
from .pointers import CANARY, PRODUCTION
from .policy import Hook, policy_of
from .registry import Registry
from .review import review_of
from .state import AuditEntry, ModelState

OUTBOX = "hooks/outbox"
DELIVERED = "hooks/delivered"
INLINE_WAIT = 2.0  # seconds a registry command waits, at most, for its hooks' first attempts
MAX_PARALLEL = 8
# A delivery id becomes one component of an object key: no "/", never "." or "..".
_KEY_COMPONENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# What http.client refuses in a header value, raising with the value in its message.
_HEADER_BREAKS = re.compile(r"[\r\n\0]")

_log = logging.getLogger(__name__)

Delivery = dict[str, Any]  # the outbox record: id, hook, event, created_at, attempts


# A rollout's audit entries and their events: the entry that moves the canary (or, for pause and
# resume, the only one), production's move for a completed rollout; a measurement alone is no event.
ROLLOUT_EVENTS = {("rollout-start", CANARY): "canary_started", ("rollout-step", CANARY): "canary_advanced",
                  ("rollout-pause", None): "canary_paused", ("rollout-resume", None): "canary_resumed",
                  ("rollout-abort", CANARY): "canary_aborted", ("rollout-abort", None): "canary_aborted",
                  ("rollout-complete", PRODUCTION): "canary_completed", ("rollout-complete", None): "canary_completed"}


def _event_kind(registry: Registry, state: ModelState, entry: AuditEntry) -> tuple[str, dict[str, Any]] | None:
    rollout_event = ROLLOUT_EVENTS.get((entry.action, entry.pointer))
    if rollout_event is not None:
        return rollout_event, {} if entry.percent is None else {"percent": entry.percent}
    if entry.action == "drill" and entry.pointer is None and state.drill is not None:
        record = drill_summary(registry, state.drill)
        return ("drill_passed" if record["passed"] else "drill_failed"), {"drill": record}
    if entry.pointer == CANARY and entry.action == "canary" and entry.to is None and entry.evidence is not None:
        return "canary_aborted", {}  # a node ended a hand-made canary its smoke check failed
    if entry.pointer == PRODUCTION and entry.to is not None and entry.action == "promote":
        return "promoted", {}
    if entry.pointer == PRODUCTION and entry.action == "rollback":
        return "rolled_back", {}
    if entry.action == "gate" and entry.to is not None:
        result = gate_result(registry, state, entry.to)
        if result is not None:
            failing = [asdict(m) for m in result.metrics if m.verdict != "pass"]
            return ("gate_passed" if result.passed else "gate_failed"), {"gate": result.summary() | {
                "metrics": failing}}
    if entry.action == "review" and entry.to is not None:
        review = review_of(registry, state, entry.to)
        if review is not None:
            return "review_recorded", {"review": review.summary()}
    return None


def events_of(registry: Registry, state: ModelState) -> list[dict[str, Any]]:
    """The events that the audit entries of ``state`` (a state a command just committed) make."""
    events = []
    for entry in state.entries:
        kind = _event_kind(registry, state, entry)
        if kind is None:
            continue
        # a canary's end names the version it ended (its entry moves the canary to nothing)
        version = entry.from_ if kind[0] == "canary_aborted" and entry.to is None else entry.to
        event = {"event": kind[0], "model": str(state.model), "version": version, "from": entry.from_,
                 "seq": entry.seq, "at": entry.at, "actor": entry.actor, "reason": entry.reason,
                 "override": entry.override, "state": state.id, **kind[1]}
        if entry.evidence is not None:  # only when set: the events that existed before keep their bytes
            event["evidence"] = entry.evidence
        events.append({"id": blake3.blake3(canonical_json(event)).hexdigest(), **event})
    return events


def _key(place: str, delivery_id: str) -> str:
    # the policy's rules keep hook names plain; this keeps a record written under looser rules from
    # naming a key outside ``place``
    if _KEY_COMPONENT.fullmatch(delivery_id) is None:
        raise CorruptObject(f"hook delivery id {delivery_id!r} is not a plain key component")
    return f"{place}/{delivery_id}.json"


def _hook_target(hook: Hook) -> dict[str, Any]:
    """What a delivery keeps of its hook: later policy changes do not redirect an event already sent."""
    return hook.model_dump(mode="json", exclude={"events"})


def announce(registry: Registry, state: ModelState, *, wait: float = INLINE_WAIT) -> list[Delivery]:
    """Put the events of a just-committed ``state`` in the outbox for each hook of the model's policy
    that wants them, and make one attempt at each, waiting at most ``wait`` seconds in all.
    Never raises for a hook: what is not delivered stays in the outbox for ``deliver_pending``."""
    return send(registry, state, lambda: events_of(registry, state), wait=wait)


def event_for(kind: str, state: ModelState, version: str | None, **fields: Any) -> dict[str, Any]:
    """An event that no audit entry made (a drift alert, say), in the shape hooks receive."""
    body = {"event": kind, "model": str(state.model), "version": version, "at": timestamp(), **fields}
    return {"id": blake3.blake3(canonical_json(body)).hexdigest(), **body}


def send(registry: Registry, state: ModelState, events: Callable[[], list[dict[str, Any]]], *,
         wait: float = INLINE_WAIT) -> list[Delivery]:
    """Put ``events()`` (computed only when the model's policy has hooks) in the outbox for each hook
    that wants them, and make one attempt at each, as ``announce`` does."""
    deliveries: list[Delivery] = []
    try:
        policy = policy_of(registry, state)
        hooks = policy.hooks if policy is not None else []
        for event in events() if hooks else []:
            for hook in hooks:
                if hook.events is None or event["event"] in hook.events:
                    delivery: Delivery = {"kind": "hook-delivery", "id": f"{event['id'][:32]}-{hook.name}",
                                "hook": _hook_target(hook), "event": event, "created_at": timestamp(),
                                "attempts": []}
                    registry.backend.write(_key(OUTBOX, delivery["id"]), canonical_json(delivery))
                    deliveries.append(delivery)
    except (ArtifactStoreError, OSError) as exc:
        # the command's change is committed: it must not fail now, only say what was not queued
        _log.warning("hooks of %s: events not queued (%s)", state.model, exc)
    # Daemon threads: a process that ends before an endpoint answers is not held up by it; the
    # delivery then stays in the outbox, and `hooks deliver` sends it again.
    threads = [threading.Thread(target=_attempt_and_record, args=(registry, d), daemon=True) for d in deliveries]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + wait
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return deliveries


def _attempt_and_record(registry: Registry, delivery: Delivery) -> bool:
    attempt = attempt_delivery(delivery["hook"], delivery["event"], delivery["id"])
    delivery["attempts"].append(attempt)
    if attempt["ok"]:
        # delivered first, then out of the outbox: a crash between leaves both, and the next
        # `hooks deliver` only removes the outbox copy
        registry.backend.write(_key(DELIVERED, delivery["id"]), canonical_json(delivery))
        registry.backend.delete(_key(OUTBOX, delivery["id"]))
    else:
        registry.backend.write(_key(OUTBOX, delivery["id"]), canonical_json(delivery))
    return attempt["ok"]


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirected POST would arrive as a GET without its body: count it as a failure instead."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def attempt_delivery(hook: dict[str, Any], event: dict[str, Any], delivery_id: str) -> dict[str, Any]:
    """One attempt: POST the event as JSON (2xx is success), or run the command with the event on
    stdin (exit status 0 is success), within the hook's timeout. Never raises."""
    at, started = timestamp(), time.monotonic()
    body = canonical_json(event)
    status, error = None, None
    if hook.get("url"):
        headers = {"Content-Type": "application/json", "User-Agent": "artifactstore-hooks",
                   "X-Artifactstore-Event": event["event"], "X-Artifactstore-Delivery": delivery_id}
        unset = [v for v in hook["env_headers"].values() if v not in os.environ]
        broken = [v for v in hook["env_headers"].values() if _HEADER_BREAKS.search(os.environ.get(v, ""))]
        if unset:
            error = f"environment variable {unset[0]} (for a header) is not set"
        elif broken:  # a secret read from a file often ends in a newline; its value is never shown
            error = f"environment variable {broken[0]} (for a header) holds a line break or NUL"
        else:
            headers |= {header: os.environ[v] for header, v in hook["env_headers"].items()}
            request = urllib.request.Request(hook["url"], data=body, headers=headers, method="POST")
            try:
                with _OPENER.open(request, timeout=hook["timeout"]) as response:
                    status = response.status
            except urllib.error.HTTPError as exc:
                status, error = exc.code, f"HTTP {exc.code} {exc.reason}"
            except urllib.error.URLError as exc:
                error = str(exc.reason)
            except (OSError, http.client.HTTPException) as exc:
                error = str(exc) or type(exc).__name__
            except ValueError as exc:  # its message may quote a header's value: a secret
                error = f"the request could not be made ({type(exc).__name__} in a header or the URL)"
    else:
        try:
            done = subprocess.run(hook["command"], input=body, capture_output=True, timeout=hook["timeout"])
            status = done.returncode
            if done.returncode != 0:
                said = done.stderr.decode("utf-8", "replace").strip().splitlines()
                error = f"exit status {done.returncode}" + (f": {said[-1][:200]}" if said else "")
        except subprocess.TimeoutExpired:
            error = f"timed out after {hook['timeout']:g} s"
        except OSError as exc:
            error = f"{hook['command'][0]}: {exc.strerror or exc}"
    ok = error is None and status is not None and (200 <= status < 300 if hook.get("url") else status == 0)
    return {"at": at, "ok": ok, "status": status, "error": error,
            "seconds": round(time.monotonic() - started, 3)}


def deliver_pending(registry: Registry, *, sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Retry every delivery in the outbox: up to ``1 + retries`` attempts each, ``backoff`` seconds
    before the first retry, doubling. What still fails stays in the outbox for the next run."""
    def deliver(key: str) -> bool:
        try:
            delivery = json.loads(registry.backend.read(key))
        except NotFound:  # delivered meanwhile by another process
            return True
        if registry.backend.exists(_key(DELIVERED, delivery["id"])):
            registry.backend.delete(key)
            return True
        hook = delivery["hook"]
        for attempt in range(hook["retries"] + 1):
            if attempt:
                sleep(hook["backoff"] * 2 ** (attempt - 1))
            if _attempt_and_record(registry, delivery):
                return True
        return False

    keys = list(registry.backend.list(OUTBOX))
    with ThreadPoolExecutor(MAX_PARALLEL) as pool:
        outcomes = list(pool.map(deliver, keys))
    return {"delivered": sum(outcomes), "pending": len(outcomes) - sum(outcomes)}


def expire_delivered(registry: Registry, before: float, dry_run: bool = False) -> list[str]:
    """Delete the delivery log's records written before ``before`` (seconds since the epoch), by
    the modification time of their objects: the store's clock. An outbox copy a crash left behind
    goes first: without its record, the next ``hooks deliver`` would deliver it again. Pending
    deliveries stay, however old. Returns the delivery ids."""
    expired = []
    for key in registry.backend.list(DELIVERED):
        delivery_id = key.removeprefix(f"{DELIVERED}/").removesuffix(".json")
        if not key.endswith(".json") or _KEY_COMPONENT.fullmatch(delivery_id) is None:
            continue  # not a record this module wrote
        try:
            if registry.backend.modified(key) >= before:
                continue
        except NotFound:  # expired meanwhile by another gc
            continue
        if not dry_run:
            for place in (OUTBOX, DELIVERED):
                try:
                    registry.backend.delete(_key(place, delivery_id))
                except NotFound:
                    pass
        expired.append(delivery_id)
    return expired


def hook_log(registry: Registry, *, limit: int | None = None) -> list[dict[str, Any]]:
    """Deliveries, newest first: pending ones from the outbox, delivered ones with their attempts."""
    found: dict[str, dict[str, Any]] = {}
    for place, status in ((DELIVERED, "delivered"), (OUTBOX, "pending")):
        for key in registry.backend.list(place):
            try:
                delivery = json.loads(registry.backend.read(key))
            except NotFound:  # moved out of the outbox while this listed it
                continue
            if delivery["id"] in found:  # delivered, and its outbox copy not yet removed
                continue
            hook, event, attempts = delivery["hook"], delivery["event"], delivery["attempts"]
            found[delivery["id"]] = {
                "id": delivery["id"], "status": status, "event": event["event"], "model": event["model"],
                "version": event["version"], "hook": hook["name"],
                "target": mask_url(hook["url"]) if hook.get("url") else " ".join(hook["command"]),
                "created_at": delivery["created_at"], "attempts": len(attempts),
                "last_attempt": attempts[-1]["at"] if attempts else None,
                "last_error": attempts[-1]["error"] if attempts else None}
    newest_first = sorted(found.values(), key=lambda d: (d["created_at"], d["id"]), reverse=True)
    return newest_first[:limit] if limit is not None else newest_first

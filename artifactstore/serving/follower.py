"""Hot swap for inference processes: follow a pointer, keep the hot versions resident, swap atomically.

A ``Follower`` watches one ref such as ``acme/support@production``. It keeps the versions an
operator may switch to next loaded (the pointer's target, the rollback target, the newest
``keep_newest``, a canary, and a replaced production for the policy's ``keep_loaded``), so that a
promote or rollback costs a reference assignment, not a load. Readers take ``follower.current``
(or ``follower.pick(key)``, which routes a canary's share of keys) once per request and use it
throughout: it is an immutable ``LoadedVersion`` and is replaced whole, so a reader never sees a
mix of two versions.

With a ``node`` name the follower also reports to the fleet (registry/fleet.py): a heartbeat after
every look at a moved pointer and every ``heartbeat_interval``; when its smoke check fails a new
production (or the canary) it makes the registry roll back to the version it serves (or abort the
canary) per the policy, so that the registry does not say one thing while the node serves another
(where a rollback would not bring the two together, it only reports: registry/fleet.py); and it can
gather its server's request metrics and flush them for the canary analysis.
"""

import functools
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from ..backends import Backend
from ..clock import duration, now, timestamp
from ..errors import ArtifactStoreError, InvalidInput, InvalidParameter
from ..registry.bundle import SmokeTest, smoke_tests_of
from ..registry.changes import has_marker, marker_token
from ..registry.fleet import (
    MAX_HEARTBEAT_INTERVAL,
    Heartbeat,
    Role,
    act_on_smoke_failure,
    check_node,
    remove_heartbeat,
    write_heartbeat,
)
from ..registry.metrics import MetricsCollector, MetricsRecord, record_metrics
from ..registry.pointers import CANARY, PRODUCTION, ROLLBACK_TARGET
from ..registry.policy import Policy, policy_of
from ..registry.refs import Ref
from ..registry.registry import Registry
from ..registry.routing import route
from ..registry.state import ModelState
from .load import check_target
from .smoke import SmokeResult, run_smoke_tests


@dataclass(frozen=True)
class LoadedVersion:
    version: str
    bundle: str
    tensors: dict[str, Any]
    record: str = ""  # the version record's id: a number deleted and pushed again has another one

    def is_version(self, state: ModelState, version: str) -> bool:
        """Whether this is ``version`` as ``state`` names it (its record, not only its number)."""
        return self.version == version and self.record == state.versions.get(version)


SmokeCheck = Callable[[LoadedVersion], object]
SmokeFunction = Callable[[LoadedVersion, Any], Any]  # the server's inference on one known input

# How often a follower looks at the pointer: a local ref is watched (inotify on Linux), and looked
# at every SLOW_POLL besides, in case a change escaped the watch (a ref on a network file system
# changed by another machine, a full event queue); where it cannot be watched, every LOCAL_POLL.
# On object storage the store's change marker is one GET per REMOTE_POLL for all the followers of
# the store in a process, and the ref is read when the marker changed and every REF_CHECK_INTERVAL
# besides (a marker write that was lost, a writer of a version that writes none).
LOCAL_POLL = 0.002
SLOW_POLL = 0.5
REMOTE_POLL = 0.5
REF_CHECK_INTERVAL = 30.0
HEARTBEAT_INTERVAL = 5.0
METRICS_INTERVAL = 60.0
# A look whose read or load failed (the store refused it for a moment, a damaged pack) is tried
# again after this, then twice as long each time, up to RETRY_MAX: the pointer may not move again
# for days.
RETRY_FIRST, RETRY_MAX = 1.0, 30.0
SAID_MAX = 64  # distinct failures remembered as heard (``Follower._fail``)


class VersionSource(Protocol):
    """What a follower needs of a store: its registry, and loading a version's tensors."""

    registry: Registry

    def resolve(self, ref: str) -> str: ...
    def load(self, ref_or_id: str, *, device: str = "cpu", framework: str = "numpy",
             label: str | None = None) -> dict[str, Any]: ...


class Follower:
    """Keeps ``ref``'s version live and its likely successors resident.

    Before any version goes live (or serves as the canary) its smoke check runs (the seeds' "send
    known test inputs and verify the outputs"): ``smoke_function(candidate, input)`` is the
    server's inference on one input, run on each test of the bundle's ``smoke_tests.jsonl`` and
    compared with its expected output; ``smoke_check(candidate)`` may add a check of the server's
    own (return False or raise to refuse). A refused version does not go live: the old one stays,
    the failure is kept in ``last_error`` and ``smoke``, and passed to ``on_error``; the canary and
    its share of keys follow the registry all the same.
    ``start()``'s thread wakes when a local ref's file is replaced (inotify on Linux) and otherwise
    looks at the pointer every ``poll_interval``: by default 0.5 s where the ref is watched, 2 ms
    where it cannot be (a ``stat`` per look). On object storage it looks at the store's change
    marker (registry/changes.py) every ``poll_interval`` (0.5 s), one GET shared by every follower
    built on the same ``Store`` in the process, and reads its ref only when the marker changed, and
    every ``ref_check_interval`` (30 s) besides.

    An adapter is only useful on the base model it was trained for: the follower serves one base
    model (``base_model``, by default that of the first version it serves). It never swaps to, or
    keeps resident, a version for another one; a pointer that names one is refused, and
    ``last_error`` says so (a newer version for another base it only leaves out of what it keeps
    hot: a new major version on a new base is no error of this server's).
    """

    def __init__(self, store: VersionSource, ref: str, *, device: str = "cpu", framework: str = "numpy",
                 keep_newest: int = 1, base_model: str | None = None, poll_interval: float | None = None,
                 smoke_check: SmokeCheck | None = None, smoke_function: SmokeFunction | None = None,
                 node: str | None = None, heartbeat_interval: float = HEARTBEAT_INTERVAL,
                 metrics_interval: float = METRICS_INTERVAL, ref_check_interval: float = REF_CHECK_INTERVAL,
                 on_swap: Callable[[LoadedVersion | None, LoadedVersion], None] | None = None,
                 on_error: Callable[[str], None] | None = None):
        parsed = Ref.parse(ref)
        if parsed.model is None or parsed.is_version:
            raise InvalidParameter(f"a follower follows a pointer (client/model@production), not {ref}")
        check_target(framework, device)  # a server that could load nothing must not start
        store.registry.state(parsed.model)  # NotFound: a model the registry lacks (a typo) is followed by nobody
        self.store, self.ref, self.model = store, parsed, parsed.model
        self._load_options = {"device": device, "framework": framework}
        shared = has_marker(store.registry.backend)
        self.keep_newest = keep_newest
        self.base_model = base_model
        # version record id -> its base model (records are immutable; a number deleted and pushed
        # again by an older release names another record)
        self._base_models: dict[str, str] = {}
        ref_file = store.registry.ref_file(self.model)
        self._watched_file = ref_file if ref_file is not None and _RefWatch.available() else None
        self.poll_interval = poll_interval or (
            REMOTE_POLL if shared else SLOW_POLL if self._watched_file is not None else LOCAL_POLL)
        self._follows_marker, self.ref_check_interval = shared, ref_check_interval
        self.smoke_check, self.on_swap, self.on_error = smoke_check, on_swap, on_error
        self.smoke_function = smoke_function
        self.node = check_node(node) if node is not None else None
        if not 0 < heartbeat_interval <= MAX_HEARTBEAT_INTERVAL:  # a reader takes a longer one for damage
            raise InvalidParameter(f"heartbeat_interval must be more than 0 and at most {MAX_HEARTBEAT_INTERVAL:g} "
                                   f"seconds, not {heartbeat_interval!r}")
        self.heartbeat_interval, self.metrics_interval = heartbeat_interval, metrics_interval
        self.metrics = MetricsCollector(self.node) if self.node is not None else None
        self.resident: dict[str, LoadedVersion] = {}
        self.smoke: dict[str, SmokeResult] = {}  # version -> its latest smoke check here
        self.last_error: str | None = None
        self.last_swap: str | None = None
        self._current: LoadedVersion | None = None
        self._canary: LoadedVersion | None = None
        self._state: ModelState | None = None  # the state the live versions were chosen from
        self._looked_at: str | None = None  # the last state looked at (its versions refused, perhaps)
        self._replaced: dict[str, datetime] = {}  # version -> when it stopped being live here
        self._policy: tuple[str | None, Policy] = (None, Policy())
        self._tests: dict[str, tuple[SmokeTest, ...]] = {}  # bundle -> its smoke tests
        self._heartbeat_due = self._metrics_due = 0.0
        self._seen_ref: tuple | None = None
        self._retry_due: float | None = None  # when a failed look is tried again
        self._retry_delay = RETRY_FIRST
        self._read_failed = False  # in the last look, a read or a load failed (not a verdict, such as a smoke check)
        # what on_error heard since a look last went well or the versions followed last changed: a
        # failure met again (a look tried again, or one an unrelated registry change caused) is news once
        self._said: set[str] = set()
        self._failed_in_look = False
        self._followed: tuple[str | None, str | None] | None = None  # (target, canary) of the last look
        self._lock = threading.RLock()  # re-entrant: a callback of a look (on_error, say) may call stop()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._watch: _RefWatch | None = None
        self._marker: _MarkerWatch | None = None
        try:
            self.refresh()
        except BaseException:
            if self.node is not None:  # its first look's heartbeat would name a node that never served
                remove_heartbeat(self.store.registry, self.model, self.node)
            raise

    @property
    def current(self) -> LoadedVersion:
        if self._current is None:
            raise InvalidParameter(f"{self.ref} has no live version: {self.last_error}")
        return self._current

    def pick(self, key: str) -> LoadedVersion:
        """The version that serves a request from ``key``: the canary for its share of keys
        (``registry.routing.route``, sticky per key), else the live version. Both stay resident."""
        current, canary, state = self.current, self._canary, self._state
        if canary is not None and state is not None and route(state, self.ref.target, key) == canary.version:
            return canary
        return current

    @property
    def canary(self) -> LoadedVersion | None:
        """The canary served beside production, if there is one and it passed its smoke check here."""
        return self._canary

    def refresh(self, *, force: bool = False) -> bool:
        """Look at the pointer now; swap if it moved. True if a new version went live.

        A failure (load error, smoke check) is reported once until the versions followed change or
        a look goes well; ``force`` tries again without waiting for the next move.
        """
        with self._lock:
            signature = self.store.registry.ref_signature(self.model)
            if signature == self._seen_ref and not force:
                return False
            self._seen_ref, self._read_failed, self._failed_in_look = signature, False, False
            try:
                swapped = self._follow(self.store.registry.state(self.model))
            except ArtifactStoreError as exc:
                self._read_failed = True
                self._fail(f"{self.ref}: {exc}")
                return False
            finally:
                self._report()
            if not self._failed_in_look:  # a look that went well, to its end
                self._said.clear()
            return swapped

    def _follow(self, state: ModelState) -> bool:
        self._looked_at = state.id
        target = state.pointer(self.ref.target)
        followed = (target, state.pointer(CANARY) if self.ref.target == PRODUCTION else None)
        if followed != self._followed:  # a failure met again after a move is news again
            self._said.clear()
            self._followed = followed
        if target is None:
            self._fail(f"{self.ref} is not set")
            return False
        try:
            swapped = self._follow_production(state, target)
        except ArtifactStoreError as exc:  # a failed load (or registry read) refuses production, not the canary
            self._read_failed = True
            live = self._current.version if self._current else "nothing"
            self._fail(f"{self.ref}: {target} could not be loaded ({exc}); {live} stays live")
            swapped = False
        # the canary and its split follow the registry whatever became of production: a refused
        # production must not leave this node routing keys to a canary the registry ended
        self._follow_canary(state)
        self._state = state
        if self._current is not None and self._current.is_version(state, target):
            self._keep_hot(state)  # not after a refusal: it would load, and report, the refused version again
        return swapped

    def _follow_production(self, state: ModelState, target: str) -> bool:
        """Swap to ``target``, the version the pointer names, if it passes; True if it went live."""
        if self._current is not None and self._current.is_version(state, target):
            self.last_error = None  # what the pointer names is live: an earlier refusal is history
            return False
        if self.base_model is None:
            self.base_model = self._base_model_of(state, target)
        if not self._serves_base_model_of(state, target):
            return False
        candidate = self._resident(state, target)
        if not self._passes_smoke_check(candidate):
            self._smoke_failed(target, "production")
            return False
        previous, self._current = self._current, candidate
        if previous is not None:
            self._replaced[previous.version] = now()
        self._replaced.pop(target, None)
        self.last_error = None
        self.last_swap = timestamp()
        if self.on_swap is not None:
            self.on_swap(previous, candidate)
        return True

    def _follow_canary(self, state: ModelState) -> None:
        """Keep the canary resident and checked, so that ``pick`` can route its keys to it."""
        version = state.pointer(CANARY) if self.ref.target == PRODUCTION else None
        if version is None or self._current is None or version == self._current.version:
            self._canary = None
        elif self._canary is None or not self._canary.is_version(state, version):
            self._canary = None
            if self._serves_base_model_of(state, version):
                candidate = self._resident(state, version)
                if self._passes_smoke_check(candidate):
                    self._canary = candidate
                else:
                    self._smoke_failed(version, "canary")

    def _smoke_failed(self, version: str, role: Role) -> None:
        """Make the registry agree with this node, per policy: roll production back to what it serves,
        or end the canary (registry/fleet.py says when a node may)."""
        result = self.smoke.get(version)
        if self.node is None or self.ref.target != PRODUCTION or result is None or result.ok:
            return
        self._report()  # the fleet sees the failure before the registry moves
        act_on_smoke_failure(self.store.registry, self.model, self.node, version, role, result.detail,
                             serving=self._current.version if self._current else None)

    def _resident(self, state: ModelState, version: str) -> LoadedVersion:
        loaded = self.resident.get(version)
        if loaded is None or not loaded.is_version(state, version):
            bundle = self.store.registry.record(state, version)["bundle"]  # as this state names it
            tensors = self.store.load(bundle, label=f"{state.model}@{version}", **self._load_options)
            loaded = LoadedVersion(version, bundle, tensors, state.versions[version])
            self.resident[version] = loaded
        return loaded

    def _passes_smoke_check(self, candidate: LoadedVersion) -> bool:
        result = self._smoke_tests(candidate)
        if result.ok and self.smoke_check is not None:
            try:
                verdict = self.smoke_check(candidate)
            except Exception as exc:  # the check is user code: any failure of it keeps the old version
                verdict, detail = False, f"{type(exc).__name__}: {exc}"
            else:
                detail = "returned False"
            if verdict is False:
                result = SmokeResult(candidate.version, False, timestamp(), result.tests, ["smoke_check"],
                                     f"the server's smoke check {detail}")
        self.smoke[candidate.version] = result
        if not result.ok:
            self._fail(f"{self.ref}: {candidate.version} failed the smoke check ({result.detail}); "
                       f"{self._current.version if self._current else 'nothing'} stays live")
        return result.ok

    def _smoke_tests(self, candidate: LoadedVersion) -> SmokeResult:
        """The bundle's known inputs through ``smoke_function``."""
        if self.smoke_function is None:
            return SmokeResult(candidate.version, True, timestamp(), 0, [], "no smoke function: tests not run")
        if candidate.bundle not in self._tests:
            try:
                self._tests[candidate.bundle] = smoke_tests_of(self.store.registry.content, candidate.bundle)
            except InvalidInput as exc:
                return SmokeResult(candidate.version, False, timestamp(), 0, [], f"unusable smoke tests: {exc}")
        function = self.smoke_function
        return run_smoke_tests(candidate.version, self._tests[candidate.bundle],
                               lambda known_input: function(candidate, known_input))

    def _base_model_of(self, state: ModelState, version: str) -> str:
        record = state.versions[version]
        if record not in self._base_models:
            self._base_models[record] = self.store.registry.read_version_record(record)["base_model"]
        return self._base_models[record]

    def _serves_base_model_of(self, state: ModelState, version: str) -> bool:
        """Whether ``version`` is for this follower's base model; if not, say so."""
        base_model = self._base_model_of(state, version)
        if base_model == self.base_model:
            return True
        live = self._current.version if self._current else "nothing"
        self._fail(f"{self.ref}: {version} is for base model {base_model}, and this server serves "
                   f"{self.base_model}: {live} stays live (a new base model needs a new server)")
        return False

    def _keep_hot(self, state: ModelState) -> None:
        hot = {loaded.version for loaded in (self._current, self._canary) if loaded is not None}
        keep_loaded = duration(self._policy_of(state).keep_loaded)
        moment = now()
        for version, replaced in list(self._replaced.items()):
            if moment - replaced >= keep_loaded or version not in state.versions:
                del self._replaced[version]
        likely = [state.pointer(ROLLBACK_TARGET), state.pointer(self.ref.target), *self._replaced,
                  *(state.sorted_versions()[-self.keep_newest:] if self.keep_newest else [])]
        # silently: a newer major version for another base model is no error of this server's
        hot.update(v for v in dict.fromkeys(likely)
                   if v and v not in hot and self._base_model_of(state, v) == self.base_model)
        for version in list(self.resident):
            if version not in hot:
                del self.resident[version]
        for version in hot:
            self._resident(state, version)

    def _policy_of(self, state: ModelState) -> Policy:
        if state.policy != self._policy[0]:
            self._policy = (state.policy, policy_of(self.store.registry, state) or Policy())
        return self._policy[1]

    def _report(self) -> None:
        """Write this node's heartbeat (with a node name only, until ``stop``); a failed write is
        reported, never raised."""
        if self.node is None or self._stop.is_set():  # a look on another thread after stop() must not bring it back
            return
        self._heartbeat_due = time.monotonic() + self.heartbeat_interval
        state = self._state
        named = {state.pointer(PRODUCTION), state.pointer(CANARY)} if state else set()
        heartbeat = Heartbeat(
            node=self.node, model=str(self.model), pointer=self.ref.target, at=timestamp(),
            interval=self.heartbeat_interval, serving=self._current.version if self._current else None,
            bundle=self._current.bundle if self._current else None,
            canary=self._canary.version if self._canary else None, resident=sorted(self.resident),
            smoke={v: r.to_json() for v, r in sorted(self.smoke.items()) if v in self.resident or v in named},
            last_swap=self.last_swap, state=self._looked_at, error=self.last_error,
            host=socket.gethostname(), pid=os.getpid())
        try:
            write_heartbeat(self.store.registry, heartbeat)
        except (ArtifactStoreError, OSError) as exc:
            self._fail(f"{self.ref}: heartbeat of node {self.node} not written ({exc})", every_time=True)

    def observe(self, version: str, latency_ms: float, *, error: bool = False,
                scores: dict[str, float] | None = None, output: str | None = None) -> None:
        """Count one request the server answered with ``version`` (``pick``'s choice), for the canary
        analysis: its latency, whether it failed, its quality scores, a bin of some output
        characteristic (for output PSI). Flushed every ``metrics_interval``, or by ``flush_metrics``.
        A request no record could hold (a latency or score that is not a finite number, say) is refused
        with InvalidParameter and not counted; the others are kept."""
        if self.metrics is None:
            raise InvalidParameter("request metrics are reported per node: give the follower a node name")
        self.metrics.observe(version, latency_ms, error=error, scores=scores, output=output)

    def flush_metrics(self) -> int:
        """Store the requests observed since the last flush as metrics records; how many records.
        Records a failed write left are written again first (those of versions deleted since dropped)."""
        if self.metrics is None:
            return 0
        self._metrics_due = time.monotonic() + self.metrics_interval

        def write(records: list[MetricsRecord]) -> None:
            versions = self.store.registry.state(self.model).versions
            # A batch of its own per record: dropping a deleted version's record from a write that was
            # stored before it failed must leave the others' batches the same bytes, stored once.
            for record in records:
                if record.version in versions:
                    record_metrics(self.store.registry, self.model, [record])

        return self.metrics.flush(write)

    def _fail(self, message: str, *, every_time: bool = False) -> None:
        """Record a failure and tell ``on_error``, once until a look goes well or the versions
        followed change (``_said``), unless ``every_time`` (a heartbeat not written: each is news,
        the node is dropping out of the fleet)."""
        self.last_error = message
        if not every_time:
            self._failed_in_look = True
            if message in self._said:
                return
            if len(self._said) >= SAID_MAX:  # messages that name something new each time (a temp file)
                self._said.clear()
            self._said.add(message)
        if self.on_error is not None:
            self.on_error(message)

    def start(self) -> "Follower":
        """Follow in a daemon thread until ``stop()``."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=f"follow {self.ref}", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop following; with a node name, flush the metrics gathered and leave the fleet (the
        heartbeat is removed: a node stopped on purpose is not a stale one)."""
        self._stop.set()
        if self._watch is not None:
            self._watch.wake()
        if self._marker is not None:
            self._marker.wake()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.node is not None:
            with self._lock:  # after a look another thread is taking, which writes its heartbeat
                try:
                    self.flush_metrics()
                    remove_heartbeat(self.store.registry, self.model, self.node)
                except (ArtifactStoreError, OSError) as exc:
                    self._fail(f"{self.ref}: node {self.node} could not leave the fleet cleanly ({exc})")

    def _run(self) -> None:
        self._metrics_due = time.monotonic() + self.metrics_interval
        if self._follows_marker:
            self._run_on_marker()
            return
        watch = None
        try:
            while not self._stop.is_set():
                if watch is None and self._watched_file is not None:
                    watch = self._watch = _RefWatch.on(self._watched_file)  # None until its directory exists
                self._turn(look=True)  # after the watch is set: a change from now on wakes the wait below
                if watch is not None:
                    if not self._stop.is_set():  # stop() may have missed the watch: it sets the event first
                        watch.wait(self.poll_interval)
                else:
                    self._stop.wait(LOCAL_POLL if self._watched_file is not None else self.poll_interval)
        finally:
            self._watch = None
            if watch is not None:
                watch.close()

    def _run_on_marker(self) -> None:
        """Follow a ref in object storage: look at it when the store's change marker changed, and
        every ``ref_check_interval`` besides."""
        interval = self.poll_interval  # leave() takes back what join() was given, whatever poll_interval is then
        marker = self._marker = _MarkerWatch.join(self.store.registry.backend, interval)
        seen, check_due = None, 0.0
        try:
            while not self._stop.is_set():
                generation, moment = marker.generation, time.monotonic()
                look = generation != seen or moment >= check_due
                if look:  # the marker is read before the ref: a move after this look changes it again
                    seen, check_due = generation, moment + self.ref_check_interval
                self._turn(look)
                marker.wait(seen, self._stop, self.poll_interval)
        finally:
            self._marker = None
            marker.leave(interval)

    def _turn(self, look: bool) -> None:
        """One turn of the follow loop: look at the pointer (when ``look``, or when a failed look is
        due to be tried again), then the heartbeat and the metrics when they are due."""
        retry = self._retry_due is not None and time.monotonic() >= self._retry_due
        try:
            if look or retry:
                self._look(retry)
            if self.node is not None and time.monotonic() >= self._heartbeat_due:
                with self._lock:
                    self._report()
            if self.node is not None and time.monotonic() >= self._metrics_due:
                self.flush_metrics()
        except Exception as exc:  # a serving process must outlive any surprise in one look
            self._fail(f"{self.ref}: unexpected {type(exc).__name__}: {exc}")

    def _look(self, retry: bool) -> None:
        """Look at the pointer (``retry``: even if it did not move). After a look in which a read or
        a load failed, the next is scheduled (RETRY_FIRST, doubling each time it fails again), since
        no move of the pointer may come to trigger it. A verdict (a smoke check, a base model) is
        not tried again before the pointer moves."""
        failed = True
        try:
            self.refresh(force=retry)
            failed = self._read_failed  # a look that did not happen (the pointer did not move) keeps the last one's
        except BaseException:
            self._read_failed = True
            raise
        finally:
            if not failed:
                self._retry_due, self._retry_delay = None, RETRY_FIRST
            elif retry or self._retry_due is None:
                self._retry_due = time.monotonic() + self._retry_delay
                self._retry_delay = min(2 * self._retry_delay, RETRY_MAX)

    def __enter__(self) -> "Follower":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def wait_for(self, version: str, timeout: float = 5.0) -> LoadedVersion:
        """Block until ``version`` is live (for tests and drills)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._current is not None and self._current.version == version:
                return self._current
            time.sleep(self.poll_interval / 2 or 0.001)
        raise TimeoutError(f"{self.ref} did not reach {version} within {timeout} s (live: "
                           f"{self._current.version if self._current else None}; last error: {self.last_error})")


class _RefWatch:
    """Wakes a follower when the file of a local ref is replaced: inotify (Linux) on the ref's
    directory, where a swap renames the new ref into place. Events for the other files there
    (other models' refs, lock files) are ignored."""

    def __init__(self, inotify, name: str):
        self._inotify = inotify
        self._name = name
        self._wake_read, self._wake_write = os.pipe()

    @staticmethod
    def available() -> bool:
        return _inotify_simple() is not None

    @classmethod
    def on(cls, path: Path) -> "_RefWatch | None":
        """A watch of ``path``'s directory; None while it does not exist, or when no watch can be
        had (the user's inotify instances or watches are used up: fs.inotify.max_user_instances)."""
        inotify_simple = _inotify_simple()
        assert inotify_simple is not None
        flags = inotify_simple.flags
        try:
            inotify = inotify_simple.INotify()
        except OSError:
            return None
        try:
            inotify.add_watch(path.parent, flags.MOVED_TO | flags.CREATE | flags.CLOSE_WRITE | flags.DELETE
                              | flags.MOVED_FROM | flags.DELETE_SELF | flags.MOVE_SELF)
        except OSError:
            inotify.close()
            return None
        return cls(inotify, path.name)

    def wait(self, timeout: float) -> None:
        """Return when the ref's file changed (or may have: the watch overflowed or went), when
        ``wake`` was called, or after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self._inotify, self._wake_read], [], [], left)
            if self._wake_read in ready:
                os.read(self._wake_read, 64)
                return
            if ready and any(not event.name or event.name == self._name for event in self._inotify.read(timeout=0)):
                return  # an event without a name is about the directory itself, or an overflow

    def wake(self) -> None:
        os.write(self._wake_write, b"!")

    def close(self) -> None:
        self._inotify.close()
        os.close(self._wake_read)
        os.close(self._wake_write)


class _MarkerWatch:
    """One poll of a shared store's change marker for every follower of it in this process (those
    built on one ``Store``, which share its backend), so that a node's idle requests do not grow with
    the number of models it follows: a thread reads the marker every interval (the shortest its
    followers asked for) and counts the changes it sees in ``generation``. A failed read is let
    pass: the followers' slow looks at their refs meet the store's failure and report it."""

    _watches: dict[int, "_MarkerWatch"] = {}  # by id of the backend, which the watch holds while it runs
    _watches_lock = threading.Lock()

    def __init__(self, backend: Backend):
        self._backend = backend
        self._intervals: list[float] = []
        self._token: object = _UNREAD
        self.generation = 0
        self._changed = threading.Condition()
        self._stopped = threading.Event()
        self._starting = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"change marker of {backend.describe()}", daemon=True)

    @classmethod
    def join(cls, backend: Backend, interval: float) -> "_MarkerWatch":
        """The watch of ``backend``'s marker, started if no follower had one; ``interval``: how
        often this follower wants the marker read."""
        with cls._watches_lock:
            watch = cls._watches.get(id(backend))
            if watch is None:
                watch = cls._watches[id(backend)] = cls(backend)
            watch._intervals.append(interval)
        with watch._starting:  # not under the class's lock: a slow store must not stall the others' followers
            if watch._thread.ident is None:
                watch._poll()  # before the follower's first look: a change after it is one more generation
                watch._thread.start()
        return watch

    def leave(self, interval: float) -> None:
        """A follower that joined with ``interval`` stopped; the last one to leave stops the watch."""
        with self._watches_lock:
            self._intervals.remove(interval)
            if self._intervals:
                return
            del self._watches[id(self._backend)]
            self._stopped.set()
        self._thread.join()

    def wait(self, seen: int | None, stop: threading.Event, timeout: float) -> None:
        """Return when the marker changed since ``generation`` was ``seen``, when ``stop`` is set
        (and ``wake`` called), or after ``timeout`` seconds."""
        with self._changed:
            self._changed.wait_for(lambda: self.generation != seen or stop.is_set(), timeout)

    def wake(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def _run(self) -> None:
        while not self._stopped.wait(min(self._intervals, default=0.0)):
            self._poll()

    def _poll(self) -> None:
        try:
            token = marker_token(self._backend)
        except Exception:  # the watch must outlive any failure of the store; see the class
            return
        if token != self._token:
            with self._changed:
                self._token = token
                self.generation += 1
                self._changed.notify_all()


_UNREAD = object()  # the marker's token before the first read: any token read differs


@functools.cache
def _inotify_simple():
    """The inotify wrapper, where the platform has inotify (Linux); None elsewhere."""
    try:
        import inotify_simple

        inotify_simple.INotify().close()
    except (ImportError, OSError, AttributeError):
        return None
    return inotify_simple

"""Hot swap for inference processes: follow a pointer, keep the hot versions resident, swap atomically.

A ``Follower`` watches one ref such as ``acme/support@production``. It keeps the versions an
operator may switch to next loaded (the pointer's target, the rollback target and the newest
``keep_newest``), so that a promote or rollback costs a reference assignment, not a load. Readers
take ``follower.current`` once per request and use it throughout: it is an immutable
``LoadedVersion`` and is replaced whole, so a reader never sees a mix of two versions.
"""

import functools
import os
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..errors import ArtifactStoreError, InvalidParameter
from ..registry.pointers import ROLLBACK_TARGET
from ..registry.refs import Ref
from ..registry.registry import Registry
from ..registry.state import ModelState


@dataclass(frozen=True)
class LoadedVersion:
    version: str
    bundle: str
    tensors: dict[str, Any]


SmokeCheck = Callable[[LoadedVersion], object]
# How often a follower looks at the pointer: a local ref is watched (inotify on Linux), and looked
# at every SLOW_POLL besides, in case a change escaped the watch (a ref on a network file system
# changed by another machine, a full event queue); where it cannot be watched, every LOCAL_POLL.
# A ref in object storage is one GET per REMOTE_POLL.
LOCAL_POLL = 0.002
SLOW_POLL = 0.5
REMOTE_POLL = 0.5


class VersionSource(Protocol):
    """What a follower needs of a store: its registry, and loading a version's tensors."""

    registry: Registry

    def resolve(self, ref: str) -> str: ...
    def load(self, ref_or_id: str, *, device: str = "cpu", framework: str = "numpy") -> dict[str, Any]: ...


class Follower:
    """Keeps ``ref``'s version live and its likely successors resident.

    ``smoke_check(candidate)`` runs before any version goes live (the seeds' "send known test
    inputs and verify the outputs"): return False or raise to refuse it; the old version stays
    and the failure is kept in ``last_error`` and passed to ``on_error``. ``start()``'s thread
    wakes when a local ref's file is replaced (inotify on Linux) and otherwise looks at the pointer
    every ``poll_interval``: by default 0.5 s where the ref is watched, 2 ms where it cannot be (a
    ``stat`` per look), 0.5 s for a ref in object storage (a GET per look).

    An adapter is only useful on the base model it was trained for: the follower serves one base
    model (``base_model``, by default that of the first version it serves). It never swaps to, or
    keeps resident, a version for another one, and says so in ``last_error``.
    """

    def __init__(self, store: VersionSource, ref: str, *, device: str = "cpu", framework: str = "numpy",
                 keep_newest: int = 1, base_model: str | None = None, poll_interval: float | None = None,
                 smoke_check: SmokeCheck | None = None,
                 on_swap: Callable[[LoadedVersion | None, LoadedVersion], None] | None = None,
                 on_error: Callable[[str], None] | None = None):
        parsed = Ref.parse(ref)
        if parsed.model is None or parsed.is_version:
            raise InvalidParameter(f"a follower follows a pointer (client/model@production), not {ref}")
        self.store, self.ref, self.model = store, parsed, parsed.model
        self._load_options = {"device": device, "framework": framework}
        shared = store.registry.backend.capabilities.local_directory is None
        self.keep_newest = keep_newest
        self.base_model = base_model
        self._base_models: dict[str, str] = {}  # version -> its base model (records are immutable)
        ref_file = store.registry.ref_file(self.model)
        self._watched_file = ref_file if ref_file is not None and _RefWatch.available() else None
        self.poll_interval = poll_interval or (
            REMOTE_POLL if shared else SLOW_POLL if self._watched_file is not None else LOCAL_POLL)
        self.smoke_check, self.on_swap, self.on_error = smoke_check, on_swap, on_error
        self.resident: dict[str, LoadedVersion] = {}
        self.last_error: str | None = None
        self._current: LoadedVersion | None = None
        self._seen_ref: tuple | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._watch: _RefWatch | None = None
        self.refresh()

    @property
    def current(self) -> LoadedVersion:
        if self._current is None:
            raise InvalidParameter(f"{self.ref} has no live version: {self.last_error}")
        return self._current

    def refresh(self, *, force: bool = False) -> bool:
        """Look at the pointer now; swap if it moved. True if a new version went live.

        A failure (load error, smoke check) is reported once per pointer move; ``force``
        tries again without waiting for the next move.
        """
        with self._lock:
            signature = self.store.registry.ref_signature(self.model)
            if signature == self._seen_ref and not force:
                return False
            self._seen_ref = signature
            try:
                return self._follow(self.store.registry.state(self.model))
            except ArtifactStoreError as exc:
                self._fail(f"{self.ref}: {exc}")
                return False

    def _follow(self, state: ModelState) -> bool:
        target = state.pointer(self.ref.target)
        if target is None:
            self._fail(f"{self.ref} is not set")
            return False
        swapped = False
        if self._current is None or self._current.version != target:
            if self.base_model is None:
                self.base_model = self._base_model_of(state, target)
            if not self._serves_base_model_of(state, target):
                return False
            candidate = self._resident(state, target)
            if not self._passes_smoke_check(candidate):
                return False
            previous, self._current = self._current, candidate
            self.last_error = None
            swapped = True
            if self.on_swap is not None:
                self.on_swap(previous, candidate)
        self._keep_hot(state)
        return swapped

    def _resident(self, state: ModelState, version: str) -> LoadedVersion:
        loaded = self.resident.get(version)
        if loaded is None:
            ref = f"{state.model}@{version}"
            loaded = LoadedVersion(version, self.store.resolve(ref), self.store.load(ref, **self._load_options))
            self.resident[version] = loaded
        return loaded

    def _passes_smoke_check(self, candidate: LoadedVersion) -> bool:
        if self.smoke_check is None:
            return True
        try:
            verdict = self.smoke_check(candidate)
        except Exception as exc:  # the check is user code: any failure of it keeps the old version
            verdict, detail = False, f"{type(exc).__name__}: {exc}"
        else:
            detail = "returned False"
        if verdict is False:
            self._fail(f"{self.ref}: {candidate.version} failed the smoke check ({detail}); "
                       f"{self._current.version if self._current else 'nothing'} stays live")
            return False
        return True

    def _base_model_of(self, state: ModelState, version: str) -> str:
        if version not in self._base_models:
            self._base_models[version] = self.store.registry.record(state, version)["base_model"]
        return self._base_models[version]

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
        hot = {self._current.version} if self._current else set()
        likely = [state.pointer(ROLLBACK_TARGET), state.pointer(self.ref.target),
                  *(state.sorted_versions()[-self.keep_newest:] if self.keep_newest else [])]
        hot.update(v for v in dict.fromkeys(likely) if v and v not in hot and self._serves_base_model_of(state, v))
        for version in list(self.resident):
            if version not in hot:
                del self.resident[version]
        for version in hot:
            self._resident(state, version)

    def _fail(self, message: str) -> None:
        self.last_error = message
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
        self._stop.set()
        if self._watch is not None:
            self._watch.wake()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        watch = None
        try:
            while not self._stop.is_set():
                if watch is None and self._watched_file is not None:
                    watch = self._watch = _RefWatch.on(self._watched_file)  # None until its directory exists
                try:
                    self.refresh()  # after the watch is set: a change from now on wakes the wait below
                except Exception as exc:  # a serving process must outlive any surprise in one look
                    self._fail(f"{self.ref}: unexpected {type(exc).__name__}: {exc}")
                if watch is not None:
                    if not self._stop.is_set():  # stop() may have missed the watch: it sets the event first
                        watch.wait(self.poll_interval)
                else:
                    self._stop.wait(LOCAL_POLL if self._watched_file is not None else self.poll_interval)
        finally:
            self._watch = None
            if watch is not None:
                watch.close()

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


@functools.cache
def _inotify_simple():
    """The inotify wrapper, where the platform has inotify (Linux); None elsewhere."""
    try:
        import inotify_simple

        inotify_simple.INotify().close()
    except (ImportError, OSError, AttributeError):
        return None
    return inotify_simple

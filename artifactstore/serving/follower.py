"""Hot swap for inference processes: follow a pointer, keep the hot versions resident, swap atomically.

A ``Follower`` watches one ref such as ``acme/support@production``. It keeps the versions an
operator may switch to next loaded (the pointer's target, the rollback target and the newest
``keep_newest``), so that a promote or rollback costs a reference assignment, not a load. Readers
take ``follower.current`` once per request and use it throughout: it is an immutable
``LoadedVersion`` and is replaced whole, so a reader never sees a mix of two versions.
"""

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
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
LOCAL_POLL = 0.002
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
    and the failure is kept in ``last_error`` and passed to ``on_error``. ``poll_interval`` is how
    often ``start()``'s thread looks at the pointer: a local ref costs one ``stat`` per look (default
    every 2 ms), a ref in object storage one GET (default every 0.5 s).

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
        self.poll_interval = poll_interval or (REMOTE_POLL if shared else LOCAL_POLL)
        self.smoke_check, self.on_swap, self.on_error = smoke_check, on_swap, on_error
        self.resident: dict[str, LoadedVersion] = {}
        self.last_error: str | None = None
        self._current: LoadedVersion | None = None
        self._seen_ref: tuple | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
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
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.poll_interval):
            try:
                self.refresh()
            except Exception as exc:  # a serving process must outlive any surprise in one look
                self._fail(f"{self.ref}: unexpected {type(exc).__name__}: {exc}")

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

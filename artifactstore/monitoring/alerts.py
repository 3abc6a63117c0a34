"""Drift alerts: a window whose PSI crosses a threshold is delivered once, not every window.

For each feature, the windows that are over are walked in time order; a window whose status
ranks above the previous non-empty window's (fine < watch < investigate) raises an alert with its
status, unless the feature was alerted at a status as high for that window or a later one: counts
a node flushed late then moved a crossing back into an excursion already alerted. A window
is over ``SETTLE_SECONDS`` after its end, so that every node has flushed its counts of it before it
is judged (a node flushes when its window ends). The alerts raised are recorded in
``monitoring/<client>/<model>/alerts.json``, a ref moved by compare-and-swap like the registry's:
an alert is claimed there before it is delivered, so that of several nodes flushing at once only
one delivers it, and released again if its delivery fails, so that the next check retries it.

Delivery is a callable given by the caller (composition): the CLI prints a line; the policy's
hook (issue #10) is plugged in the same way, and so are its thresholds.
"""

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass

from ..clock import timestamp
from ..content.manifest import canonical_json
from ..errors import Conflict, CorruptObject
from ..registry.refs import ModelName
from .arrays import PREFIX, MonitoringArrays
from .psi import EMPTY, RANK, WATCH, Thresholds
from .report import DriftReport, drift_report, iso

CLAIM_ATTEMPTS = 20
SETTLE_SECONDS = 300


@dataclass(frozen=True)
class Alert:
    model: str
    version: str
    feature: str
    window: str  # the window's start, ISO 8601
    status: str  # watch or investigate
    psi: float
    threshold: float  # the threshold crossed

    @property
    def key(self) -> str:
        return f"{self.version} {self.feature} {self.window} {self.status}"

    def message(self) -> str:
        return (f"{self.model}@{self.version}: {self.feature} PSI {self.psi:.3f} in the window from {self.window} "
                f"crossed {self.threshold:g}: {self.status}")

    def to_json(self) -> dict:
        return asdict(self)


Deliver = Callable[[Alert], None]


def parse_alert_key(key: str) -> tuple[str, str, str, str]:
    """(version, feature, window, status) of an ``Alert.key``. A feature's name may hold spaces; a
    version, a window and a status never do, so they are split off the ends."""
    version, _, rest = key.partition(" ")
    fields = rest.rsplit(" ", 2)
    if len(fields) != 3:
        raise CorruptObject(f"alert {key!r}: expected <version> <feature> <window start> <status>")
    feature, window, status = fields
    return version, feature, window, status


def alerts_key(model: ModelName) -> str:
    return f"{PREFIX}/{model.client}/{model.model}/alerts.json"


def crossings(report: DriftReport, now: float, settle: float = SETTLE_SECONDS) -> list[Alert]:
    """Every upward crossing in the windows of ``report`` that are over at ``now``: ended ``settle``
    seconds before it."""
    over = report.starts + report.window_seconds + settle <= now
    starts, values, statuses = report.starts[over], report.psi[over], report.statuses()[over]
    found = []
    for f, feature in enumerate(report.features):
        previous = RANK["fine"]
        for w in range(len(statuses)):
            status = str(statuses[w, f])
            if status == EMPTY:
                continue
            if RANK[status] > previous and RANK[status] >= RANK[WATCH]:
                threshold = report.thresholds.watch if status == WATCH else report.thresholds.investigate
                found.append(Alert(report.model, report.version, feature, iso(int(starts[w])), status,
                                   round(float(values[w, f]), 6), threshold))
            previous = RANK[status]
    return found


def raised_alerts(arrays: MonitoringArrays, model: ModelName) -> dict[str, dict]:
    return _read(arrays, model)[0]


def raise_alerts(arrays: MonitoringArrays, model: ModelName, version: str, deliver: Deliver, now: float,
                 thresholds: Thresholds = Thresholds()) -> list[Alert]:
    """Deliver each crossing of ``version`` not raised before; returns those this call delivered."""
    pending = crossings(drift_report(arrays, model, version, thresholds=thresholds), now)
    if not pending:
        return []
    claimed = _claim(arrays, model, pending)
    for i, alert in enumerate(claimed):
        try:
            deliver(alert)
        except BaseException:
            _release(arrays, model, claimed[i:])
            raise
    return claimed


def _read(arrays: MonitoringArrays, model: ModelName) -> tuple[dict[str, dict], str | None]:
    data, token = arrays.store.backend.read_ref(alerts_key(model))
    if data is None:
        return {}, None
    try:
        raised = json.loads(data)["raised"]
        if not isinstance(raised, dict):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise CorruptObject(f"{alerts_key(model)}: malformed") from None
    return raised, token


def _swap(arrays: MonitoringArrays, model: ModelName, change: Callable[[dict], list[Alert]]) -> list[Alert]:
    """Apply ``change`` to the record of raised alerts by compare-and-swap, retrying lost races."""
    for _ in range(CLAIM_ATTEMPTS):
        raised, token = _read(arrays, model)
        changed = change(raised)
        if not changed:
            return []
        try:
            arrays.store.backend.swap_ref(alerts_key(model), canonical_json({"raised": raised}), token)
            return changed
        except Conflict:
            continue
    raise Conflict(f"{alerts_key(model)} kept changing while alerts were raised; they are raised by the next check")


def _claim(arrays: MonitoringArrays, model: ModelName, pending: list[Alert]) -> list[Alert]:
    def claim(raised: dict) -> list[Alert]:
        alerted = _alerted(raised)
        new = [a for a in pending if a.key not in raised and not any(
            window >= a.window and rank >= RANK[a.status] for window, rank in alerted.get((a.version, a.feature), []))]
        raised.update({a.key: {"raised_at": timestamp(), "psi": a.psi} for a in new})
        return new

    return _swap(arrays, model, claim)


def _alerted(raised: dict) -> dict[tuple[str, str], list[tuple[str, int]]]:
    """(window, status rank) of every alert raised, by (version, feature). Counts that arrive late
    can make a crossing in an earlier window of an excursion already alerted: it is not raised again
    where an alert as high came for that window or a later one (a later, lower one does not cover
    it). Windows compare as text: ``iso`` writes them at one width, so text order is time order."""
    alerted: dict[tuple[str, str], list[tuple[str, int]]] = {}
    for key in raised:
        version, feature, window, status = parse_alert_key(key)
        alerted.setdefault((version, feature), []).append((window, RANK.get(status, RANK[EMPTY])))
    return alerted


def _release(arrays: MonitoringArrays, model: ModelName, alerts: list[Alert]) -> None:
    def release(raised: dict) -> list[Alert]:
        return [a for a in alerts if raised.pop(a.key, None) is not None]

    _swap(arrays, model, release)


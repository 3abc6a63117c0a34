"""What the pages show, read from a store through ``Store`` and kept so that a page costs little.

A page must render in well under 300 ms over 12 clients x 5 models x 100 versions, on a store that
may be a bucket. What makes that possible is that nearly everything the registry holds is
immutable and named by its id:

- a model's current state is its ref (one small read) and the state object it names, kept by id;
- the audit log of a state is its parent's log plus its own entries: kept per model, and extended
  by walking back only to the state read last time;
- a version record never changes: kept as a small summary (no tensor table), by record id.

Three things read across the whole store and are computed in the background by ``refresh`` (the
server runs it whenever the registry moves, and every half minute for drift), never while a page
renders: every version's summary (lineage and sharing search them all), each client's stored bytes
(chunks of every bundle), and each model's drift status and open alerts. Until the first pass is
done the pages say so.
"""

import hashlib
import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from ..clock import now
from ..content.manifest import TreeManifest
from ..errors import ArtifactStoreError, CorruptObject, InvalidParameter, NotFound
from ..ids import format_id
from ..lifecycle.roots import hot_versions
from ..monitoring.alerts import parse_alert_key, raised_alerts
from ..monitoring.psi import EMPTY, RANK, Thresholds
from ..monitoring.report import DriftReport, drift_report, iso
from ..registry import queries
from ..registry.bundle import metric_values
from ..registry.gate import GateResult, gate_result
from ..registry.pointers import CANARY, KINDS, PRODUCTION, ROLLBACK_TARGET, STAGING
from ..registry.refs import ModelName, parse_version
from ..registry.registry import history_damaged, ref_target
from ..registry.review import Review, review_of
from ..registry.state import AuditEntry, ModelState, ref_key
from ..store import Store
from . import svg
from .history import Moment, Span, in_production, pointer_spans
from .release import ReleaseStatus, ReleaseView, fleet_status

LOG_PAGE = 200  # audit entries shown before "show all"
CHART_FEATURES = 12  # drift charts drawn per version before "show all"
SHOWN_METRIC_COLUMNS = 6


@dataclass(frozen=True)
class VersionSummary:
    """What the pages use of a version record: everything but its tensor table."""

    version: str
    change: str
    base_model: str
    created_at: str
    created_by: str
    description: str
    previous: str | None
    metrics: dict[str, Any]
    datasets: tuple[str, ...]
    adapter_hash: str
    bundle: str
    tensors: int
    adapter_bytes: int
    digests: frozenset[int]  # its tensors' digests, interned: what sharing compares

    @property
    def sort_key(self):
        return parse_version(self.version)


@dataclass(frozen=True)
class DriftSummary:
    """A version's newest window with values: its worst feature, and the alerts still open."""

    version: str
    status: str  # fine, watch, investigate; "empty": a baseline but no counts yet
    feature: str | None
    psi: float | None
    window: str | None
    open_alerts: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class ClientStorage:
    versions: int
    logical_bytes: int  # every version's bundle, in full
    stored_bytes: int  # the distinct chunks those bundles use, each once

    @property
    def dedup(self) -> float:
        return self.logical_bytes / self.stored_bytes if self.stored_bytes else 1.0


def drift_summary(report: DriftReport, raised: dict[str, dict]) -> DriftSummary:
    """The newest window of ``report`` that holds values, and the open alerts: for each feature of
    the version, its latest raised alert, while the feature is still at or above that status."""
    statuses = report.statuses()
    filled = [w for w in range(len(report.starts)) if (statuses[w] != EMPTY).any()]
    if not filled:
        return DriftSummary(report.version, EMPTY, None, None, None)
    w = filled[-1]
    worst = max(range(len(report.features)), key=lambda f: (RANK[str(statuses[w, f])], _finite(report.psi[w, f])))
    current = {f: str(statuses[w, i]) for i, f in enumerate(report.features)}
    latest: dict[str, dict[str, Any]] = {}
    for key, claim in raised.items():
        version, feature, window, status = parse_alert_key(key)
        if version == report.version and (feature not in latest or (window, RANK.get(status, 0)) > (
                latest[feature]["window"], RANK.get(latest[feature]["status"], 0))):
            latest[feature] = {"feature": feature, "window": window, "status": status, "psi": claim.get("psi"),
                               "raised_at": claim.get("raised_at"), "now": current.get(feature, EMPTY)}
    open_alerts = sorted((a for a in latest.values() if RANK.get(a["now"], -1) >= RANK.get(a["status"], 9)),
                         key=lambda a: (a["window"], a["feature"]), reverse=True)
    return DriftSummary(report.version, str(statuses[w, worst]), report.features[worst],
                        _finite(report.psi[w, worst]), iso(float(report.starts[w])), open_alerts)


def _finite(value: float) -> float:
    return -1.0 if math.isnan(value) else float(value)


class Dashboard:
    """The pages' data for one store. Safe to use from several threads: its caches hold immutable
    values, and two threads filling the same entry write the same value."""

    def __init__(self, store: Store, release_status: ReleaseStatus = fleet_status):
        self.store = store
        self.release_status = release_status
        self._heads: dict[ModelName, ModelState] = {}
        self._logs: dict[ModelName, tuple[str, tuple[AuditEntry, ...]]] = {}
        self._summaries: dict[str, VersionSummary] = {}
        self._digest_ids: dict[str, int] = {}
        self._trees: dict[str, tuple[int, tuple[bytes, ...]]] = {}
        self._storage: dict[str, tuple[frozenset[str], ClientStorage]] = {}
        self._drift: dict[ModelName, DriftSummary | None] = {}
        self._release: dict[ModelName, ReleaseView | None] = {}
        self._indexed = False  # every current version's summary is kept
        self._derived = 0  # counts changes of what the background pass computed
        self._refreshing = threading.Lock()
        self._interning = threading.Lock()

    # -- the registry, kept ---------------------------------------------------------------------

    def models(self) -> list[ModelName]:
        return self.store.registry.models()

    def head(self, model: ModelName) -> ModelState:
        """The model's current state: one ref read, and the state object when the ref moved."""
        data, _ = self.store.backend.read_ref(ref_key(model))
        if data is None:
            raise NotFound(f"no model {model} in the registry")
        state_id = ref_target(data, ref_key(model))
        cached = self._heads.get(model)
        if cached is not None and cached.id == state_id:
            return cached
        state = replace(self.store.registry.read_state_object(state_id), id=state_id)
        self._heads[model] = state
        return state

    def log(self, model: ModelName, head: ModelState) -> tuple[tuple[AuditEntry, ...], str | None]:
        """The audit log, oldest first, reading only the states added since the last call, and what
        is wrong with it: a damaged state in the middle of the history leaves what is newer (as
        ``artifactstore log`` does)."""
        cached_id, cached = self._logs.get(model, (None, ()))
        if cached_id == head.id:
            return cached, None
        newer: list[AuditEntry] = []
        reached, damaged = False, None
        try:
            for state_id, made in self.store.registry.trail(model, head.id):
                if state_id == cached_id:
                    reached = True
                    break
                newer.extend(reversed(made))
        except CorruptObject as exc:
            if not newer:
                raise
            damaged = str(history_damaged(model, newer, exc))
        entries = (cached if reached else ()) + tuple(reversed(newer))
        assert head.id is not None
        if damaged is None:
            self._logs[model] = (head.id, entries)
        return entries, damaged

    def summary(self, record_id: str) -> VersionSummary:
        found = self._summaries.get(record_id)
        if found is not None:
            return found
        record = self.store.registry.read_version_record(record_id)
        with self._interning:  # two threads must not give two digests one number
            tensors = record["tensors"].values()
            found = VersionSummary(
                record["version"], record["change"], record["base_model"], record["created_at"],
                record["created_by"], record.get("change_description", ""), record.get("previous"),
                metric_values(record["eval_scores"]), tuple(queries.datasets(record)), record["adapter_hash"],
                record["bundle"], len(record["tensors"]), sum(t["bytes"] for t in tensors),
                frozenset(self._digest_ids.setdefault(t["digest"], len(self._digest_ids)) for t in tensors))
            self._summaries[record_id] = found
        return found

    def versions(self, state: ModelState) -> list[VersionSummary]:
        """Every version of a model, oldest first."""
        return sorted((self.summary(r) for r in state.versions.values()), key=lambda s: s.sort_key)

    # -- change -----------------------------------------------------------------------------------

    def signature(self) -> str:
        """Changes whenever a model's ref moves, a model appears or goes, or the background pass
        computed something new: the pages' version (``/events``)."""
        registry = self.store.registry
        parts = [f"{m}={registry.ref_signature(m)}" for m in registry.models()]
        parts.append(f"derived={self._derived}")
        return hashlib.blake2b("\n".join(parts).encode(), digest_size=8).hexdigest()

    def refresh(self, *, drift: bool = True) -> None:
        """The background pass: every current version's summary, each client's storage, and (with
        ``drift``) every model's drift status. Runs one at a time."""
        with self._refreshing:
            heads = {}
            for model in self.models():
                try:
                    heads[model] = self.head(model)
                except ArtifactStoreError:
                    continue  # a damaged model shows its error on its own page
            changed = False
            for state in heads.values():
                for record_id in state.versions.values():
                    self.summary(record_id)
            if not self._indexed:
                self._indexed, changed = True, True
            for client in sorted({m.client for m in heads}):
                bundles = frozenset(self.summary(r).bundle for m, s in heads.items() if m.client == client
                                    for r in s.versions.values())
                if self._storage.get(client, (None,))[0] != bundles:
                    self._storage[client] = (bundles, self._client_storage(bundles))
                    changed = True
            if drift:
                for model, state in heads.items():
                    found = self._drift_of(model, state)
                    if found != self._drift.get(model, ...):
                        self._drift[model] = found
                        changed = True
            if changed:
                self._derived += 1

    def refresh_release(self) -> None:
        """Every model's rollout, serving nodes and last drill, for the overview: nodes report on
        their own clock, so this runs on a timer as well as when the registry moves."""
        with self._refreshing:
            changed = False
            for model in self.models():
                try:
                    found = self.release_status(self.store, model)
                except ArtifactStoreError:
                    continue  # a damaged model shows its error on its own page
                if found != self._release.get(model, ...):
                    self._release[model] = found
                    changed = True
            if changed:
                self._derived += 1

    def _client_storage(self, bundles: Iterable[str]) -> ClientStorage:
        chunks: dict[bytes, int] = {}
        files_seen: set[bytes] = set()
        logical = count = 0
        for bundle in bundles:
            size, files = self._tree(bundle)
            logical, count = logical + size, count + 1
            for file_id in files:
                if file_id not in files_seen:
                    files_seen.add(file_id)
                    manifest = self.store.content.read_manifest(format_id(file_id))
                    chunks.update(getattr(manifest, "chunks", []))
        return ClientStorage(count, logical, sum(chunks.values()))

    def _tree(self, tree_id: str) -> tuple[int, tuple[bytes, ...]]:
        found = self._trees.get(tree_id)
        if found is None:
            tree = self.store.content.read_manifest(tree_id)
            assert isinstance(tree, TreeManifest)
            found = self._trees[tree_id] = (tree.size, tuple(e.file for e in tree.entries))
        return found

    def _drift_of(self, model: ModelName, state: ModelState) -> DriftSummary | None:
        production = state.pointer(PRODUCTION)
        if production is None:
            return None
        report = self.drift(model, production)
        return None if report is None else drift_summary(report, raised_alerts(self.store.monitoring, model))

    def drift(self, model: ModelName, version: str, thresholds: Thresholds = Thresholds()) -> DriftReport | None:
        """A version's drift report; None without a baseline."""
        try:
            return drift_report(self.store.monitoring, model, version, thresholds=thresholds)
        except NotFound:
            return None

    # -- pages ------------------------------------------------------------------------------------

    def overview(self) -> dict[str, Any]:
        clients: dict[str, dict[str, Any]] = {}
        for model in self.models():
            client = clients.setdefault(model.client, {"name": model.client, "models": [],
                                                       "storage": self._storage.get(model.client, (None, None))[1]})
            try:
                state = self.head(model)
            except ArtifactStoreError as exc:
                client["models"].append({"name": model, "error": str(exc)})
                continue
            client["models"].append({
                "name": model, "error": None, "pointers": _pointers(state), "versions": len(state.versions),
                "newest": state.sorted_versions()[-1] if state.versions else None, "policy": state.policy is not None,
                "changed_at": state.entries[-1].at if state.entries else None,
                "drift": self._drift.get(model), "drift_known": model in self._drift,
                "release": self._release.get(model)})
        return {"clients": list(clients.values()), "store": self._store_facts(), "indexed": self._indexed,
                "release_reported": any(m.get("release") for c in clients.values() for m in c["models"])}

    def _store_facts(self) -> dict[str, Any]:
        content = self.store.content
        return {"location": self.store.location, "shared": content.shared, "cold": content.cold_url,
                "keep_hot": content.config.keep_hot}

    def model_page(self, name: str, *, at: str | None = None, metric: str | None = None,
                   version: str | None = None, full_log: bool = False, all_features: bool = False) -> dict[str, Any]:
        model = ModelName.parse(name)
        state = self.head(model)
        versions = self.versions(state)
        by_version = {s.version: s for s in versions}
        if version is not None and version not in by_version:
            raise NotFound(f"{model} has no version {version}")
        selected = version or state.pointer(PRODUCTION) or (versions[-1].version if versions else None)
        entries, log_damaged = self.log(model, state)
        gates = {s.version: gate_result(self.store.registry, state, s.version) for s in versions}
        reviews = {s.version: review_of(self.store.registry, state, s.version) for s in versions}
        metrics = list(dict.fromkeys(m for s in versions for m in s.metrics
                                     if isinstance(s.metrics[m], (int, float)) and not isinstance(s.metrics[m], bool)))
        if metric is not None and metric not in metrics:
            raise NotFound(f"no version of {model} has the metric {metric!r}")
        chosen_metric = metric or (metrics[0] if metrics else None)
        hot = set(hot_versions(state, self.store.keep_hot))
        tiered = self.store.content.cold is not None
        rows = [self._version_row(state, s, gates[s.version], reviews[s.version],
                                  ("hot" if s.version in hot else "cold") if tiered else None)
                for s in reversed(versions)]
        moment = Moment.parse(at) if at else None
        spans = pointer_spans(entries)
        return {
            "model": model, "state": state, "pointers": _pointers(state), "rows": rows,
            "metric_columns": metrics[:SHOWN_METRIC_COLUMNS], "metrics": metrics, "metric": chosen_metric,
            "metric_chart": self._metric_chart(state, versions, gates, chosen_metric) if chosen_metric else None,
            "selected": selected, "tiered": tiered,
            "timeline": self._timeline(spans, moment), "moment": moment,
            "in_production": in_production(spans, moment) if moment else None,
            "log": list(reversed(entries))[: None if full_log else LOG_PAGE], "log_total": len(entries),
            "log_damaged": log_damaged,
            "drift": self._drift_section(model, selected, all_features) if selected else None,
            "lineage": self._lineage(model, by_version[selected]) if selected else None,
            "policy": state.policy, "release": self.release_status(self.store, model),
            "review_versions": [s.version for s in reversed(versions)],
        }

    def _version_row(self, state: ModelState, summary: VersionSummary, gate: GateResult | None,
                     review: Review | None, where: str | None) -> dict[str, Any]:
        checks = {m.metric: m for m in gate.metrics} if gate else {}
        return {"summary": summary, "where": where, "pointers": state.where(summary.version),
                "gate": gate, "checks": checks, "review": review}

    def _metric_chart(self, state: ModelState, versions: list[VersionSummary], gates: dict[str, GateResult | None],
                      metric: str):
        values = [s.metrics.get(metric) if isinstance(s.metrics.get(metric), (int, float)) else None for s in versions]
        verdicts = []
        for s in versions:
            gate = gates[s.version]
            check = next((m for m in gate.metrics if m.metric == metric), None) if gate else None
            verdicts.append(check.verdict if check else None)
        marked = {v: kind.name.replace("_", " ") for kind in KINDS if (v := state.pointer(kind.name))}
        return svg.metric_chart(metric, [s.version for s in versions], values, verdicts, marked)

    def _timeline(self, spans: list[Span], moment: Moment | None):
        if not spans:
            return None
        end = max([now(), *(s.end for s in spans if s.end)])
        start = min(s.start for s in spans)
        if moment is not None:
            start, end = min(start, moment.start), max(end, moment.end)
        lanes = [kind.name for kind in KINDS if any(s.pointer == kind.name for s in spans)]
        highlighted = set(map(id, in_production(spans, moment))) if moment else set()
        bars = [svg.Bar(s.pointer, s.label, s.start.timestamp(), (s.end or end).timestamp(),
                        f"{s.pointer.replace('_', ' ')}: {s.label} from {s.start:%Y-%m-%d %H:%M} "
                        f"{'until ' + format(s.end, '%Y-%m-%d %H:%M') if s.end else 'until now'}",
                        id(s) in highlighted) for s in spans]
        marker = (moment.start.timestamp(), moment.end.timestamp()) if moment else None
        return svg.timeline_chart(lanes, bars, start.timestamp(), end.timestamp(), marker,
                                  moment.text if moment else "")

    def _drift_section(self, model: ModelName, version: str, all_features: bool) -> dict[str, Any] | None:
        report = self.drift(model, version)
        if report is None:
            return None
        summary = drift_summary(report, raised_alerts(self.store.monitoring, model))
        starts = report.starts.astype(float).tolist()
        statuses = report.statuses()
        charts = []
        for f, feature in enumerate(report.features[: None if all_features else CHART_FEATURES]):
            values = [None if math.isnan(v) else v for v in report.psi[:, f].tolist()]
            charts.append({"feature": feature, "latest": next((v for v in reversed(values) if v is not None), None),
                           "chart": svg.psi_chart(feature, starts, values, statuses[:, f].tolist(),
                                                  report.thresholds.watch, report.thresholds.investigate,
                                                  report.window_seconds)})
        return {"version": version, "summary": summary, "charts": charts, "features": len(report.features),
                "windows": len(starts), "thresholds": report.thresholds}

    def _lineage(self, model: ModelName, summary: VersionSummary) -> dict[str, Any]:
        """What ``summary`` was trained on and derived from, and which versions share its data or
        tensors: the answers of ``queries.lineage`` and ``queries.sharing``, from the kept summaries
        (once the background pass has read every version)."""
        found: dict[str, Any] = {"version": summary, "indexed": self._indexed}
        if not self._indexed:
            return found
        same_data: dict[str, list[str]] = {d: [] for d in summary.datasets}
        sharing: list[dict[str, Any]] = []
        this = f"{model}@{summary.version}"
        for other_model, state in list(self._heads.items()):
            for version, record_id in state.versions.items():
                other = self._summaries.get(record_id)
                ref = f"{other_model}@{version}"
                if other is None or ref == this:
                    continue
                for dataset in summary.datasets:
                    if dataset in other.datasets:
                        same_data[dataset].append(ref)
                shared = len(summary.digests & other.digests)
                if shared:
                    sharing.append({"ref": ref, "model": str(other_model), "version": version, "shared": shared})
        sharing.sort(key=lambda s: (-s["shared"], s["model"] != str(model), s["model"], parse_version(s["version"])))
        found.update(same_data=same_data, sharing=sharing[:20], sharing_total=len(sharing),
                     sharing_models=len({s["model"] for s in sharing}), of=len(summary.digests))
        return found

    def compare(self, name: str, a: str, b: str) -> dict[str, Any]:
        model = ModelName.parse(name)
        state = self.head(model)
        for version in (a, b):
            parse_version(version)
            if version not in state.versions:
                raise NotFound(f"{model} has no version {version}")
        if a == b:
            raise InvalidParameter("compare two different versions")
        older, newer = sorted((a, b), key=parse_version)
        ref_a, ref_b = f"{model}@{older}", f"{model}@{newer}"
        diff = queries.diff(self.store.registry, ref_a, ref_b)
        return {"model": model, "a": older, "b": newer, "diff": diff,
                "changed_tensors": [t for t in diff["tensors"] if t["status"] != "unchanged"],
                "changelog": queries.changelog(self.store.registry, ref_a, ref_b),
                "summaries": {v: self.summary(state.versions[v]) for v in (older, newer)},
                "where": {v: state.where(v) for v in (older, newer)},
                "versions": state.sorted_versions()[::-1]}


def _pointers(state: ModelState) -> dict[str, Any]:
    return {"production": state.pointer(PRODUCTION), "staging": state.pointer(STAGING),
            "canary": state.canary, "rollback_target": state.pointer(ROLLBACK_TARGET),
            "canary_version": state.pointer(CANARY)}

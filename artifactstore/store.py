"""``Store``: the whole product behind one object, for the CLI and for Python users.

A thin facade: it opens a content store and a registry over it and hands each call to the wing
that does the work (docs/architecture.md). Everything it offers can also be done by composing
``ContentStore``, ``Registry`` and the functions of ``lifecycle``, ``monitoring`` and ``serving`` directly.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .backends.remote import mask_secrets, mask_url
from .clock import now, timestamp
from .content.chunking import DEFAULT_PARAMS, ChunkerParams
from .content.config import DEFAULT_KEEP_HOT, StoreConfig
from .content.kept import keep
from .content.store import ContentStore, PutResult, StoreStats
from .progress import Progress, no_progress
from .registry import queries
from .registry.refs import ModelName
from .registry.registry import PushResult, Registry
from .registry.rules import release_rule, rollout_rule
from .registry.samples import SAMPLES_FILE
from .registry.state import AuditEntry, ModelState, default_actor

if TYPE_CHECKING:
    from .lifecycle.gc import GcReport
    from .lifecycle.roots import Roots
    from .lifecycle.tier import PullReport, TierReport
    from .monitoring.alerts import Alert, Deliver
    from .monitoring.arrays import MonitoringArrays
    from .monitoring.observe import BaselineReport, Monitor, PendingBaseline, RecordReport
    from .monitoring.psi import Thresholds
    from .monitoring.report import DriftReport
    from .monitoring.signals import EvalTrend, LabelledData, RetrainCheck, RetrainPolicy
    from .registry.fleet import FleetView
    from .registry.gate import GateResult
    from .registry.metrics import MetricsRecord
    from .registry.review import Review
    from .registry.rollout import TickReport
    from .release.drill import DrillReport
    from .serving.load import Loader

# The wings below are imported by the methods that use them, not here: every command opens a Store,
# and a command that reads a pointer should not pay for numpy, pydantic and zarr (CLI start time).


@dataclass(frozen=True)
class VerifyReport:
    ok: bool
    problems: list[str]
    repaired: list[str]


class Store:
    """A store: content-addressed data plus the version registry.

    Open an existing one with ``Store(path)`` (a directory, or ``s3://bucket/prefix`` for a store
    shared by many machines), create one with ``Store.init(path)``.
    """

    def __init__(self, location: str | os.PathLike, *, cache: str | os.PathLike | None = None):
        """See ``ContentStore.open`` for ``location`` and ``cache``."""
        self.content = ContentStore.open(location, cache=cache)
        # the release rule refuses production / canary moves a model's policy does not allow; the
        # rollout rule, hand-made canary moves while a rollout drives the canary
        self.registry = Registry(self.content, [release_rule, rollout_rule])

    @cached_property
    def monitoring(self) -> MonitoringArrays:
        from .monitoring.arrays import MonitoringArrays

        return MonitoringArrays(self.content)

    @cached_property
    def loader(self) -> Loader:
        """One per store: it remembers how it loaded recent files."""
        from .serving.load import Loader

        return Loader(self.content)

    @classmethod
    def init(cls, location: str | os.PathLike, chunker: ChunkerParams = DEFAULT_PARAMS, *, cold: str | None = None,
             keep_hot: int = DEFAULT_KEEP_HOT, cache: str | os.PathLike | None = None) -> "Store":
        """Create a store; see ``ContentStore.init``."""
        ContentStore.init(location, chunker, cold=cold, keep_hot=keep_hot, cache=cache)
        return cls(location, cache=cache)

    # -- where things are -------------------------------------------------------------------

    @property
    def location(self) -> str:
        return self.content.location

    @property
    def path(self) -> Path:
        return self.content.path

    @property
    def backend(self):
        return self.content.home

    @property
    def hot(self):
        return self.content.hot

    @property
    def cold(self):
        return self.content.cold

    @property
    def cold_url(self) -> str | None:
        return self.content.cold_url

    @property
    def shared(self) -> bool:
        return self.content.shared

    @property
    def keep_hot(self) -> int:
        return self.content.config.keep_hot

    @property
    def chunker(self) -> ChunkerParams:
        return self.content.config.chunker

    @property
    def index(self):
        return self.content.index

    def effective_config(self) -> dict[str, Any]:
        """What this store runs with, including the AWS settings from the environment, secrets masked."""
        aws = {k: v for k, v in sorted(os.environ.items()) if k.startswith("AWS_")}
        return {"store": mask_url(self.location), "hot": str(self.path.resolve()),
                "format_version": self.content.config.version, "chunker": self.chunker.as_kwargs(),
                "cold": mask_url(self.cold_url), "keep_hot": self.keep_hot, "environment": mask_secrets(aws)}

    def set_config(self, setting: str, value: str | int | None, *, actor: str | None = None,
                   reason: str = "") -> StoreConfig:
        """Change ``cold`` or ``keep_hot``; see ``ContentStore.change_setting``."""
        return self.content.change_setting(setting, value, actor=actor or default_actor(), reason=reason,
                                           at=timestamp())

    # -- content ----------------------------------------------------------------------------

    def put(self, path: str | os.PathLike, *, progress: Progress = no_progress) -> PutResult:
        """Store a file or a tree outside the registry; gc keeps it (content/kept.py)."""
        result = self.content.put(path, progress=progress)
        keep(self.content.home, result.id)
        return result

    def identify(self, path: str | os.PathLike) -> str:
        return self.content.identify(path)

    def get(self, object_id: str, dest: str | os.PathLike, *, progress: Progress = no_progress) -> None:
        self.content.get(object_id, dest, progress=progress)

    def read_manifest(self, object_id: str):
        return self.content.read_manifest(object_id)

    def stats(self) -> StoreStats:
        return self.content.stats()

    def checkout(self, ref: str, dest: str | os.PathLike, *, progress: Progress = no_progress) -> Path:
        """Write a version's ``adapter_weights/`` as a PEFT / vLLM adapter directory at ``dest``."""
        from .serving.adapters import check_out

        return check_out(self.content, self.resolve(ref), dest, label=ref, progress=progress)

    def verify(self, *, tier: str = "all", sample: float = 100.0, repair: bool = False,
               progress: Progress = no_progress) -> VerifyReport:
        """Re-hash chunks and check index files, manifests and the registry; name what is damaged.

        See ``verify_content`` for ``tier``, ``sample`` and ``repair``; ``repair`` also rebuilds
        damaged or missing refs (``repair_refs``).
        """
        from .content.verify import verify_content
        from .lifecycle.roots import missing_roots
        from .monitoring.verify import verify_monitoring
        from .registry.repair import repair_refs
        from .registry.verify import verify_registry

        problems, repairs = verify_content(self.content, progress, tier=tier, sample=sample, repair=repair)
        if repair:
            rebuilt, unrepairable = repair_refs(self.registry)
            repairs += rebuilt
            problems += unrepairable
        problems += verify_registry(self.registry)
        problems += missing_roots(self.registry, self.content)
        problems += verify_monitoring(self.monitoring)
        return VerifyReport(not problems, problems, repairs)

    # -- registry ---------------------------------------------------------------------------

    def push(self, bundle_dir, ref: str, *, bump: str | None = None, actor: str | None = None,
             reason: str = "") -> PushResult:
        return self.registry.push(bundle_dir, ref, bump=bump, actor=actor, reason=reason)

    def stage(self, ref: str, *, actor: str | None = None, reason: str = "", expect: str | None = None) -> ModelState:
        return self.registry.stage(ref, actor=actor, reason=reason, expect=expect)

    def promote(self, ref: str, *, actor: str | None = None, reason: str = "", expect: str | None = None,
                force: bool = False) -> ModelState:
        """Move production (``registry.promote``); a version without a drift baseline gets one from
        its bundle's eval_samples.jsonl, when it carries one. The baseline is taken before the move,
        so that a file it cannot be taken from refuses the promote with nothing changed, and
        written after it."""
        pending: list[PendingBaseline | None] = [None]  # the one the transaction's last try took

        def take_baseline(state: ModelState, version: str) -> None:
            bundle = self.content.read_manifest(self.registry.record(state, version)["bundle"])
            if not any(entry.path == SAMPLES_FILE for entry in getattr(bundle, "entries", ())):
                return  # nothing to take a baseline from: the monitoring wing (numpy, zarr) is not loaded
            from .monitoring.observe import promotion_baseline

            pending[0] = promotion_baseline(self.registry, self.monitoring, f"{state.model}@{version}")

        state = self._announced(self.registry.promote(ref, actor=actor, reason=reason, expect=expect, force=force,
                                                      prepare=take_baseline))
        if pending[0] is not None:
            pending[0].write(self.monitoring)
        return state

    def rollback(self, model: str, *, to: str | None = None, actor: str | None = None, reason: str = "",
                 expect: str | None = None, force: bool = False) -> ModelState:
        return self._announced(self.registry.rollback(model, to=to, actor=actor, reason=reason, expect=expect,
                                                      force=force))

    def set_canary(self, ref: str, percent: int, *, actor: str | None = None, reason: str = "",
                   expect: str | None = None, force: bool = False) -> ModelState:
        return self.registry.set_canary(ref, percent, actor=actor, reason=reason, expect=expect, force=force)

    def set_rollback_target(self, ref: str, *, actor: str | None = None, reason: str = "",
                            expect: str | None = None, force: bool = False) -> ModelState:
        return self.registry.set_rollback_target(ref, actor=actor, reason=reason, expect=expect, force=force)

    def pin(self, ref: str, *, actor: str | None = None, reason: str = "") -> ModelState:
        return self.registry.pin(ref, actor=actor, reason=reason)

    def unpin(self, ref: str, *, actor: str | None = None, reason: str = "") -> ModelState:
        return self.registry.unpin(ref, actor=actor, reason=reason)

    def delete(self, ref: str, *, actor: str | None = None, reason: str = "") -> ModelState:
        return self.registry.delete(ref, actor=actor, reason=reason)

    def state(self, model) -> ModelState:
        return self.registry.state(model)

    def states(self, model) -> Iterator[tuple[str, ModelState]]:
        return self.registry.states(model)

    def log(self, model, *, limit: int | None = None) -> list[AuditEntry]:
        return self.registry.log(model, limit=limit)

    def models(self):
        return self.registry.models()

    def resolve(self, ref: str) -> str:
        return self.registry.resolve(ref)

    def resolve_version(self, ref) -> tuple[ModelState, str]:
        return self.registry.resolve_version(ref)

    def route(self, ref: str, key: str | None = None) -> str:
        """The immutable name (``client/model@vX.Y.Z``) that serves a request for ``ref`` from
        ``key``: a canary gets its share of keys, each key keeps its version; see registry/routing.py."""
        from .registry.routing import route_ref

        return route_ref(self.registry, ref, key)

    def version_record(self, ref) -> dict[str, Any]:
        return self.registry.version_record(ref)

    def show(self, ref: str) -> dict[str, Any]:
        return queries.show(self.registry, ref)

    def ls(self, model: str | None = None) -> list[dict[str, Any]]:
        return queries.ls(self.registry, model)

    def export_registry(self) -> str:
        return queries.export_registry(self.registry)

    def lineage(self, *, training_data: str | None = None, adapter: str | None = None,
                base_model: str | None = None, shares_tensors_with: str | None = None) -> list[dict[str, Any]]:
        return queries.lineage(self.registry, training_data=training_data, adapter=adapter, base_model=base_model,
                               shares_tensors_with=shares_tensors_with)

    def sharing(self, ref: str) -> list[dict[str, Any]]:
        return queries.sharing(self.registry, ref)

    def diff(self, ref_a: str, ref_b: str) -> dict[str, Any]:
        return queries.diff(self.registry, ref_a, ref_b)

    def changelog(self, ref_a: str, ref_b: str) -> str:
        return queries.changelog(self.registry, ref_a, ref_b)

    # -- release control (docs/release.md) --------------------------------------------------

    def set_policy(self, model: str, path: str | os.PathLike, *, expect: str | None = None,
                   actor: str | None = None, reason: str = "") -> ModelState:
        from .registry.policy import set_policy

        return set_policy(self.registry, model, path, expect=expect, actor=actor, reason=reason)

    def policy(self, model: str) -> dict[str, Any]:
        from .registry.policy import show_policy

        return show_policy(self.registry, model)

    def gate(self, ref: str, *, accept: Iterable[str] = (), reason: str = "", actor: str | None = None,
             record: bool = True) -> GateResult:
        from .registry.gate import run_gate

        result, state = run_gate(self.registry, ref, accept=tuple(accept), reason=reason, actor=actor, record=record)
        if state is not None:
            self._announced(state)
        return result

    def review(self, ref: str, *, approve: bool, actor: str, samples: int, notes: str = "") -> Review:
        from .registry.review import record_review

        review, state = record_review(self.registry, ref, approve=approve, actor=actor, samples=samples, notes=notes)
        self._announced(state)
        return review

    def notice(self, ref: str, kind: str) -> dict[str, Any]:
        from .registry.notices import notice

        return notice(self.registry, ref, kind)  # type: ignore[arg-type]

    def deliver_hooks(self) -> dict[str, Any]:
        from .registry.hooks import deliver_pending

        return deliver_pending(self.registry)

    def hook_log(self, *, limit: int | None = None) -> list[dict[str, Any]]:
        from .registry.hooks import hook_log

        return hook_log(self.registry, limit=limit)

    # -- rollouts, fleet, drills (docs/release.md) ------------------------------------------

    def start_rollout(self, ref: str, *, actor: str | None = None, reason: str = "",
                      force: bool = False) -> ModelState:
        from .registry.rollout import start_rollout

        return self._announced(start_rollout(self.registry, ref, actor=actor, reason=reason, force=force))

    def rollout_status(self, model: str) -> dict[str, Any]:
        from .registry.rollout import rollout_status

        return rollout_status(self.registry, model)

    def pause_rollout(self, model: str, *, actor: str | None = None, reason: str = "") -> ModelState:
        from .registry.rollout import pause_rollout

        return self._announced(pause_rollout(self.registry, model, actor=actor, reason=reason))

    def resume_rollout(self, model: str, *, actor: str | None = None, reason: str = "") -> ModelState:
        from .registry.rollout import resume_rollout

        return self._announced(resume_rollout(self.registry, model, actor=actor, reason=reason))

    def abort_rollout(self, model: str, *, actor: str | None = None, reason: str = "") -> ModelState:
        from .registry.rollout import abort_rollout

        return self._announced(abort_rollout(self.registry, model, actor=actor, reason=reason))

    def record_metrics(self, model: str, records: Iterable[MetricsRecord | dict[str, Any]]) -> dict[str, Any]:
        from .registry.metrics import record_metrics

        return record_metrics(self.registry, model, records)

    def rollout_tick(self, model: str, *, actor: str | None = None) -> TickReport:
        from .registry.rollout import tick

        report = tick(self.registry, model, actor=actor)
        if report.state is not None:
            self._announced(report.state)
        return report

    def fleet(self, model: str) -> FleetView:
        from .registry.fleet import read_fleet

        return read_fleet(self.registry, model)

    def status(self, model: str, *, last_rollout: bool = True) -> dict[str, Any]:
        from .release.status import model_status

        return model_status(self.registry, model, last_rollout=last_rollout)

    def drill(self, model: str, *, max_seconds: float | None = None, actor: str | None = None,
              reason: str = "") -> DrillReport:
        from .release.drill import drill

        report = drill(self.registry, model, max_seconds=max_seconds, actor=actor, reason=reason)
        if report.state is not None:
            self._announced(report.state)
        return report

    def _announced(self, state: ModelState) -> ModelState:
        """``state``, after the events of its audit entries went to the model's hooks."""
        if state.policy is None:
            return state  # no policy, no hooks: the hooks' module (and what it imports) is not loaded
        from .registry.hooks import announce

        announce(self.registry, state)
        return state

    # -- lifecycle --------------------------------------------------------------------------

    def roots(self) -> Roots:
        from .lifecycle.roots import read_roots

        return read_roots(self.registry, self.keep_hot)

    def hot_versions(self) -> list[str]:
        return self.roots().hot_versions

    def tier(self, *, dry_run: bool = False, progress: Progress = no_progress) -> TierReport:
        from .lifecycle.tier import tier as tier_packs

        return tier_packs(self.content, self.roots(), dry_run=dry_run, progress=progress)

    def pull(self, ref: str, *, progress: Progress = no_progress) -> PullReport:
        from .lifecycle.tier import pull

        return pull(self.content, self.resolve(ref), progress=progress)

    def gc(self, *, dry_run: bool = False, grace: str = "1h", progress: Progress = no_progress,
           keep_telemetry: str | None = None) -> GcReport:
        from .lifecycle.gc import collect_garbage

        return collect_garbage(self.content, self.registry, dry_run=dry_run, grace=grace, progress=progress,
                               keep_telemetry=keep_telemetry)

    # -- monitoring ---------------------------------------------------------------------------

    def take_baseline(self, ref: str, samples: str | os.PathLike | None = None, *, window: str = "1h",
                      like: str | None = None) -> BaselineReport:
        """Freeze a version's drift baseline from a JSON Lines file of requests (and/or the bins of
        version ``like``); see ``take_file_baseline``."""
        from .monitoring.observe import take_file_baseline

        return take_file_baseline(self.registry, self.monitoring, ref, Path(samples) if samples else None,
                                  window=window, like=like)

    def monitor(self, ref: str, *, node: str | None = None, deliver: Deliver | None = None,
                thresholds: Thresholds | None = None) -> Monitor:
        """A ``Monitor`` counting the requests that version ``ref`` serves on this node; its alerts go
        to ``deliver`` and to the model's hooks, at the model's policy's thresholds unless given."""
        from .monitoring.observe import Monitor
        from .monitoring.versions import served

        version = served(self.registry, ref)
        return Monitor(self.monitoring, version, node=node, deliver=self._alerting(version.model, deliver),
                       thresholds=thresholds or self.drift_policy(version.model).thresholds)

    def record(self, ref: str, samples: str | os.PathLike, *, node: str | None = None,
               deliver: Deliver | None = None, thresholds: Thresholds | None = None) -> RecordReport:
        from .monitoring.observe import record_file
        from .monitoring.versions import served

        model = served(self.registry, ref).model
        return record_file(self.registry, self.monitoring, ref, Path(samples), node=node,
                           deliver=self._alerting(model, deliver),
                           thresholds=thresholds or self.drift_policy(model).thresholds)

    def drift(self, ref: str, *, since: str | float | None = None, against: str | None = None, prefix: str = "",
              thresholds: Thresholds | None = None) -> DriftReport:
        """PSI per feature and window (``client/model``: its production version); see ``drift_of``."""
        from .monitoring.report import drift_of
        from .monitoring.versions import served

        return drift_of(self.registry, self.monitoring, ref, since=since, against=against, prefix=prefix,
                        thresholds=thresholds or self.drift_policy(served(self.registry, ref).model).thresholds)

    def raise_alerts(self, ref: str, deliver: Deliver | None = None, thresholds: Thresholds | None = None) -> list[Alert]:
        from .monitoring.alerts import raise_alerts
        from .monitoring.versions import served

        version = served(self.registry, ref)
        return raise_alerts(self.monitoring, version.model, version.version, self._alerting(version.model, deliver),
                            now().timestamp(), thresholds or self.drift_policy(version.model).thresholds)

    def drift_policy(self, model: ModelName | str) -> RetrainPolicy:
        """The model's drift thresholds and retrain limits: its policy's ``drift`` section, or the seed's."""
        from .monitoring.psi import Thresholds
        from .monitoring.signals import RetrainPolicy
        from .registry.policy import DriftSection, policy_of

        policy = policy_of(self.registry, self.registry.state(model))
        drift = policy.drift if policy is not None else DriftSection()
        return RetrainPolicy(Thresholds(drift.watch, drift.investigate), drift.eval_metric, drift.max_eval_drop,
                             drift.min_data_growth)

    def _alerting(self, model: ModelName, also: Deliver | None) -> Deliver:
        """A drift alert to ``also`` (a printer, say) and, as a drift_watch or drift_investigate event,
        to the hooks of the model's policy that want it."""
        from .registry.hooks import event_for, send

        def deliver(alert: Alert) -> None:
            if also is not None:
                also(alert)
            state = self.registry.state(model)
            send(self.registry, state, lambda: [event_for(
                f"drift_{alert.status}", state, alert.version, feature=alert.feature, window=alert.window,
                psi=alert.psi, threshold=alert.threshold)])

        return deliver

    def record_eval(self, ref: str, scores: str | os.PathLike, *, node: str | None = None) -> EvalTrend:
        from .monitoring.signals import record_eval

        return record_eval(self.registry, self.monitoring, ref, Path(scores), node=node)

    def eval_trend(self, ref: str) -> EvalTrend:
        from .monitoring.signals import eval_trend

        return eval_trend(self.registry, self.monitoring, ref)

    def record_labelled(self, model: str, examples: int, *, node: str | None = None) -> LabelledData:
        from .monitoring.signals import record_labelled

        return record_labelled(self.registry, self.monitoring, model, examples, node=node)

    def labelled_data(self, model: str) -> LabelledData:
        from .monitoring.signals import labelled_data

        return labelled_data(self.registry, self.monitoring, model)

    def retrain_check(self, model: str, policy: RetrainPolicy | None = None) -> RetrainCheck:
        from .monitoring.signals import retrain_check

        return retrain_check(self.registry, self.monitoring, model, policy or self.drift_policy(model))

    # -- serving ----------------------------------------------------------------------------

    def load(self, ref_or_id: str, *, device: str = "cpu", framework: str = "numpy",
             names: Iterable[str] | None = None, label: str | None = None) -> dict[str, Any]:
        """The tensors of a version (``client/model@vX.Y.Z``, ``@POINTER``, ``@latest``) or of a
        stored safetensors file or tree (``b3:…``); see ``Loader.load`` (``label``: what messages call
        it, by default ``ref_or_id``)."""
        return self.loader.load(self.resolve(ref_or_id), device=device, framework=framework, names=names,
                                label=label or ref_or_id)

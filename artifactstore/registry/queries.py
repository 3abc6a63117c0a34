"""Registry queries: show, ls, export, lineage, diff and the client-facing change log."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from ..errors import CorruptObject, InvalidParameter, NotFound
from .pointers import PRODUCTION, ROLLBACK_TARGET, STAGING
from .refs import ModelName, parse_version
from .registry import Registry

if TYPE_CHECKING:
    from .policy import MetricDisplay

# Gate results, reviews and policies (pydantic) and YAML are imported by the queries that show
# them: `ls`, `lineage` and `sharing` start as fast as the registry itself (CLI start time).

TYPE_OF_CHANGE = {"major": "Base model upgrade", "minor": "Retraining", "patch": "Configuration update",
                  "initial": "Initial release"}
GATE_OUTCOME = {"pass": "passed", "accepted": "passed with accepted trade-offs", "fail": "failed"}


def _dict_changes(old: dict, new: dict) -> dict[str, dict[str, Any]]:
    return {k: {"from": old.get(k), "to": new.get(k)} for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}


# A metric whose name says it is a rate reads as a percentage when written as a fraction; any
# other number reads as written (a response time of 0.8 s is no 80%).
_RATE_NAME = re.compile(r"(accuracy|rate|precision|recall|f1|ratio|share|pass)", re.IGNORECASE)


def metric_label(path: str, display: MetricDisplay | None) -> str:
    return display.label if display and display.label else path


def metric_value(path: str, value, display: MetricDisplay | None) -> str:
    """A metric's value as a client reads it, by the model's display settings (policy ``display``)."""
    if value is None:
        return "—"
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return str(value)
    percent = display.percent if display and display.percent is not None else \
        bool(_RATE_NAME.search(path.rsplit(".", 1)[-1])) and 0 <= value <= 1
    decimals = display.decimals if display and display.decimals is not None else None
    unit = display.unit if display else ""
    if percent:
        return f"{value * 100:.{1 if decimals is None else decimals}f}%{unit}"
    return (f"{value:g}" if decimals is None else f"{value:.{decimals}f}") + unit


def show(registry: Registry, ref: str) -> dict[str, Any]:
    """A version's record, where its pointers are, and when it last went to production."""
    from .gate import gate_result
    from .review import review_of

    state, version = registry.resolve_version(ref)
    record = registry.record(state, version)
    if state.map_era:  # the state keeps each version's last deployment: no need to read the log
        deployed = state.deployments.get(version)
    else:
        moves = [e for e in registry.log(state.model) if e.pointer == PRODUCTION and e.to == version]
        deployed = {"at": moves[-1].at, "by": moves[-1].actor} if moves else None
    return {
        **{k: v for k, v in record.items() if k not in ("kind", "tensors", "adapter_settings")},
        "tensors": len(record["tensors"]),
        "adapter_bytes": sum(t["bytes"] for t in record["tensors"].values()),
        "pointers": state.where(version),
        "deployed_at": deployed["at"] if deployed else None,
        "deployed_by": deployed["by"] if deployed else None,
        "gate": _summary(gate_result(registry, state, version)),
        "review": _summary(review_of(registry, state, version)),
    }


class NoVersionMatches(NotFound):
    """What ``lineage`` raises when no version matches: an empty answer, which a caller may print as
    one all the same, unlike the NotFound of a ref that names nothing."""


def _summary(check) -> dict[str, Any] | None:
    return None if check is None else check.summary()


def ls(registry: Registry, model: str | None = None) -> list[dict[str, Any]]:
    """Every model (or one), its versions newest first and where each pointer is. Listing every
    model, one whose ref or state is damaged is ``{"model", "damaged": message}``: it must not hide
    the others (``verify --repair`` rebuilds it); one model asked for by name fails as it is."""
    names = [ModelName.parse(model)] if model else registry.models()
    listing: list[dict[str, Any]] = []
    for name in names:
        try:
            state = registry.state(name)
        except CorruptObject as exc:
            if model:
                raise
            listing.append({"model": str(name), "damaged": str(exc)})
            continue
        listing.append({
            "model": str(name), "versions": state.sorted_versions()[::-1], **state.pointer_fields(),
            "pins": list(state.pins)})
    return listing


def export_registry(registry: Registry) -> str:
    """The seeds' registry YAML: clients → models → pointers and available versions."""
    import yaml

    from .gate import gate_result

    clients: dict[str, Any] = {}
    for entry in ls(registry):
        client, model = entry["model"].split("/")
        models = clients.setdefault(client, {"models": {}})["models"]
        if "damaged" in entry:
            models[model] = {"damaged": entry["damaged"]}
            continue
        exported = models[model] = {
            "production": entry[PRODUCTION], "staging": entry[STAGING],
            "available_versions": entry["versions"], "rollback_target": entry[ROLLBACK_TARGET]}
        state = registry.state(entry["model"])
        if state.policy is not None:
            exported["policy"] = state.policy
        gates = {v: result.verdict for v in entry["versions"] if (result := gate_result(registry, state, v))}
        if gates:
            exported["gate"] = gates  # each version's latest gate verdict: pass, accepted or fail
    return yaml.safe_dump({"clients": clients}, sort_keys=False)


def datasets(record: dict[str, Any]) -> list[str]:
    """The training-data hashes of a version (records of one dataset carry only the first field)."""
    return record.get("training_data_hashes") or [record["training_data_hash"]]


def _every_record(registry: Registry):
    for name in registry.models():
        state = registry.state(name)
        for version in state.sorted_versions():
            yield f"{name}@{version}", registry.record(state, version)


def lineage(registry: Registry, *, training_data: str | None = None, adapter: str | None = None,
            base_model: str | None = None, shares_tensors_with: str | None = None) -> list[dict[str, Any]]:
    """Versions trained on a dataset, carrying an adapter hash, built on a base model, or holding
    tensors of another version (``shares_tensors_with``, a ref: what a data removal must also
    consider). NotFound when none matches."""
    given = {"--training-data": training_data, "--adapter": adapter, "--base-model": base_model,
             "--shares-tensors-with": shares_tensors_with}
    wanted = {k: v for k, v in given.items() if v is not None}
    if len(wanted) != 1:
        raise InvalidParameter(f"lineage needs exactly one of {', '.join(given)}")
    (option, value), = wanted.items()
    if option == "--shares-tensors-with":
        found = sharing(registry, value)
    else:
        matches = {"--training-data": lambda r: value in datasets(r), "--adapter": lambda r: r["adapter_hash"] == value,
                   "--base-model": lambda r: r["base_model"] == value}[option]
        found = [{"ref": ref, "created_at": record["created_at"], "base_model": record["base_model"],
                  "adapter_hash": record["adapter_hash"], "training_data": datasets(record)}
                 for ref, record in _every_record(registry) if matches(record)]
    if not found:
        raise NoVersionMatches(f"no version matches {option} {value}")
    return found


def sharing(registry: Registry, ref: str) -> list[dict[str, Any]]:
    """Every other version holding some of ``ref``'s tensors (the same bytes), with how many."""
    state, version = registry.resolve_version(ref)
    asked = f"{state.model}@{version}"
    digests = {t["digest"] for t in registry.record(state, version)["tensors"].values()}
    found = []
    for other, record in _every_record(registry):
        shared = sum(t["digest"] in digests for t in record["tensors"].values())
        if other != asked and shared:
            found.append({"ref": other, "created_at": record["created_at"], "base_model": record["base_model"],
                          "adapter_hash": record["adapter_hash"], "training_data": datasets(record),
                          "shared_tensors": shared, "of": len(digests)})
    return found


def diff(registry: Registry, ref_a: str, ref_b: str) -> dict[str, Any]:
    """What changed from A to B: base model, each tensor, configs, metrics."""
    from .bundle import metric_values
    from .gate import gate_result

    a, b = registry.version_record(ref_a), registry.version_record(ref_b)
    tensors = []
    for name in sorted(set(a["tensors"]) | set(b["tensors"])):
        old, new = a["tensors"].get(name), b["tensors"].get(name)
        status = "added" if old is None else "removed" if new is None else \
            "unchanged" if old == new else "changed"
        tensors.append({"name": name, "status": status, "bytes": (new or old)["bytes"]})
    summary = {s: {"count": sum(t["status"] == s for t in tensors),
                   "bytes": sum(t["bytes"] for t in tensors if t["status"] == s)}
               for s in ("changed", "unchanged", "added", "removed")}
    metrics = {}
    scores_a, scores_b = metric_values(a["eval_scores"]), metric_values(b["eval_scores"])
    for metric in sorted(set(scores_a) | set(scores_b)):
        old, new = scores_a.get(metric), scores_b.get(metric)
        metrics[metric] = {"from": old, "to": new,
                           "delta": None if old is None or new is None else new - old}
    return {
        "from": f"{a['client']}/{a['model']}@{a['version']}", "to": f"{b['client']}/{b['model']}@{b['version']}",
        "base_model": {"from": a["base_model"], "to": b["base_model"], "changed": a["base_model"] != b["base_model"]},
        "adapter_hash": {"from": a["adapter_hash"], "to": b["adapter_hash"]},
        "tensor_summary": summary, "tensors": tensors,
        "training_config": _dict_changes(a["training_config"], b["training_config"]),
        "inference_config": _dict_changes(a["inference_config"], b["inference_config"]),
        "adapter_settings": _dict_changes(a["adapter_settings"], b["adapter_settings"]),
        "training_data_changed": datasets(a) != datasets(b),
        "metrics": metrics,
        "gate": _summary(gate_result(registry, *registry.resolve_version(ref_b))),
    }


def changelog(registry: Registry, ref_a: str, ref_b: str) -> str:
    """The seeds' client-facing change log (Markdown) for moving from A to B: clear, non-technical,
    about outcomes. What changed comes from B's changelog.md (its list items; a "Known Limitations"
    section of it joins B's accepted gate trade-offs), metrics read by the model's display settings
    (policy ``display``), and the rollback plan says when a rollback is no instant swap."""
    from .gate import gate_result
    from .policy import policy_of

    a, b = registry.version_record(ref_a), registry.version_record(ref_b)
    if parse_version(b["version"]) <= parse_version(a["version"]) and a["model"] == b["model"]:
        raise InvalidParameter(f"changelog goes from an older to a newer version: {ref_a} is not older than {ref_b}")
    state_b, version_b = registry.resolve_version(ref_b)
    policy = policy_of(registry, state_b)
    display = policy.display if policy is not None else {}
    d = diff(registry, ref_a, ref_b)
    notes = _changelog_sections(registry, b)
    what = notes.get("what changed") or [b["change_description"]]
    if d["base_model"]["changed"]:
        what.append(f"Moved to a new base model, {b['base_model']}")
    if d["training_data_changed"] and not notes.get("what changed"):
        what.append("Trained on updated data")
    rows = [f"| {metric_label(m, display.get(m))} | {metric_value(m, v['from'], display.get(m))} | "
            f"{metric_value(m, v['to'], display.get(m))} |"
            for m, v in d["metrics"].items() if not (display.get(m) and display[m].hidden)]
    gate = gate_result(registry, state_b, version_b)
    verdict = [] if gate is None else [f"**Evaluation gate:** {GATE_OUTCOME[gate.verdict]} against "
                                       f"{gate.production or 'no production version'}"]
    limitations = notes.get("known limitations", []) + ([] if gate is None else [
        f"{metric_label(m.metric, display.get(m.metric))}: {metric_value(m.metric, m.production, display.get(m.metric))}"
        f" → {metric_value(m.metric, m.candidate, display.get(m.metric))} ({m.accepted['reason']})"
        for m in gate.metrics if m.verdict == "accepted" and m.accepted])
    if d["base_model"]["changed"]:
        rollback = (f"Previous version ({a['version']}) remains available. It runs on the previous base model "
                    f"({a['base_model']}), so returning to it means switching base models: a planned restart of "
                    "the serving processes, not an instant swap.")
    else:
        rollback = f"Previous version ({a['version']}) is available for instant rollback if any issues arise."
    return "\n".join([
        f"## Model Update: {b['client']}/{b['model']} {b['version']}",
        "",
        f"**Date:** {b['created_at'][:10]}",
        f"**Type:** {TYPE_OF_CHANGE[_kind_of_change(d, a, b)]}",
        *verdict,
        "",
        "### What Changed",
        *(f"- {line}" for line in what),
        "",
        "### Performance Comparison",
        f"| Metric | Previous ({a['version']}) | Updated ({b['version']}) |",
        "|--------|-------------------|-------------------|",
        *rows,
        "",
        *(["### Known Limitations", *(f"- {line}" for line in limitations), ""] if limitations else []),
        "### Rollback Plan",
        rollback,
        "",
    ])


def _kind_of_change(d: dict[str, Any], a: dict[str, Any], b: dict[str, Any]) -> str:
    """The versioning rules' kind of the change from record A to record B (their ``diff`` ``d``):
    B's own ``change`` is against its previous version, which need not be A."""
    from .bundle import canonical_settings  # records written before settings were stored sorted compare too

    if d["base_model"]["changed"]:
        return "major"
    tensors = d["tensor_summary"]
    if any(tensors[status]["count"] for status in ("changed", "added", "removed")) or \
            canonical_settings(a["adapter_settings"]) != canonical_settings(b["adapter_settings"]):
        return "minor"
    return "patch"


def _changelog_sections(registry: Registry, record: dict[str, Any]) -> dict[str, list[str]]:
    """The list items of a version's changelog.md by the heading they stand under ("what changed",
    "known limitations"; items before any heading count as what changed)."""
    data = registry.content.read_tree_file(record["bundle"], "changelog.md")
    sections: dict[str, list[str]] = {}
    heading = "what changed"
    for line in (data or b"").decode("utf-8", "replace").splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            title = stripped.lstrip("#").strip().lower()
            heading = "known limitations" if "limitation" in title else \
                "what changed" if "change" in title or heading == "what changed" else title
        elif stripped[:2] in ("- ", "* "):
            sections.setdefault(heading, []).append(stripped[2:].strip())
    return sections

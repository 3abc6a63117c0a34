"""Registry commands: push, pointer moves, pins, delete, and the queries."""

import json
from dataclasses import asdict
from pathlib import Path

import click

from ..errors import HistoryDamaged
from ..registry.pointers import KINDS
from ..registry.queries import NoVersionMatches
from ..store import Store
from .base import (
    audit_options,
    cli,
    emit_json,
    human_bytes,
    json_option,
    move_options,
    store_option,
)

force_option = click.option("--force", is_flag=True,
                            help="Move even where the model's release policy refuses; needs --reason, and the "
                                 "audit log records the override.")


def state_summary(state) -> dict:
    return {"model": str(state.model), **state.pointer_fields(), "pins": list(state.pins),
            "entries": [e.to_json() for e in state.entries]}


def report_state(state, as_json: bool) -> None:
    if as_json:
        emit_json(state_summary(state))
        return
    for e in state.entries:
        share = f" ({e.percent}%)" if e.percent is not None else ""
        if e.pointer is None:
            click.echo(f"{state.model}: {e.action} {e.to or e.from_}")
        else:
            click.echo(f"{state.model}@{e.pointer}: {e.from_ or '-'} -> {e.to or '-'}{share}")
        if e.override:
            click.echo(f"  override recorded: {e.override}")


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("ref")
@click.option("--bump", type=click.Choice(["auto"]), help="Pick the next version from what changed.")
@click.option("--by", "actor", metavar="WHO", help="Who pushes (default: $ARTIFACTSTORE_ACTOR or user@host).")
@click.option("--reason", default="", help="Recorded in the audit log (default: the change description).")
@store_option
@json_option
def push(bundle: Path, ref: str, bump: str | None, actor: str | None, reason: str, store_path: str,
         as_json: bool) -> None:
    """Store BUNDLE as version REF (client/model@vX.Y.Z, or client/model with --bump auto)."""
    result = Store(store_path).push(bundle, ref, bump=bump, actor=actor, reason=reason)
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    if as_json:
        emit_json(asdict(result))
    elif result.created:
        click.echo(f"{result.ref} ({result.change}) {result.bundle}")
        click.echo(f"{human_bytes(result.logical_bytes)} logical, {human_bytes(result.new_bytes)} new", err=True)
    else:
        click.echo(f"{result.ref} already exists with identical content; nothing changed")


@cli.command()
@click.argument("ref")
@move_options
@store_option
@json_option
def stage(ref, actor, reason, expect, store_path, as_json) -> None:
    """Point staging at REF."""
    report_state(Store(store_path).stage(ref, actor=actor, reason=reason, expect=expect), as_json)


@cli.command()
@click.argument("ref")
@move_options
@force_option
@store_option
@json_option
def promote(ref, actor, reason, expect, force, store_path, as_json) -> None:
    """Point production at REF; the previous production becomes the rollback target."""
    report_state(Store(store_path).promote(ref, actor=actor, reason=reason, expect=expect, force=force), as_json)


@cli.command()
@click.argument("model")
@click.option("--to", "to", metavar="VERSION", help="Roll back to VERSION instead of the rollback target.")
@move_options
@force_option
@store_option
@json_option
def rollback(model, to, actor, reason, expect, force, store_path, as_json) -> None:
    """Point MODEL's production back at its rollback target (or --to VERSION)."""
    report_state(Store(store_path).rollback(model, to=to, actor=actor, reason=reason, expect=expect, force=force),
                 as_json)


@cli.command()
@click.argument("ref")
@click.option("--percent", type=click.IntRange(0, 100), required=True,
              help="Share of traffic for REF; 0 ends the canary.")
@move_options
@force_option
@store_option
@json_option
def canary(ref, percent, actor, reason, expect, force, store_path, as_json) -> None:
    """Route PERCENT of traffic to REF as a canary."""
    report_state(Store(store_path).set_canary(ref, percent, actor=actor, reason=reason, expect=expect, force=force),
                 as_json)


@cli.command()
@click.argument("ref")
@audit_options
@store_option
@json_option
def pin(ref, actor, reason, store_path, as_json) -> None:
    """Pin REF: kept in the hot tier and by garbage collection."""
    report_state(Store(store_path).pin(ref, actor=actor, reason=reason), as_json)


@cli.command()
@click.argument("ref")
@audit_options
@store_option
@json_option
def unpin(ref, actor, reason, store_path, as_json) -> None:
    """Remove REF's pin."""
    report_state(Store(store_path).unpin(ref, actor=actor, reason=reason), as_json)


@cli.command()
@click.argument("ref")
@audit_options
@store_option
@json_option
def delete(ref, actor, reason, store_path, as_json) -> None:
    """Remove version REF from the registry; gc then reclaims what only it used. Says which kept
    versions hold some of its tensors: those bytes stay in the store."""
    store = Store(store_path)
    kept = store.sharing(ref)
    state = store.delete(ref, actor=actor, reason=reason)
    if as_json:
        emit_json({**state_summary(state), "shared_with": kept})
        return
    report_state(state, as_json)
    for entry in kept:
        click.echo(f"note: {entry['ref']} holds {entry['shared_tensors']} of {ref}'s {entry['of']} tensors; "
                   "their bytes stay in the store while it exists", err=True)


@cli.command()
@click.argument("ref")
@store_option
@json_option
def show(ref: str, store_path: str, as_json: bool) -> None:
    """Everything recorded about version REF."""
    info = Store(store_path).show(ref)
    if as_json:
        emit_json(info)
        return
    for key, value in info.items():
        shown = json.dumps(value) if isinstance(value, (dict, list)) else value
        click.echo(f"{key:20} {shown}")


@cli.command(name="ls")
@click.argument("model", required=False)
@store_option
@json_option
def list_models(model: str | None, store_path: str, as_json: bool) -> None:
    """Clients, models, versions, and where each pointer is."""
    listing = Store(store_path).ls(model)
    if as_json:
        emit_json({"models": listing})
        return
    for entry in listing:
        click.echo(entry["model"])
        if "damaged" in entry:
            click.echo(f"  damaged: {entry['damaged']} (`artifactstore verify --repair` rebuilds a damaged ref)")
            continue
        for version in entry["versions"]:
            names = []
            for kind in KINDS:
                named = entry[kind.name]
                if kind.carries_percent and named and named["version"] == version:
                    names.append(f"{kind.name} {named['percent']}%")
                elif named == version:
                    names.append(kind.name)
            if version in entry["pins"]:
                names.append("pinned")
            click.echo(f"  {version:12} {', '.join(names)}")


@cli.command()
@click.argument("model")
@click.option("--limit", type=click.IntRange(min=1), metavar="N",
              help="Only the newest N entries (reads only the states that hold them).")
@store_option
@json_option
def log(model: str, limit: int | None, store_path: str, as_json: bool) -> None:
    """MODEL's audit log: every push and pointer move, oldest first. Where a state in the middle of
    the history is damaged, the entries newer than it are printed, then the error."""
    damage: HistoryDamaged | None = None
    try:
        entries = Store(store_path).log(model, limit=limit)
    except HistoryDamaged as exc:
        entries, damage = exc.entries, exc
    if as_json:
        emit_json({"model": model, "entries": [e.to_json() for e in entries]}
                  | ({"damaged": str(damage)} if damage is not None else {}))
    else:
        for e in entries:
            override = f" [override: {e.override}]" if e.override else ""
            click.echo(f"{e.seq:>4}  {e.at[:19]}  {e.actor:<20}  {e.action:<9}  {e.pointer or '-':<15}  "
                       f"{_short(e.from_):>14} -> {_short(e.to):<14}  {e.reason}{override}")
    if damage is not None:
        raise damage


def _short(value: str | None) -> str:
    """A version as it is; an id (a policy's) cut to what tells it apart at a glance."""
    if value is None:
        return "-"
    return value[:15] + "…" if value.startswith("b3:") else value


@cli.group()
def registry() -> None:
    """The registry as a whole."""


@registry.command(name="export")
@store_option
def export_registry(store_path: str) -> None:
    """Print the registry YAML (clients, models, pointers, available versions)."""
    click.echo(Store(store_path).export_registry(), nl=False)


@cli.command()
@click.option("--training-data", metavar="HASH", help="Versions trained on this dataset (sha256:… or b3:…).")
@click.option("--adapter", metavar="HASH", help="Versions whose adapter_model.safetensors has this id (b3:…).")
@click.option("--base-model", metavar="NAME", help="Versions built on this base model.")
@click.option("--shares-tensors-with", metavar="REF",
              help="Other versions holding some of REF's tensors: what a data removal of REF must consider.")
@store_option
@json_option
def lineage(training_data, adapter, base_model, shares_tensors_with, store_path, as_json) -> None:
    """Versions trained on a dataset, with an adapter hash, on a base model, or sharing tensors with
    a version. Exit status 1 when none matches."""
    try:
        found = Store(store_path).lineage(training_data=training_data, adapter=adapter, base_model=base_model,
                                          shares_tensors_with=shares_tensors_with)
    except NoVersionMatches:
        if as_json:  # an answer, if an empty one: --json prints it, and the exit status says it is empty
            emit_json({"versions": []})
        raise
    if as_json:
        emit_json({"versions": found})
        return
    for entry in found:
        shared = f"  shares {entry['shared_tensors']} of {entry['of']} tensors" if "shared_tensors" in entry else ""
        click.echo(f"{entry['ref']:32} {entry['created_at']} {entry['base_model']}{shared}")


@cli.command()
@click.argument("ref_a")
@click.argument("ref_b")
@store_option
@json_option
def diff(ref_a, ref_b, store_path, as_json) -> None:
    """What changed from REF_A to REF_B: base model, tensors, configs, metrics."""
    d = Store(store_path).diff(ref_a, ref_b)
    if as_json:
        emit_json(d)
        return
    base = d["base_model"]
    click.echo(f"{d['from']} -> {d['to']}")
    click.echo(f"base model: {base['from']}" + (f" -> {base['to']}" if base["changed"] else " (unchanged)"))
    for status, counts in d["tensor_summary"].items():
        click.echo(f"tensors {status:10} {counts['count']:5}  {human_bytes(counts['bytes'])}")
    for section in ("adapter_settings", "training_config", "inference_config"):
        for key, change in d[section].items():
            click.echo(f"{section}.{key}: {change['from']} -> {change['to']}")
    for metric, m in d["metrics"].items():
        delta = "" if m["delta"] is None else f" ({m['delta']:+.4g})"
        click.echo(f"metric {metric}: {m['from']} -> {m['to']}{delta}")
    if d["gate"]:
        gate = d["gate"]
        failed = f": {', '.join(gate['failed'] or list(gate['accepted']))}" if gate["verdict"] != "pass" else ""
        click.echo(f"gate of {d['to']}: {gate['verdict']} against {gate['production'] or 'no production'}{failed}")


@cli.command()
@click.argument("ref_a")
@click.argument("ref_b")
@store_option
def changelog(ref_a, ref_b, store_path) -> None:
    """The client-facing change log (Markdown) from REF_A to REF_B."""
    click.echo(Store(store_path).changelog(ref_a, ref_b), nl=False)

"""Release control commands: policy, gate, review, target, notice, hooks (docs/release.md)."""

import sys
from dataclasses import asdict
from pathlib import Path

import click

from ..errors import ArtifactStoreError
from ..store import Store
from .base import audit_options, cli, emit_json, json_option, store_option
from .registry import force_option, report_state


@cli.group()
def policy() -> None:
    """A model's release policy: the eval gate, review, hooks."""


@policy.command(name="set")
@click.argument("model")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--expect", metavar="POLICY_ID", help="Refuse unless the model's policy is POLICY_ID now ('none': "
                                                     "it has none).")
@audit_options
@store_option
@json_option
def set_policy(model, file, expect, actor, reason, store_path, as_json) -> None:
    """Make FILE (YAML or JSON) MODEL's release policy, in one audited transaction."""
    state = Store(store_path).set_policy(model, file, expect=expect, actor=actor, reason=reason)
    entry = state.entries[-1]
    if as_json:
        emit_json({"model": str(state.model), "policy": state.policy, "previous": entry.from_,
                   "entries": [e.to_json() for e in state.entries]})
    else:
        click.echo(f"{state.model}: policy {state.policy} (was {entry.from_ or 'none'})")


@policy.command(name="show")
@click.argument("model")
@store_option
@json_option
def show_policy(model, store_path, as_json) -> None:
    """MODEL's release policy: its id, who set it, and every setting."""
    shown = Store(store_path).policy(model)
    if as_json:
        emit_json(shown)
    elif shown["policy"] is None:
        click.echo(f"{shown['model']} has no release policy: promote is not gated, and `gate` applies the default "
                   f"(no metric more than 2 points worse)")
    else:
        from ..registry.policy import policy_yaml  # pydantic: loaded by the policy commands only

        click.echo(f"# {shown['model']}: policy {shown['policy']}")
        click.echo(f"# set by {shown['set_by']} at {shown['set_at']}" + (f": {shown['reason']}" if shown["reason"]
                                                                        else ""))
        click.echo(policy_yaml(shown["settings"]), nl=False)


def _value(value, scale) -> str:
    if value is None:
        return "-"
    if scale == "fraction":
        return f"{value * 100:.1f}%"
    if scale == "percent":
        return f"{value:.1f}%"
    return f"{value:.4g}"


def _difference(value, scale, sign: bool) -> str:
    if value is None:
        return "-"
    if scale is None:
        return f"{value:+.4g}" if sign else f"{value:.4g}"
    points = value * 100 if scale == "fraction" else value
    return f"{points:+.1f} pts" if sign else f"{points:.1f} pts"


@cli.command()
@click.argument("ref")
@click.option("--accept", "accept", multiple=True, metavar="METRIC",
              help="Accept this failing metric as a trade-off (repeat for several); needs --reason.")
@click.option("--reason", default="", help="Why the trade-off is acceptable; recorded with the result.")
@click.option("--by", "actor", metavar="WHO", help="Who runs the gate (default: $ARTIFACTSTORE_ACTOR or user@host).")
@click.option("--dry-run", is_flag=True, help="Compute the verdict without recording it.")
@store_option
@json_option
def gate(ref, accept, reason, actor, dry_run, store_path, as_json) -> None:
    """REF's eval results against production's, metric by metric; exit status 1 when it fails."""
    result = Store(store_path).gate(ref, accept=accept, reason=reason, actor=actor, record=not dry_run)
    if as_json:
        emit_json(result.to_json() | {"id": result.id})
    else:
        against = f"production {result.production}" if result.production else "no production version"
        click.echo(f"{result.model}@{result.version} against {against} "
                   f"(policy {result.policy or 'none: the default gate'})")
        width = max([len("metric")] + [len(m.metric) + 9 for m in result.metrics])
        click.echo(f"{'metric':{width}} {'production':>10} {'candidate':>10} {'change':>10} {'allowed':>10}  verdict")
        for m in result.metrics:
            name = f"{m.metric} ({m.direction})" if m.direction == "lower" else m.metric
            click.echo(f"{name:{width}} {_value(m.production, m.scale):>10} {_value(m.candidate, m.scale):>10} "
                       f"{_difference(m.change, m.scale, True):>10} {_difference(m.allowed, m.scale, False):>10}  "
                       f"{m.verdict.upper():8} {m.note}"
                       + (f" — accepted by {m.accepted['by']}: {m.accepted['reason']}" if m.accepted else ""))
        recorded = f"recorded as {result.id}" if result.id else "not recorded (--dry-run)"
        click.echo(f"gate: {result.verdict.upper()}; {recorded}")
    if not result.passed:
        sys.exit(1)


@cli.command()
@click.argument("ref")
@click.option("--approve", is_flag=True, help="The reviewer approves (give this or --reject).")
@click.option("--reject", is_flag=True, help="The reviewer rejects (give this or --approve).")
@click.option("--by", "actor", metavar="WHO", required=True, help="The reviewer.")
@click.option("--samples", type=click.IntRange(min=1), required=True, metavar="N",
              help="How many outputs were reviewed.")
@click.option("--notes", default="", help="What the reviewer saw; recorded with the review.")
@store_option
@json_option
def review(ref, approve, reject, actor, samples, notes, store_path, as_json) -> None:
    """Record a human review of REF: approved or rejected after reviewing N outputs."""
    if approve == reject:  # neither, or both: a verdict is never guessed
        raise click.UsageError("give one of --approve and --reject")
    recorded = Store(store_path).review(ref, approve=approve, actor=actor, samples=samples, notes=notes)
    if as_json:
        emit_json(asdict(recorded))
    else:
        click.echo(f"{recorded.model}@{recorded.version}: {'approved' if recorded.approved else 'rejected'} by "
                   f"{recorded.by} after {recorded.samples} outputs (review {recorded.id})")


@cli.group()
def target() -> None:
    """The rollback target: the version a rollback returns production to."""


@target.command(name="set")
@click.argument("ref")
@click.option("--expect", metavar="VERSION", help="Refuse unless the rollback target is at VERSION now ('none': unless it is unset).")
@audit_options
@force_option
@store_option
@json_option
def set_target(ref, expect, actor, reason, force, store_path, as_json) -> None:
    """Name REF's version as its model's rollback target (one that never served needs production's checks)."""
    report_state(Store(store_path).set_rollback_target(ref, actor=actor, reason=reason, expect=expect, force=force),
                 as_json)


@cli.command()
@click.argument("ref")
@click.option("--kind", type=click.Choice(["rollback", "update"]), required=True,
              help="rollback: the notice that production went back to REF; update: the change log to REF.")
@store_option
@json_option
def notice(ref, kind, store_path, as_json) -> None:
    """The client-facing message about REF (the seeds' templates)."""
    message = Store(store_path).notice(ref, kind)
    if as_json:
        emit_json(message)
    else:
        click.echo(message["text"], nl=False)


@cli.group()
def hooks() -> None:
    """Deliveries of events to the hooks of models' policies."""


@hooks.command(name="deliver")
@store_option
@json_option
def deliver(store_path, as_json) -> None:
    """Retry every undelivered event, with backoff; exit status 1 while some stay undelivered."""
    report = Store(store_path).deliver_hooks()
    if as_json:
        emit_json(report)
    else:
        click.echo(f"delivered {report['delivered']}, still pending {report['pending']}")
    if report["pending"]:
        if not as_json:
            raise ArtifactStoreError(f"{report['pending']} deliveries still pending (see `artifactstore hooks log`)")
        sys.exit(1)


@hooks.command(name="log")
@click.option("--limit", type=click.IntRange(min=1), metavar="N", help="Only the newest N deliveries.")
@store_option
@json_option
def log(limit, store_path, as_json) -> None:
    """Deliveries, newest first: pending and delivered, with their attempts."""
    deliveries = Store(store_path).hook_log(limit=limit)
    if as_json:
        emit_json({"deliveries": deliveries})
        return
    for d in deliveries:
        error = f"  last error: {d['last_error']}" if d["status"] == "pending" and d["last_error"] else ""
        click.echo(f"{d['created_at']} {d['status']:9} {d['event']:15} {d['model']}@{d['version'] or '-'} "
                   f"-> {d['hook']} ({d['attempts']} attempts){error}")

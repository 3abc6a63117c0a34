"""Rollout, fleet and drill commands: rollout start|status|pause|resume|abort|tick|watch, metrics
record, status, drill (docs/release.md)."""

import sys
import time

import click

from ..errors import ArtifactStoreError, InvalidInput, InvalidParameter
from ..registry.refs import ModelName, Ref
from ..store import Store
from .base import DAY, FiniteFloat, audit_options, cli, emit_json, json_option, store_option
from .registry import report_state

MAX_METRICS_BYTES = 64 << 20  # one report of metrics records


@cli.group()
def rollout() -> None:
    """Canary rollouts: the plan's steps, analysed window by window (docs/release.md)."""


@rollout.command(name="start")
@click.argument("ref")
@click.option("--force", is_flag=True, help="Start even though the release policy refuses it (needs --reason; "
                                            "recorded as an override).")
@audit_options
@store_option
@json_option
def start(ref, force, actor, reason, store_path, as_json) -> None:
    """Roll REF's version out: the canary goes to the plan's first step (with a policy: gate and review
    required)."""
    report_state(Store(store_path).start_rollout(ref, actor=actor, reason=reason, force=force), as_json)


@rollout.command(name="status")
@click.argument("model")
@store_option
@json_option
def status_of_rollout(model, store_path, as_json) -> None:
    """MODEL's rollout: step, percent, hold, windows measured, failures, the latest measurements."""
    shown = Store(store_path).rollout_status(model)
    if as_json:
        emit_json(shown)
        return
    running, last = shown["rollout"], shown["last"]
    if running is None:
        click.echo(f"{shown['model']}: no rollout in progress (production {shown['production']})")
        if last:
            click.echo(f"last rollout: {last['version']} {last['outcome']} at {last['at']} by {last['actor']}: "
                       f"{last['reason']}")
        return
    for line in _rollout_lines(shown["model"], shown["production"], running):
        click.echo(line)


def _rollout_lines(model: str, production: str, running: dict) -> list[str]:
    steps = " -> ".join(f"{s['percent']}%" + (f" for {s['hold']}" if s["hold"] != "0s" else "")
                        for s in running["steps"])
    state = f"paused since {running['paused']['at']}: {running['paused']['reason']}" if running["paused"] \
        else f"hold ends {running['hold_ends']}, next window ends {running['next_window_ends']}"
    lines = [f"{model}: rolling out {running['version']} over production {production}, started {running['started']}",
             f"plan: {steps}",
             f"step {running['step'] + 1} of {len(running['steps'])}: canary at {running['percent']}% since "
             f"{running['step_started']}; {state}",
             f"windows measured in this step: {running['windows']}; failed in the rollout: "
             f"{len(running['failed'])} (limit {running['failure_limit']}); inconclusive in a row: "
             f"{running['inconclusive']} (limit {running['inconclusive_limit']})"]
    lines += [f"  {m['end']} step {m['step'] + 1} window {m['window']}: {m['outcome'].upper():12} {m['note']}"
              for m in running["measurements"]]
    return lines


def _model_command(name: str, doc: str, method: str):
    @rollout.command(name=name, help=doc)
    @click.argument("model")
    @audit_options
    @store_option
    @json_option
    def command(model, actor, reason, store_path, as_json) -> None:
        report_state(getattr(Store(store_path), method)(model, actor=actor, reason=reason), as_json)

    return command


_model_command("pause", "Hold MODEL's rollout where it is (needs --reason): ticks measure nothing until resumed.",
               "pause_rollout")
_model_command("resume", "Resume MODEL's paused rollout; the current step starts again.", "resume_rollout")
_model_command("abort", "End MODEL's rollout (needs --reason): the canary goes to 0%, production is untouched.",
               "abort_rollout")


def _tick_line(report) -> str:
    where = f" (step {report.step + 1}, {report.percent}%)" if report.step is not None else ""
    lines = [f"{report.model}: {report.decision.upper()}{where}: {report.note}"]
    lines += [f"  window {m['window']} {m['start']} .. {m['end']}: {m['outcome']}: {m['note']}" for m in report.measured]
    return "\n".join(lines)


@rollout.command(name="tick")
@click.argument("model")
@click.option("--by", "actor", metavar="WHO", help="Who ticks (default: $ARTIFACTSTORE_ACTOR or user@host).")
@store_option
@json_option
def tick(model, actor, store_path, as_json) -> None:
    """Measure MODEL's ended windows and act: advance, hold, pause, abort or complete. Idempotent: safe
    from cron on many machines."""
    report = Store(store_path).rollout_tick(model, actor=actor)
    if as_json:
        emit_json(report.to_json())
    else:
        click.echo(_tick_line(report))


@rollout.command(name="watch")
@click.argument("models", nargs=-1, metavar="[CLIENT/MODEL]...")
@click.option("--interval", type=FiniteFloat(min=0.01, max=DAY), default=60.0, show_default=True,
              help="Seconds between ticks.")
@click.option("--count", type=click.IntRange(min=1), help="Stop after this many rounds (default: never).")
@click.option("--by", "actor", metavar="WHO", help="Who ticks (default: $ARTIFACTSTORE_ACTOR or user@host).")
@store_option
@json_option
def watch(models, interval, count, actor, store_path, as_json) -> None:
    """Tick every rollout (or MODELS') every --interval seconds; print what each tick did, one line per
    decision that changed something (--json: one object per tick)."""
    store = Store(store_path)
    rounds = 0
    while count is None or rounds < count:
        rounds += 1
        for name in models or [str(m) for m in store.models()]:
            try:  # one model's trouble, a damaged ref included, does not stop the others'
                if not models and store.state(name).rollout is None:
                    continue
                report = store.rollout_tick(name, actor=actor)
            except ArtifactStoreError as exc:
                click.echo(f"error: {name}: {exc}", err=True)
                continue
            if as_json:
                emit_json(report.to_json())
            elif report.decision not in ("nothing", "idle", "paused"):
                click.echo(_tick_line(report))
            sys.stdout.flush()
        if count is None or rounds < count:
            time.sleep(interval)


@cli.group()
def metrics() -> None:
    """Serving metrics for canary analysis."""


@metrics.command(name="record")
@click.argument("ref")
@click.option("--from", "source", required=True, metavar="FILE|-",
              help="JSON Lines, one record per line (docs/release.md, 'Metrics records'); - reads stdin.")
@store_option
@json_option
def record(ref, source, store_path, as_json) -> None:
    """Store servers' per-window aggregates for REF (client/model, or client/model@VERSION: then every
    record must be of that version)."""
    from ..registry.bundle import read_json_lines
    from ..registry.metrics import MetricsRecord

    model, version = ModelName.parse(ref.partition("@")[0]), None
    if "@" in ref:
        parsed = Ref.parse(ref)
        if not parsed.is_version:
            raise InvalidParameter(f"metrics record takes client/model or client/model@vX.Y.Z, not {ref}")
        version = parsed.target
    name = "stdin" if source == "-" else source
    with click.open_file(source, "rb") as stream:
        data = stream.read(MAX_METRICS_BYTES + 1)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(f"{name}: not UTF-8 text") from None
    records = read_json_lines(text, name, MetricsRecord, max_bytes=MAX_METRICS_BYTES)
    other = sorted({r.version for r in records} - {version}) if version else []
    if other:
        raise InvalidInput(f"{name}: records of {', '.join(other)}, but the ref names {version}")
    stored = Store(store_path).record_metrics(str(model), records)
    if as_json:
        emit_json(stored)
    else:
        click.echo(f"{model}: {stored['records']} records stored in {len(stored['batches'])} batches")


@cli.command()
@click.argument("model")
@store_option
@json_option
def status(model, store_path, as_json) -> None:
    """MODEL's pointers, rollout, what every serving node reports, the last drill, open alerts."""
    shown = Store(store_path).status(model)
    if as_json:
        emit_json(shown)
        return
    pointers = shown["pointers"]
    canary = pointers["canary"]
    click.echo(f"{shown['model']} at {shown['at']}")
    click.echo(f"  production {pointers['production']}, rollback target {pointers['rollback_target']}, "
               f"staging {pointers['staging']}, canary "
               + (f"{canary['version']} ({canary['percent']}%)" if canary else "none"))
    running = shown["rollout"]
    if running:
        for line in _rollout_lines(shown["model"], pointers["production"], running)[2:4]:
            click.echo(f"  rollout: {line}")
    elif shown["last_rollout"]:
        last = shown["last_rollout"]
        click.echo(f"  last rollout: {last['version']} {last['outcome']} at {last['at']}")
    click.echo(f"  nodes: {len(shown['nodes'])}")
    for node in shown["nodes"]:
        smoke = ", ".join(f"{v} {'ok' if s['ok'] else 'FAILED'} ({s['tests']} tests)" for v, s in node["smoke"].items())
        flag = "STALE" if node["stale"] else "ok" if node["agrees"] or node["pointer"] != "production" else "DISAGREES"
        click.echo(f"    {node['node']:16} {flag:9} @{node['pointer']} serving {node['serving']}"
                   + (f" + canary {node['canary']}" if node["canary"] else "")
                   + f"; resident {', '.join(node['resident'])}; smoke {smoke or '-'}; "
                     f"reported {node['age_seconds']:.1f} s ago")
    drill = shown["drill"]
    if drill:
        click.echo(f"  last drill: {drill['at']} {'passed' if drill['passed'] else 'FAILED'}"
                   + (f" in {drill['seconds']:.3f} s" if drill["seconds"] is not None else "")
                   + f" (limit {drill['max_seconds']:g} s); next due {drill['due']}")
    else:
        click.echo("  last drill: none")
    click.echo(f"  alerts: {len(shown['alerts'])}")
    for alert in shown["alerts"]:
        click.echo(f"    ! {alert}")


@cli.command()
@click.argument("model")
# the bounds of the policy's drill.max_seconds: a limit the policy could not hold is no rehearsal of it
@click.option("--max-seconds", type=FiniteFloat(min=0, min_open=True, max=3600), metavar="S",
              help="The limit from decision to confirmation [default: the policy's drill.max_seconds, 60].")
@audit_options
@store_option
@json_option
def drill(model, max_seconds, actor, reason, store_path, as_json) -> None:
    """Rehearse a rollback of MODEL on the live fleet: production to the rollback target, wait until every
    live node confirms, roll forward; timed and recorded. Exit status 1 when it fails."""
    report = Store(store_path).drill(model, max_seconds=max_seconds, actor=actor, reason=reason)
    if as_json:
        emit_json(report.to_json())
    else:
        took = f"{report.seconds:.3f} s" if report.seconds is not None else "not confirmed"
        click.echo(f"{report.model}: drill {'PASSED' if report.passed else 'FAILED'}: rollback {report.from_} -> "
                   f"{report.to} confirmed by {len(report.nodes)} of {len(report.nodes) + len(report.unconfirmed)} "
                   f"nodes in {took} (limit {report.max_seconds:g} s); rolled forward"
                   + (f" in {report.forward_seconds:.3f} s" if report.forward_seconds is not None else ": not confirmed")
                   + f" (record {report.id})")
        for node, seconds in sorted(report.nodes.items()):
            click.echo(f"  {node}: {seconds:.3f} s")
        for node in report.unconfirmed:
            click.echo(f"  {node}: did not confirm")
    if not report.passed:
        sys.exit(1)

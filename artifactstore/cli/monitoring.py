"""Monitoring commands: monitor baseline / record, drift, eval record / trend, data record, retrain-check.

The monitoring wing (numpy, zarr) is imported by the commands that run, not with the CLI."""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..errors import InvalidParameter
from ..store import Store
from .base import cli, emit_json, json_option, store_option

if TYPE_CHECKING:
    from ..monitoring.psi import Thresholds
    from ..monitoring.report import DriftReport
    from ..monitoring.signals import EvalTrend, LabelledData

node_option = click.option("--node", metavar="NAME",
                           help="This node's name: each node appends to its own arrays (default: the host name).")


def print_alert(alert) -> None:
    click.echo(f"alert: {alert.message()}", err=True)


@cli.group()
def monitor() -> None:
    """Drift baselines and request counts of a version (docs/monitoring.md)."""


@monitor.command("baseline")
@click.argument("ref")
@click.option("--from", "samples", type=click.Path(path_type=Path), metavar="FILE.jsonl",
              help="Requests as JSON Lines: their deciles and categories become the frozen bins.")
@click.option("--like", metavar="REF", help="Use the bins (and, without --from, the reference) of version REF.")
@click.option("--window", default="1h", show_default=True, metavar="DURATION",
              help="The window requests are counted in (1h, 15m, 1d).")
@store_option
@json_option
def monitor_baseline(ref, samples, like, window, store_path, as_json) -> None:
    """Freeze REF's drift baseline: the bins every later window of REF is counted in."""
    report = Store(store_path).take_baseline(ref, samples, window=window, like=like)
    if as_json:
        emit_json(asdict(report))
        return
    click.echo(f"{report.ref}: baseline of {len(report.features)} features from {report.samples} requests "
               f"({report.source}), windows of {report.window_seconds // 60} min")
    click.echo(f"features: {', '.join(report.features)}")


@monitor.command("record")
@click.argument("ref")
@click.option("--from", "samples", type=click.Path(path_type=Path), required=True, metavar="FILE.jsonl",
              help='Served requests as JSON Lines: {"inputs": {...}, "outputs": {...}, "at": "..."}.')
@node_option
@store_option
@json_option
def monitor_record(ref, samples, node, store_path, as_json) -> None:
    """Count the requests REF served, per window, and append the counts to this node's arrays.
    A window whose PSI crosses a threshold prints one alert (once, not every window)."""
    # with --json the alerts are raised all the same, and reported in the JSON object
    report = Store(store_path).record(ref, samples, node=node, deliver=(lambda _: None) if as_json else print_alert)
    if as_json:
        emit_json(asdict(report))
        return
    click.echo(f"{report.ref}: {report.requests} requests, {report.values} values counted in "
               f"{len(report.windows)} window{'s' if len(report.windows) != 1 else ''} (node {report.node})")
    if report.ignored_features:
        click.echo(f"not in the baseline, not counted: {', '.join(report.ignored_features)}")


def _thresholds(text: str) -> Thresholds:
    from ..monitoring.psi import Thresholds

    try:
        watch, investigate = (float(part) for part in text.split(","))
    except ValueError:
        raise InvalidParameter(f"--thresholds {text!r}: expected WATCH,INVESTIGATE, e.g. 0.1,0.2") from None
    if not 0 < watch <= investigate:
        raise InvalidParameter(f"--thresholds {text!r}: need 0 < WATCH <= INVESTIGATE")
    return Thresholds(watch, investigate)


@cli.command()
@click.argument("ref", metavar="CLIENT/MODEL[@VERSION]")
@click.option("--since", metavar="WHEN", help="Only windows ending after WHEN: a duration back (24h, 7d) or a time.")
@click.option("--against", metavar="VERSION",
              help="Compare with VERSION's counts in the same windows instead of the baseline (a canary with "
                   "production).")
@click.option("--prefix", default="", metavar="PREFIX", help="Only features whose names start with PREFIX "
                                                             "(e.g. outputs.).")
@click.option("--thresholds", "thresholds_text", metavar="WATCH,INVESTIGATE",
              help="PSI thresholds [default: the model's policy (drift section), else 0.1,0.2].")
@click.option("--plot", type=click.Path(path_type=Path), metavar="FILE.png",
              help="Also draw the PSI over time, with both thresholds, as a PNG (needs matplotlib).")
@store_option
@json_option
def drift(ref, since, against, prefix, thresholds_text, plot, store_path, as_json) -> None:
    """PSI of each feature of REF (CLIENT/MODEL: its production version) in each window, with its status:
    fine below WATCH, watch up to INVESTIGATE, investigate above."""
    report = Store(store_path).drift(ref, since=since, against=against, prefix=prefix,
                                     thresholds=_thresholds(thresholds_text) if thresholds_text else None)
    if plot is not None:
        from ..monitoring.plot import plot_drift

        plot_drift(report, plot)
    if as_json:
        emit_json(report.to_json() | {"plot": str(plot) if plot is not None else None})
        return
    _print_drift(report)
    if plot is not None:
        click.echo(f"plot: {plot}")


def _print_drift(report: DriftReport) -> None:
    from ..monitoring.psi import EMPTY, FINE
    from ..monitoring.report import iso

    against = "its baseline" if report.against == "baseline" else report.against
    click.echo(f"{report.model}@{report.version} against {against}, windows of {report.window_seconds // 60} min "
               f"(watch >= {report.thresholds.watch:g}, investigate > {report.thresholds.investigate:g})")
    if not len(report.starts):
        click.echo("no window recorded yet")
        return
    widths = [max(len(f), 17) for f in report.features]
    click.echo(f"{'window (UTC)':17}  {'values':>7}  " + "  ".join(f"{f:{w}}" for f, w in zip(report.features, widths)))
    statuses = report.statuses()
    for w, start in enumerate(report.starts.tolist()):
        cells = [("-" if status == EMPTY else f"{value:.3f} {status}")
                 for value, status in zip(report.psi[w], statuses[w])]
        click.echo(f"{iso(start)[:16].replace('T', ' '):17}  {int(report.counts[w].max()):7}  "
                   + "  ".join(f"{c:{width}}" for c, width in zip(cells, widths)))
    last = statuses[-1]
    flagged = [f"{f} {s}" for f, s in zip(report.features, last) if s not in (FINE, EMPTY)]
    click.echo(f"latest window: {', '.join(flagged) if flagged else 'every feature fine'}")


@cli.group("eval")
def eval_group() -> None:
    """Eval runs of a version, against its launch baseline (the bundle's eval_results.json)."""


def _print_trend(trend: EvalTrend) -> None:
    click.echo(f"{trend.ref}: {len(trend.runs)} eval run{'s' if len(trend.runs) != 1 else ''} recorded")
    click.echo(f"  {'metric':24} {'launch':>10} {'latest':>10} {'change':>9}  latest run")
    changes = trend.changes()
    for metric, launch in sorted(trend.launch.items()):
        change = changes.get(metric)
        if change is None:
            click.echo(f"  {metric:24} {launch:10.4g} {'-':>10} {'-':>9}")
            continue
        relative = "-" if change["relative"] is None else f"{change['relative']:+.1%}"
        click.echo(f"  {metric:24} {launch:10.4g} {change['latest']:10.4g} {relative:>9}  {change['at']}")


@eval_group.command("record")
@click.argument("ref")
@click.argument("scores", type=click.Path(path_type=Path), metavar="FILE")
@node_option
@store_option
@json_option
def eval_record(ref, scores, node, store_path, as_json) -> None:
    """Record an eval run of REF (FILE: a JSON object of metrics, like eval_results.json) and print the
    trend against the launch baseline."""
    trend = Store(store_path).record_eval(ref, scores, node=node)
    if as_json:
        emit_json(trend.to_json())
    else:
        _print_trend(trend)


@eval_group.command("trend")
@click.argument("ref")
@store_option
@json_option
def eval_trend(ref, store_path, as_json) -> None:
    """REF's eval runs against its launch baseline."""
    trend = Store(store_path).eval_trend(ref)
    if as_json:
        emit_json(trend.to_json())
    else:
        _print_trend(trend)


@cli.group()
def data() -> None:
    """Labelled data of a model's client: how much there is now, against the count at training."""


def _print_labelled(data: LabelledData) -> None:
    growth = data.growth
    if data.examples is None:
        click.echo(f"{data.model}: no labelled-data count recorded")
    elif growth is None:
        click.echo(f"{data.model}: {data.examples:,} labelled examples (the bundle of {data.version} records no "
                   "training_examples to compare with)")
    else:
        shown = "more than any" if math.isinf(growth) else f"{growth:+.0%}"
        click.echo(f"{data.model}: {data.examples:,} labelled examples, {shown} over the "
                   f"{data.training_examples:,} at the training of {data.version}")


@data.command("record")
@click.argument("model", metavar="CLIENT/MODEL")
@click.option("--examples", type=int, required=True, metavar="N", help="Labelled examples the client has now.")
@node_option
@store_option
@json_option
def data_record(model, examples, node, store_path, as_json) -> None:
    """Record how many labelled examples MODEL's client has now (retrain-check compares it with the
    training_examples of the version in production)."""
    labelled = Store(store_path).record_labelled(model, examples, node=node)
    if as_json:
        emit_json(labelled.to_json())
    else:
        _print_labelled(labelled)


@cli.command("retrain-check")
@click.argument("model", metavar="CLIENT/MODEL")
@store_option
@json_option
def retrain_check(model, store_path, as_json) -> None:
    """Each of the seed's retrain triggers for MODEL's production version, fired or not, with its evidence;
    "do not retrain" when none fires."""
    check = Store(store_path).retrain_check(model)
    if as_json:
        emit_json(check.to_json())
        return
    click.echo(f"{check.model}@{check.version}")
    for trigger in check.triggers:
        mark = "FIRED" if trigger.fired else "no" if trigger.measured else "n/a"
        click.echo(f"  {mark:5}  {trigger.name:16} {trigger.evidence}")
    click.echo(check.verdict())

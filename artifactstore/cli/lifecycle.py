"""Commands that move and collect stored data: tier, pull, gc."""

from dataclasses import asdict

import click

from ..store import Store
from .base import (
    cli,
    emit_json,
    human_bytes,
    json_option,
    progress_bar,
    store_option,
)


@cli.command()
@click.option("--dry-run", is_flag=True, help="Say what would move; move nothing.")
@store_option
@json_option
def tier(dry_run: bool, store_path: str, as_json: bool) -> None:
    """Keep exactly the hot set in the hot tier: fetch what is missing, move the rest to cold."""
    with progress_bar(None, "tier", as_json) as progress:
        report = Store(store_path).tier(dry_run=dry_run, progress=progress)
    if as_json:
        emit_json(asdict(report))
        return
    verb = "would move" if dry_run else "moved"
    click.echo(f"hot set ({len(report.hot_versions)} versions): {', '.join(report.hot_versions) or 'none'}")
    click.echo(f"{verb} to cold: {len(report.evicted)} packs, {human_bytes(report.bytes_evicted)} "
               f"({human_bytes(report.bytes_to_cold)} uploaded; {human_bytes(report.rehomed_bytes)} of hot chunks "
               f"copied out of them first)")
    click.echo(f"{verb} to hot:  {report.fetched_chunks} chunks, {human_bytes(report.bytes_from_cold)}")
    for direction, versions in (("cold", report.monitoring_to_cold), ("hot", report.monitoring_to_hot)):
        if versions:
            click.echo(f"{verb} the monitoring data of {', '.join(versions)} to {direction}")


@cli.command()
@click.argument("ref")
@store_option
@json_option
def pull(ref: str, store_path: str, as_json: bool) -> None:
    """Bring REF into the hot tier, transferring only the chunks not already there."""
    with progress_bar(None, "pull", as_json) as progress:
        report = Store(store_path).pull(ref, progress=progress)
    if as_json:
        emit_json(asdict(report))
        return
    click.echo(f"{ref}: transferred {human_bytes(report.transferred_bytes)} of {human_bytes(report.logical_bytes)} "
               f"({report.chunks_fetched} of {report.chunks_total} chunks)")


@cli.command()
@click.option("--dry-run", is_flag=True, help="Say what would be condemned and deleted; change nothing.")
@click.option("--grace", default="1h", show_default=True, metavar="DURATION",
              help="Never touch objects younger than this, and delete only what was condemned this long ago "
                   "(30s, 15m, 6h, 7d). Must exceed the longest push.")
@click.option("--keep-telemetry", metavar="DURATION",
              help="Also delete servers' metrics batches older than this, the heartbeats of nodes silent "
                   "for longer and hook deliveries made before (at least 2d, e.g. 30d; default: keep them)")
@store_option
@json_option
def gc(dry_run: bool, grace: str, keep_telemetry: str | None, store_path: str, as_json: bool) -> None:
    """Collect garbage in two phases: condemn unused packs and manifests, delete them a grace period later."""
    with progress_bar(None, "gc", as_json) as progress:
        report = Store(store_path).gc(dry_run=dry_run, grace=grace, progress=progress, keep_telemetry=keep_telemetry)
    if as_json:
        emit_json(asdict(report))
        return
    verb = "would " if dry_run else ""
    click.echo(f"live chunks: {report.live_chunks} (marked in {report.mark_passes} pass"
               f"{'es' if report.mark_passes > 1 else ''})")
    click.echo(f"{verb}repack:  {human_bytes(report.repacked_bytes)} of live chunks out of mostly dead packs")
    click.echo(f"{verb}condemn: {len(report.condemned_packs)} packs, {len(report.condemned_manifests)} manifests, "
               f"{human_bytes(report.pending_bytes)}")
    click.echo(f"{verb}delete:  {len(report.deleted_packs)} packs, {len(report.deleted_manifests)} manifests, "
               f"{human_bytes(report.reclaimed_bytes)} reclaimed")
    if report.spared:
        click.echo(f"spared: {len(report.spared)} condemned objects are in use again")
    if report.deleted_monitoring:
        click.echo(f"{verb}delete monitoring data: {', '.join(report.deleted_monitoring)}")
    if keep_telemetry is not None:
        click.echo(f"{verb}expire: {report.expired_metrics_batches} metrics batches older than {keep_telemetry}; "
                   f"forget {len(report.forgotten_nodes)} nodes silent for longer"
                   + (f" ({', '.join(report.forgotten_nodes)})" if report.forgotten_nodes else "")
                   + f"; expire {report.expired_hook_deliveries} hook delivery records as old")

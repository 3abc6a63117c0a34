"""Commands on stored content: init, config, put, get, stats, verify."""

import json
import re
import sys
from dataclasses import asdict
from pathlib import Path

import click

from ..store import Store
from .base import (
    FiniteFloat,
    audit_options,
    cli,
    emit_json,
    group_store_option,
    human_bytes,
    json_option,
    progress_bar,
    resolve_store,
    store_option,
)


@cli.command()
@click.argument("path", metavar="PATH|URL")
@click.option("--cold", metavar="URL", help="Cold tier: a directory or an fsspec URL such as s3://bucket/prefix.")
@click.option("--keep-hot", type=click.IntRange(min=0), default=3, show_default=True,
              help="Newest versions of each model kept in the hot tier (plus every pointer and pin).")
def init(path: str, cold: str | None, keep_hot: int) -> None:
    """Create an empty store in PATH (a new or empty directory) or at URL (a store shared by many machines)."""
    Store.init(path, cold=cold, keep_hot=keep_hot)
    click.echo(f"initialised store at {path}")


@cli.group(invoke_without_command=True)
@group_store_option
@json_option
@click.pass_context
def config(ctx: click.Context, store_path: str | None, as_json: bool) -> None:
    """The store's effective configuration (secrets masked), where the store's location came from,
    and every change made with `config set`."""
    if ctx.invoked_subcommand is not None:
        return
    store = Store(resolve_store(ctx, None, store_path))
    effective = {**store.effective_config(), "store_from": ctx.meta["store_source"],
                 "changes": list(store.content.config.changes)}
    if as_json:
        emit_json(effective)
        return
    for key, value in effective.items():
        if key != "changes":
            click.echo(f"{key:22} {json.dumps(value) if isinstance(value, (dict, list)) else value}")
    for change in effective["changes"]:
        click.echo(f"changed {change['at'][:19]} by {change['actor']}: {change['setting']} {change['from']} -> "
                   f"{change['to']}  {change['reason']}")


# "keep-hot -1" must reach the check below, not stop at "no such option -1"
@config.command(name="set", context_settings={"ignore_unknown_options": True})
@click.argument("setting", type=click.Choice(["cold", "keep-hot"]))
@click.argument("value")
@audit_options
@store_option
@json_option
def set_config(setting: str, value: str, actor: str | None, reason: str, store_path: str, as_json: bool) -> None:
    """Change a setting: `cold URL|DIRECTORY|none` (a cold tier for a store that has none; it must
    take writes now) or `keep-hot N`. Recorded, with who and why, in the configuration."""
    if value.startswith("-") and not (setting == "keep-hot" and re.fullmatch(r"-[0-9]+", value)):
        raise click.NoSuchOption(value)  # what it is without ignore_unknown_options: a mistyped option
    if setting == "keep-hot":
        if not re.fullmatch(r"[0-9]+", value):  # isdigit() takes "²", which int() refuses
            raise click.UsageError(f"keep-hot takes a whole number >= 0, not {value!r}")
        new_value: str | int | None = int(value)
    else:
        new_value = None if value == "none" else value
    updated = Store(store_path).set_config(setting.replace("-", "_"), new_value, actor=actor, reason=reason)
    change = updated.changes[-1]
    if as_json:
        emit_json(change)
        return
    click.echo(f"{change['setting']}: {change['from']} -> {change['to']}")


@cli.command()
@click.argument("path", type=click.Path(path_type=Path))
@store_option
@json_option
def put(path: Path, store_path: str, as_json: bool) -> None:
    """Store a file or directory PATH; print its id."""
    store = Store(store_path)
    total = path.stat().st_size if path.is_file() else None
    with progress_bar(total, "put", as_json) as progress:
        result = store.put(path, progress=progress)
    if as_json:
        emit_json(asdict(result))
        return
    click.echo(result.id)
    click.echo(f"{human_bytes(result.logical_bytes)} logical, {human_bytes(result.new_bytes)} new", err=True)


@cli.command()
@click.argument("ref", metavar="REF")
@click.argument("dest", type=click.Path(path_type=Path))
@store_option
def get(ref: str, dest: Path, store_path: str) -> None:
    """Write REF (b3:<id>, client/model@vX.Y.Z or @POINTER) to DEST, which must not exist; verifies every byte."""
    store = Store(store_path)
    with progress_bar(None, "get", False) as progress:
        store.get(store.resolve(ref), dest, progress=progress)


@cli.command()
@store_option
@json_option
def stats(store_path: str, as_json: bool) -> None:
    """Logical and stored bytes, chunks, packs."""
    result = Store(store_path).stats()
    if as_json:
        emit_json(asdict(result))
        return
    ratio = result.logical_bytes / result.stored_bytes if result.stored_bytes else 0.0
    click.echo(f"logical bytes  {human_bytes(result.logical_bytes)}\n"
               f"stored bytes   {human_bytes(result.stored_bytes)} ({ratio:.2f}x dedup)\n"
               f"packs hot/cold {human_bytes(result.hot_pack_bytes)} / {human_bytes(result.cold_pack_bytes)}\n"
               f"chunks         {result.chunks} ({human_bytes(result.chunk_bytes)})\n"
               f"packs          {result.packs}\n"
               f"files, trees   {result.files}, {result.trees}")


@cli.command()
@click.option("--tier", type=click.Choice(["hot", "cold", "all"]), default="all", show_default=True,
              help="Whose packs to re-hash; file contents are re-hashed with 'all' only.")
@click.option("--sample", type=FiniteFloat(0, 100, min_open=True), default=100.0, metavar="PERCENT",
              help="Re-hash this percentage of packs and files, picked at random.")
@click.option("--repair", is_flag=True, help="Restore a damaged pack copy from the other tier.")
@store_option
@json_option
def verify(tier: str, sample: float, repair: bool, store_path: str, as_json: bool) -> None:
    """Re-hash chunks, check index files, manifests and the registry; exit 1 naming each problem."""
    with progress_bar(None, "verify", as_json) as progress:
        report = Store(store_path).verify(tier=tier, sample=sample, repair=repair, progress=progress)
    if as_json:
        emit_json(asdict(report))
    else:
        for line in report.repaired:
            click.echo(f"repaired: {line}")
        click.echo("ok" if report.ok else "\n".join(report.problems))
    if not report.ok:
        sys.exit(1)

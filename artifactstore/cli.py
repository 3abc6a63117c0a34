"""The ``artifactstore`` command. User errors become one line on stderr and exit status 1."""

import json
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import click
from tqdm import tqdm

from .errors import ArtifactStoreError
from .store import Store

store_option = click.option(
    "--store", "store_path", envvar="ARTIFACTSTORE_STORE", required=True, metavar="PATH|URL",
    help="The store: a directory, or s3://bucket/prefix for a store shared by many machines "
         "(or set ARTIFACTSTORE_STORE; a shared store's local cache is $ARTIFACTSTORE_CACHE).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object, nothing else.")


def audit_options(command):
    """--by and --reason, recorded in the audit log by every registry change."""
    command = click.option("--reason", default="", help="Why; recorded in the audit log.")(command)
    return click.option("--by", "actor", metavar="WHO",
                        help="Who; recorded in the audit log (default: $ARTIFACTSTORE_ACTOR or user@host).")(command)


def move_options(command):
    """--by, --reason and --expect, shared by every pointer move."""
    return audit_options(click.option("--expect", metavar="VERSION",
                                      help="Refuse unless the pointer being moved is at VERSION now.")(command))


@contextmanager
def progress_bar(total: int | None, description: str, quiet: bool):
    """A byte progress bar on stderr when it is a terminal; a no-op callback otherwise."""
    if quiet or not sys.stderr.isatty():
        yield lambda _: None
        return
    with tqdm(total=total, desc=description, unit="B", unit_scale=True, unit_divisor=1024,
              file=sys.stderr, leave=False) as bar:
        yield bar.update


def emit_json(obj) -> None:
    click.echo(json.dumps(obj, indent=None, sort_keys=True))


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="artifactstore")
def cli() -> None:
    """Content-addressed store for model weights: dedup by FastCDC chunks, BLAKE3 ids."""


@cli.command()
@click.argument("path", metavar="PATH|URL")
@click.option("--cold", metavar="URL", help="Cold tier: a directory or an fsspec URL such as s3://bucket/prefix.")
@click.option("--keep-hot", type=click.IntRange(min=0), default=3, show_default=True,
              help="Newest versions of each model kept in the hot tier (plus every pointer and pin).")
def init(path: str, cold: str | None, keep_hot: int) -> None:
    """Create an empty store in PATH (a new or empty directory) or at URL (a store shared by many machines)."""
    Store.init(path, cold=cold, keep_hot=keep_hot)
    click.echo(f"initialised store at {path}")


@cli.command()
@store_option
@json_option
def config(store_path: str, as_json: bool) -> None:
    """The store's effective configuration (secrets masked)."""
    effective = Store(store_path).effective_config()
    if as_json:
        emit_json(effective)
        return
    for key, value in effective.items():
        click.echo(f"{key:22} {json.dumps(value) if isinstance(value, (dict, list)) else value}")


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
    click.echo(f"hot set: {len(report.hot_versions)} versions")
    click.echo(f"{verb} to cold: {len(report.evicted)} packs, {human_bytes(report.bytes_evicted)} "
               f"({human_bytes(report.bytes_to_cold)} uploaded; {human_bytes(report.rehomed_bytes)} of hot chunks "
               f"copied out of them first)")
    click.echo(f"{verb} to hot:  {report.fetched_chunks} chunks, {human_bytes(report.bytes_from_cold)}")


@cli.command()
@click.option("--dry-run", is_flag=True, help="Say what would be condemned and deleted; change nothing.")
@click.option("--grace", default="1h", show_default=True, metavar="DURATION",
              help="Never touch objects younger than this, and delete only what was condemned this long ago "
                   "(30s, 15m, 6h, 7d). Must exceed the longest push.")
@store_option
@json_option
def gc(dry_run: bool, grace: str, store_path: str, as_json: bool) -> None:
    """Collect garbage in two phases: condemn unused packs and manifests, delete them a grace period later."""
    with progress_bar(None, "gc", as_json) as progress:
        report = Store(store_path).gc(dry_run=dry_run, grace=grace, progress=progress)
    if as_json:
        emit_json(asdict(report))
        return
    verb = "would " if dry_run else ""
    click.echo(f"live chunks: {report.live_chunks} (marked in {report.mark_passes} pass"
               f"{'es' if report.mark_passes > 1 else ''})")
    click.echo(f"{verb}condemn: {len(report.condemned_packs)} packs, {len(report.condemned_manifests)} manifests, "
               f"{human_bytes(report.pending_bytes)}")
    click.echo(f"{verb}delete:  {len(report.deleted_packs)} packs, {len(report.deleted_manifests)} manifests, "
               f"{human_bytes(report.reclaimed_bytes)} reclaimed")
    if report.spared:
        click.echo(f"spared: {len(report.spared)} condemned objects are in use again")


@cli.command()
@click.argument("ref")
@audit_options
@store_option
@json_option
def delete(ref, actor, reason, store_path, as_json) -> None:
    """Remove version REF from the registry; gc then reclaims what only it used."""
    report_state(Store(store_path).delete(ref, actor=actor, reason=reason), as_json)


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
@click.argument("ref", metavar="REF")
@click.argument("dest", type=click.Path(path_type=Path))
@store_option
def checkout(ref: str, dest: Path, store_path: str) -> None:
    """Write REF's adapter_weights/ to DEST as a PEFT / vLLM adapter directory (DEST must not exist)."""
    with progress_bar(None, "checkout", False) as progress:
        target = Store(store_path).checkout(ref, dest, progress=progress)
    click.echo(f"{ref} checked out to {target}")


@cli.command()
@click.argument("ref")
@click.option("--framework", type=click.Choice(["numpy", "torch"]), default="numpy", show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N (torch only).")
@click.option("--poll-ms", type=click.FloatRange(min=0.1),
              help="How often to look at the pointer [default: 2 for a local store, 500 for a shared one].")
@click.option("--probe", metavar="TENSOR", help="Also print the first element of this tensor on each swap.")
@store_option
def follow(ref, framework, device, poll_ms, probe, store_path) -> None:
    """Follow pointer REF like an inference server: keep its hot versions loaded, print one JSON line
    per swap ({"version", "bundle", "at": monotonic seconds, "probe"}), until stdin closes.

    Once the hot versions are loaded it prints {"resident": [versions]}."""
    from .serving.follower import Follower

    def announce(_, live) -> None:
        value = float(live.tensors[probe].reshape(-1)[0].item()) if probe else None
        click.echo(json.dumps({"version": live.version, "bundle": live.bundle, "at": time.monotonic(),
                               "probe": value}))
        sys.stdout.flush()

    def warn(message: str) -> None:
        click.echo(f"warning: {message}", err=True)

    with Follower(Store(store_path), ref, framework=framework, device=device,
                  poll_interval=poll_ms / 1000 if poll_ms else None,
                  on_swap=announce, on_error=warn) as follower:
        click.echo(json.dumps({"resident": sorted(follower.resident)}))
        sys.stdout.flush()
        sys.stdin.read()


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
@click.option("--sample", type=click.FloatRange(0, 100, min_open=True), default=100.0, metavar="PERCENT",
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


# -- registry ---------------------------------------------------------------------------------

def report_state(state, as_json: bool) -> None:
    summary = {"model": str(state.model), "production": state.pointers.get("production"),
               "staging": state.pointers.get("staging"), "canary": state.canary,
               "rollback_target": state.pointers.get("rollback_target"), "pins": list(state.pins),
               "entries": [e.to_json() for e in state.entries]}
    if as_json:
        emit_json(summary)
        return
    for e in state.entries:
        share = f" ({e.percent}%)" if e.percent is not None else ""
        if e.pointer is None:
            click.echo(f"{state.model}: {e.action} {e.to or e.from_}")
        else:
            click.echo(f"{state.model}@{e.pointer}: {e.from_ or '-'} -> {e.to or '-'}{share}")


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
@store_option
@json_option
def promote(ref, actor, reason, expect, store_path, as_json) -> None:
    """Point production at REF; the previous production becomes the rollback target."""
    report_state(Store(store_path).promote(ref, actor=actor, reason=reason, expect=expect), as_json)


@cli.command()
@click.argument("model")
@click.option("--to", "to", metavar="VERSION", help="Roll back to VERSION instead of the rollback target.")
@move_options
@store_option
@json_option
def rollback(model, to, actor, reason, expect, store_path, as_json) -> None:
    """Point MODEL's production back at its rollback target (or --to VERSION)."""
    report_state(Store(store_path).rollback(model, to=to, actor=actor, reason=reason, expect=expect), as_json)


@cli.command()
@click.argument("ref")
@click.option("--percent", type=int, required=True, help="Share of traffic for REF; 0 ends the canary.")
@move_options
@store_option
@json_option
def canary(ref, percent, actor, reason, expect, store_path, as_json) -> None:
    """Route PERCENT of traffic to REF as a canary."""
    report_state(Store(store_path).set_canary(ref, percent, actor=actor, reason=reason, expect=expect), as_json)


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
        for version in entry["versions"]:
            names = [p for p in ("production", "staging", "rollback_target") if entry[p] == version]
            if entry["canary"] and entry["canary"]["version"] == version:
                names.append(f"canary {entry['canary']['percent']}%")
            if version in entry["pins"]:
                names.append("pinned")
            click.echo(f"  {version:12} {', '.join(names)}")


@cli.command()
@click.argument("model")
@store_option
@json_option
def log(model: str, store_path: str, as_json: bool) -> None:
    """MODEL's audit log: every push and pointer move, oldest first."""
    entries = Store(store_path).log(model)
    if as_json:
        emit_json({"model": model, "entries": [e.to_json() for e in entries]})
        return
    for e in entries:
        target = f"{e.pointer or ''} {e.from_ or '-'} -> {e.to or '-'}"
        click.echo(f"{e.seq:4} {e.at} {e.actor:24} {e.action:9} {target:40} {e.reason}")


@cli.group()
def registry() -> None:
    """The registry as a whole."""


@registry.command(name="export")
@store_option
def export_registry(store_path: str) -> None:
    """Print the registry YAML (clients, models, pointers, available versions)."""
    click.echo(Store(store_path).export_registry(), nl=False)


@cli.command()
@click.option("--training-data", metavar="HASH")
@click.option("--adapter", metavar="HASH")
@click.option("--base-model", metavar="NAME")
@store_option
@json_option
def lineage(training_data, adapter, base_model, store_path, as_json) -> None:
    """Versions trained on a dataset, with an adapter hash, or on a base model."""
    found = Store(store_path).lineage(training_data=training_data, adapter=adapter, base_model=base_model)
    if as_json:
        emit_json({"versions": found})
        return
    for entry in found:
        click.echo(f"{entry['ref']:32} {entry['created_at']} {entry['base_model']}")


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


@cli.command()
@click.argument("ref_a")
@click.argument("ref_b")
@store_option
def changelog(ref_a, ref_b, store_path) -> None:
    """The client-facing change log (Markdown) from REF_A to REF_B."""
    click.echo(Store(store_path).changelog(ref_a, ref_b), nl=False)


def run_reporting_errors(command: Callable[..., None]) -> None:
    try:
        command(standalone_mode=False)
    except ArtifactStoreError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except OSError as exc:
        click.echo(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), err=True)
        sys.exit(1)


def main() -> None:
    run_reporting_errors(cli)

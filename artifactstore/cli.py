"""The ``artifactstore`` command. User errors become one line on stderr and exit status 1."""

import json
import sys
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import click
from tqdm import tqdm

from .errors import ArtifactStoreError
from .store import Store

store_option = click.option(
    "--store", "store_path", envvar="ARTIFACTSTORE_STORE", required=True, metavar="PATH",
    type=click.Path(file_okay=False, path_type=Path),
    help="The store's directory (or set ARTIFACTSTORE_STORE).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object, nothing else.")


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
@click.argument("path", type=click.Path(path_type=Path))
def init(path: Path) -> None:
    """Create an empty store in PATH (a new or empty directory)."""
    Store.init(path)
    click.echo(f"initialised store at {path}")


@cli.command()
@click.argument("path", type=click.Path(path_type=Path))
@store_option
@json_option
def put(path: Path, store_path: Path, as_json: bool) -> None:
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
@click.argument("object_id", metavar="ID")
@click.argument("dest", type=click.Path(path_type=Path))
@store_option
def get(object_id: str, dest: Path, store_path: Path) -> None:
    """Write the file or tree ID to DEST (which must not exist), verifying every byte."""
    store = Store(store_path)
    store.read_manifest(object_id)
    with progress_bar(None, "get", False) as progress:
        store.get(object_id, dest, progress=progress)


@cli.command()
@store_option
@json_option
def stats(store_path: Path, as_json: bool) -> None:
    """Logical and stored bytes, chunks, packs."""
    result = Store(store_path).stats()
    if as_json:
        emit_json(asdict(result))
        return
    ratio = result.logical_bytes / result.stored_bytes if result.stored_bytes else 0.0
    click.echo(f"logical bytes  {human_bytes(result.logical_bytes)}\n"
               f"stored bytes   {human_bytes(result.stored_bytes)} ({ratio:.2f}x dedup)\n"
               f"chunks         {result.chunks} ({human_bytes(result.chunk_bytes)})\n"
               f"packs          {result.packs}\n"
               f"files, trees   {result.files}, {result.trees}")


@cli.command()
@store_option
@json_option
def verify(store_path: Path, as_json: bool) -> None:
    """Re-hash every chunk and check every manifest; exit 1 naming each damaged object."""
    with progress_bar(None, "verify", as_json) as progress:
        report = Store(store_path).verify(progress=progress)
    if as_json:
        emit_json(asdict(report))
    elif report.ok:
        click.echo("ok")
    else:
        for problem in report.problems:
            click.echo(problem)
    if not report.ok:
        sys.exit(1)


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

"""What every command module shares: the ``cli`` group, common options and output helpers."""

import json
import math
import os
import re
import sys
from collections.abc import Callable
from contextlib import contextmanager
from typing import NoReturn

import click

from ..errors import ArtifactStoreError
from ..progress import human_bytes as human_bytes  # the commands' modules take it from here

STORE_VARIABLE = "ARTIFACTSTORE_STORE"
STORE_HELP = ("The store: a directory, or s3://bucket/prefix for a store shared by many machines (or set "
              f"{STORE_VARIABLE}; a shared store's local cache is $ARTIFACTSTORE_CACHE). Before or after the command.")


def resolve_store(ctx: click.Context, _: click.Parameter | None, value: str | None) -> str:
    """--store after the command, else --store before it, else $ARTIFACTSTORE_STORE; where it came
    from is kept for ``config``."""
    outer = ctx.parent
    while outer is not None and not outer.params.get("store_path"):
        outer = outer.parent
    given_before = outer.params["store_path"] if outer is not None else None
    for source, location in (("--store", value), ("--store", given_before),
                             (STORE_VARIABLE, os.environ.get(STORE_VARIABLE))):
        if location:
            ctx.meta["store_source"] = source
            return location
    raise click.UsageError(f"no store given: use --store PATH|URL or set {STORE_VARIABLE}")


store_option = click.option("--store", "store_path", metavar="PATH|URL", callback=resolve_store, help=STORE_HELP)
# for a group whose subcommands take --store too: resolved only where it is used (resolve_store)
group_store_option = click.option("--store", "store_path", metavar="PATH|URL", help=STORE_HELP)
json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object, nothing else.")


def audit_options(command):
    """--by and --reason, recorded in the audit log by every registry change."""
    command = click.option("--reason", default="", help="Why; recorded in the audit log.")(command)
    return click.option("--by", "actor", metavar="WHO",
                        help="Who; recorded in the audit log (default: $ARTIFACTSTORE_ACTOR or user@host).")(command)


def move_options(command):
    """--by, --reason and --expect, shared by every pointer move."""
    return audit_options(click.option("--expect", metavar="VERSION",
                                      help="Refuse unless the pointer being moved is at VERSION now ('none': unless it is unset).")(command))


@contextmanager
def progress_bar(total: int | None, description: str, quiet: bool):
    """A byte progress bar on stderr when it is a terminal; a no-op callback otherwise."""
    if quiet or not sys.stderr.isatty():
        yield lambda _: None
        return
    from tqdm import tqdm  # only a terminal shows a bar: a script's command does not load it

    with tqdm(total=total, desc=description, unit="B", unit_scale=True, unit_divisor=1024,
              file=sys.stderr, leave=False) as bar:
        yield bar.update


class FiniteFloat(click.FloatRange):
    """A FloatRange that refuses nan and inf, which every range check lets through (nan compares
    false with each bound, inf passes an open top) and which then break a sleep or a recorded limit."""

    def convert(self, value, param, ctx):
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return super().convert(number, param, ctx)


# The longest interval an option takes: a longer one is a slip, and a far longer one overflows a sleep.
DAY = 86_400.0


def json_text(obj) -> str:
    """``obj`` as one line of JSON, a non-finite float as null: the standard has no NaN or Infinity,
    and a reader that follows it fails on the whole line (a PSI of an empty window is one)."""
    return json.dumps(_finite(obj), indent=None, sort_keys=True, allow_nan=False)


def _finite(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: _finite(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(value) for value in obj]
    return obj


def emit_json(obj) -> None:
    click.echo(json_text(obj))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="artifactstore")
@click.option("--store", "store_path", metavar="PATH|URL", help=STORE_HELP)
def cli(store_path: str | None) -> None:
    """Content-addressed store for model weights: dedup by FastCDC chunks, BLAKE3 ids."""


def run_reporting_errors(command: Callable[..., None]) -> None:
    try:
        command(standalone_mode=False)
    except ArtifactStoreError as exc:
        _fail(str(exc), 1)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:  # click says a usage error in three lines, and a choice in more
        _fail(exc.format_message(), exc.exit_code)
    except OSError as exc:
        _fail(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), 1)


def _fail(message: str, status: int) -> NoReturn:
    """One line on stderr, whatever line breaks the message holds (click's list of choices, a name
    given with a newline in it), so that a script reading the last line gets the whole error."""
    click.echo("error: " + re.sub(r"\s*[\r\n]\s*", " ", message.strip()), err=True)
    sys.exit(status)

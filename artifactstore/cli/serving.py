"""Commands for inference servers: checkout, follow."""

import json
import sys
import time
from pathlib import Path

import click

from ..store import Store
from .base import (
    cli,
    progress_bar,
    store_option,
)


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
    from ..serving.follower import Follower

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

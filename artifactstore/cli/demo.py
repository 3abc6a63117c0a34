"""``artifactstore demo``: the files the README's tour uses."""

from pathlib import Path

import click

from ..errors import InvalidInput
from .base import cli


@cli.group()
def demo() -> None:
    """Example files to try artifactstore with (./scripts/demo runs the whole story)."""


@demo.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--full", is_flag=True, help="Full-size adapters (32 layers, ~80 MB each) instead of small ones.")
def bundles(directory: Path, full: bool) -> None:
    """Write the demo's adapter bundles (DIRECTORY/bundles/v1.0.0 …), a release policy
    (DIRECTORY/policy.yaml) and a day of served requests (DIRECTORY/served.jsonl)."""
    existing = [p for p in (directory / "bundles", directory / "policy.yaml", directory / "served.jsonl") if p.exists()]
    if existing:
        raise InvalidInput(f"{existing[0]} exists already: choose an empty directory")
    from ..demo import write_tour_files  # numpy and safetensors: not for every command's start

    directory.mkdir(parents=True, exist_ok=True)
    for path in write_tour_files(directory, small=not full):
        click.echo(path)

"""Commands for inference servers: checkout, follow, route, gateway."""

import importlib
import secrets
import socket
import sys
import time
from pathlib import Path

import click

from ..errors import ArtifactStoreError, InvalidParameter
from ..store import Store
from .base import (
    DAY,
    FiniteFloat,
    cli,
    emit_json,
    json_option,
    progress_bar,
    store_option,
)

NODE_VARIABLE = "ARTIFACTSTORE_NODE"


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
@click.option("--poll-ms", type=FiniteFloat(min=0.1, max=DAY * 1000),
              help="How often to look at the pointer [default: a local store wakes the follower by inotify and "
                   "is looked at every 500 besides (every 2 where it cannot be watched); a shared store's change marker every 500, the ref when it "
                   "changed and every 30 s besides].")
@click.option("--probe", metavar="TENSOR", help="Also print the first element of this tensor on each swap.")
@click.option("--node", metavar="NAME", envvar=NODE_VARIABLE,
              help=f"This server's name in the fleet: it reports a heartbeat and its smoke checks to the store "
                   f"[default: ${NODE_VARIABLE}, else the host name].")
@click.option("--smoke", "smoke", metavar="MODULE:FUNCTION",
              help="The server's inference on one known input, function(loaded_version, input) -> output: run on "
                   "each test of a version's smoke_tests.jsonl before it goes live.")
@click.option("--heartbeat-s", "heartbeat", type=FiniteFloat(min=0.05, max=DAY), default=5.0,
              show_default=True, help="Seconds between heartbeats when nothing changes.")
@store_option
def follow(ref, framework, device, poll_ms, probe, node, smoke, heartbeat, store_path) -> None:
    """Follow pointer REF like an inference server: keep its hot versions loaded, print one JSON line
    per swap ({"version", "bundle", "at": monotonic seconds, "probe"}), until stdin closes (Ctrl-D at a
    terminal).

    Once the hot versions are loaded it prints {"resident": [versions]}."""
    from ..serving.follower import Follower

    def warn(message: str) -> None:
        click.echo(f"warning: {message}", err=True)

    def probed(live) -> float | None:
        """The probe's first element, or None (and a warning) where the version cannot give one: a
        callback of the follower must not raise, or the swap it reports would look failed."""
        if probe is None:
            return None
        if probe not in live.tensors:
            warn(f"--probe {probe}: {live.version} has no such tensor")
            return None
        try:
            return float(live.tensors[probe].reshape(-1)[0].item())
        except (IndexError, TypeError, ValueError) as exc:
            warn(f"--probe {probe}: {live.version}'s first element cannot be shown ({exc})")
            return None

    def announce(_, live) -> None:
        emit_json({"version": live.version, "bundle": live.bundle, "at": time.monotonic(), "probe": probed(live)})
        sys.stdout.flush()

    with Follower(Store(store_path), ref, framework=framework, device=device,
                  poll_interval=poll_ms / 1000 if poll_ms else None, node=node or socket.gethostname(),
                  smoke_function=_function(smoke) if smoke else None, heartbeat_interval=heartbeat,
                  on_swap=announce, on_error=warn) as follower:
        emit_json({"resident": sorted(follower.resident)})
        sys.stdout.flush()
        if sys.stdin.isatty():
            click.echo("following; Ctrl-D ends it", err=True)
        sys.stdin.read()


def _function(spec: str):
    """The function ``module:name`` names."""
    module, colon, name = spec.partition(":")
    if not colon or not module or not name:
        raise InvalidParameter(f"--smoke takes MODULE:FUNCTION, not {spec!r}")
    try:
        function = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise InvalidParameter(f"--smoke {spec}: {exc}") from None
    if not callable(function):
        raise InvalidParameter(f"--smoke {spec}: not a function")
    return function


@cli.command()
@click.argument("ref", metavar="CLIENT/MODEL@POINTER")
@click.option("--key", help="The request's key (a user or session id): a key keeps its version while the canary "
                            "stands. Without one, each call draws a random key.")
@store_option
@json_option
def route(ref, key, store_path, as_json) -> None:
    """Print the immutable name (client/model@vX.Y.Z) that serves a request for REF: the canary's
    share of keys go to the canary, the rest to production."""
    if key is None:  # drawn here rather than by route(), so that --json can say which key it was
        key = secrets.token_hex(16)
    routed = Store(store_path).route(ref, key)
    if as_json:
        emit_json({"ref": ref, "key": key, "routed": routed, "version": routed.partition("@")[2]})
    else:
        click.echo(routed)


@cli.command()
@click.option("--upstream", required=True, metavar="URL",
              help="The OpenAI-compatible server requests go to (vLLM), e.g. http://127.0.0.1:8000.")
@click.option("--host", default="127.0.0.1", show_default=True, help="The address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True,
              help="The port to listen on; 0 picks a free one.")
@store_option
def gateway(upstream, host, port, store_path) -> None:
    """Serve an OpenAI-compatible gateway: the model client/model@POINTER of /v1/completions and
    /v1/chat/completions is routed to a version per request (key: the X-Artifactstore-Key header,
    else the request's "user") and the request forwarded to --upstream, streaming included.

    Prints {"listening": URL, "upstream": URL} on stdout once it accepts connections."""
    try:
        from ..serving.gateway import serve
    except ImportError as exc:
        missing = (exc.name or "").partition(".")[0]
        raise ArtifactStoreError(f"the gateway needs {missing}: pip install 'artifactstore[serve]'") from None

    def announce(url: str) -> None:
        emit_json({"listening": url, "upstream": upstream})
        sys.stdout.flush()

    serve(Store(store_path).registry, upstream, host, port, announce)

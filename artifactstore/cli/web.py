"""``artifactstore serve``: the dashboard (docs/web.md)."""

import sys
from pathlib import Path

import click

from ..errors import ArtifactStoreError
from ..store import Store
from .base import DAY, FiniteFloat, cli, emit_json, store_option


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="The address to listen on. Beyond the loopback a token is required, and every page needs signing in.")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True,
              help="The port to listen on; 0 picks a free one.")
@click.option("--token-file", type=click.Path(path_type=Path, dir_okay=False),
              help="Tokens that may act, one NAME:SECRET per line (besides $ARTIFACTSTORE_UI_TOKEN); the audit log "
                   "records ui:NAME.")
@click.option("--allowed-host", "allowed_hosts", metavar="NAME", multiple=True,
              help="A name browsers reach the server by besides --host and the loopback's (a proxy's, this machine's "
                   "on the network; *.example.com for its subdomains); repeatable. A request naming any other host "
                   "is refused (DNS rebinding); a form may come from a page of these names.")
@click.option("--poll", type=FiniteFloat(min=0.1, max=DAY), metavar="SECONDS",
              help="How often to look for registry changes [default: 1 for a local store, 5 for a shared one].")
@store_option
@click.option("--json", "as_json", is_flag=True, help="Print {\"listening\": URL, \"actions\": [names]} once serving.")
def serve(host, port, token_file, allowed_hosts, poll, store_path, as_json) -> None:
    """Serve the dashboard: every client and model, versions, pointers over time, drift, compare;
    promote, roll back, set the rollback target and review with a token. Read-only without one."""
    try:
        from ..web.app import serve as run
        from ..web.auth import read_tokens
    except ImportError as exc:
        missing = (exc.name or "").partition(".")[0]
        raise ArtifactStoreError(f"the dashboard needs {missing}: pip install 'artifactstore[serve]'") from None
    tokens = read_tokens(token_file)
    names = [t.actor for t in tokens]

    def announce(url: str) -> None:
        if as_json:
            emit_json({"listening": url, "actions": names})
        else:
            click.echo(f"dashboard at {url} ({'actions on for ' + ', '.join(names) if names else 'read-only: no token'})")
        sys.stdout.flush()

    run(Store(store_path), host, port, tokens, announce, poll=poll, allowed_hosts=allowed_hosts)

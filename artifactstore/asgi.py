"""Running an ASGI app (the gateway, the dashboard) on a socket opened before it starts, so that the
URL can be announced, with the port the system chose, while connections already wait in the backlog."""

import socket
from typing import Any


def listen(host: str, port: int) -> tuple[socket.socket, str]:
    """A TCP socket listening on ``host``:``port`` (0: a free port) and its URL."""
    family, kind, protocol, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                            proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE)[0]
    # Naming IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and
    # without it every answer waits 40 ms for a delayed ACK between its headers and its body.
    listener = socket.socket(family, kind, protocol)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(address)
    listener.listen(socket.SOMAXCONN)
    return listener, f"http://{f'[{host}]' if ':' in host else host}:{listener.getsockname()[1]}"


def run(app: Any, listener: socket.socket, **options: Any) -> None:
    """Serve ``app`` on ``listener`` until interrupted (uvicorn's ``Config`` takes ``options``)."""
    import uvicorn

    uvicorn.Server(uvicorn.Config(app, log_level="warning", **options)).run(sockets=[listener])

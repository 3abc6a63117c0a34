"""An OpenAI-compatible gateway that turns pointers into versions, in front of vLLM servers.

A client asks for ``"model": "acme/support@production"``; the gateway routes it, per request, to
the version that serves it (``registry/routing.py``: the canary's share, sticky per key), writes
``acme/support@v1.3.0`` into the request and forwards it to the upstream server, whose resolver
loads that immutable name (``serving/vllm.py``). The registry is read on every request, so a
promote or rollback takes effect at the next request, without restarting anything.

Needs the ``serve`` extra (Starlette, uvicorn, httpx). docs/serving.md, "Gateway".
"""

import asyncio
import json
import posixpath
from collections.abc import Callable
from contextlib import asynccontextmanager
from http.cookiejar import CookieJar, DefaultCookiePolicy

import httpx
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..asgi import listen, run
from ..errors import ArtifactStoreError, InvalidParameter, NotFound
from ..registry.registry import Registry
from ..registry.routing import route_ref

ROUTED_PATHS = ("/v1/completions", "/v1/chat/completions")
# vLLM's runtime adapter endpoints, open whenever its resolvers are (VLLM_ALLOW_RUNTIME_LORA_UPDATING):
# through them any client could load a file path or unload what others are served. Not forwarded.
REFUSED_PATHS = ("/v1/load_lora_adapter", "/v1/unload_lora_adapter")
KEY_HEADER = "x-artifactstore-key"
ROUTED_HEADER = "x-artifactstore-routed"
# Per connection, not per message (RFC 9110 7.6.1), and the body's length, which the gateway may change.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                        "transfer-encoding", "upgrade", "host", "content-length"})
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


def error(status: int, message: str, kind: str) -> JSONResponse:
    """An error in the OpenAI API's shape, which OpenAI clients show to their users."""
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": status}}, status)


def routed_body(body: bytes, registry: Registry, key: str | None) -> tuple[bytes, str | None]:
    """The request body with its ``model`` routed, and the routed name; None when the model is not
    a ``client/model@…`` name (the base model, another server's name) and the body stays as it is."""
    try:
        request = json.loads(body)
    except ValueError:
        raise InvalidParameter("the request body is not JSON") from None
    if not isinstance(request, dict):
        raise InvalidParameter("the request body is not a JSON object")
    model = request.get("model")
    if not isinstance(model, str) or "@" not in model:
        return body, None
    user = request.get("user")
    routed = route_ref(registry, model, key if key is not None else user if isinstance(user, str) else None)
    return json.dumps(request | {"model": routed}).encode(), routed


def normal_path(path: str) -> str:
    """A request path as the gateway judges and forwards it: repeated slashes, a trailing slash and
    dot segments gone. A load balancer that merges slashes (nginx's default) would otherwise turn a
    forwarded //v1/load_lora_adapter into the endpoint the gateway refuses."""
    return posixpath.normpath("/" + "/".join(part for part in path.split("/") if part))


def create_app(registry: Registry, upstream: str) -> Starlette:
    """The gateway: POST /v1/completions and /v1/chat/completions routed, vLLM's adapter loading
    refused, everything else passed through."""
    base = upstream.rstrip("/")
    # No read timeout: a long generation streams for as long as it takes. A jar that keeps no cookie:
    # the client serves every caller, and one caller's session must not go out with another's requests.
    client = httpx.AsyncClient(timeout=httpx.Timeout(None, connect=10.0),
                               cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])))

    async def forward(request: Request) -> Response:
        path = normal_path(request.url.path)
        if path in REFUSED_PATHS:
            return error(403, f"the gateway does not forward {path}: the server loads adapters "
                              f"from the store by their version names", "PermissionDeniedError")
        body, routed = await request.body(), None
        if request.method == "POST" and path in ROUTED_PATHS:
            try:
                # the registry read is blocking IO (a GET on a shared store): off the event loop
                body, routed = await asyncio.to_thread(routed_body, body, registry, request.headers.get(KEY_HEADER))
            except (InvalidParameter, NotFound) as exc:
                status, kind = (404, "NotFoundError") if isinstance(exc, NotFound) else (400, "BadRequestError")
                return error(status, str(exc), kind)
            except (ArtifactStoreError, OSError) as exc:
                return error(503, f"the registry cannot be read: {exc}", "ServiceUnavailableError")
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP]
        outgoing = client.build_request(request.method, base + path, params=request.url.query,
                                        headers=headers, content=body)
        try:
            answer = await client.send(outgoing, stream=True)
        except httpx.HTTPError as exc:
            return error(502, f"the upstream server {base} did not answer: {exc or type(exc).__name__}",
                         "BadGatewayError")
        # Streamed as it arrives: server-sent events reach the client token by token.
        response = StreamingResponse(answer.aiter_raw(), status_code=answer.status_code,
                                     background=BackgroundTask(answer.aclose))
        # raw, as the upstream sent them: a dict would fold several Set-Cookie headers into one
        dropped = HOP_BY_HOP | ({ROUTED_HEADER.lower()} if routed is not None else set())  # the gateway's says it
        response.raw_headers = [(k, v) for k, v in answer.headers.raw if k.decode("latin-1").lower() not in dropped]
        if routed is not None:
            response.raw_headers.append((ROUTED_HEADER.lower().encode(), routed.encode()))
        return response

    @asynccontextmanager
    async def lifespan(_):
        yield
        await client.aclose()

    return Starlette(routes=[Route("/{path:path}", forward, methods=METHODS)], lifespan=lifespan)


def serve(registry: Registry, upstream: str, host: str, port: int, on_listening: Callable[[str], None]) -> None:
    """Run the gateway until interrupted. ``port`` 0 picks a free port; ``on_listening`` is given
    the URL once connections are accepted (they wait in the backlog until the server starts)."""
    url = httpx.URL(upstream)
    if url.scheme not in ("http", "https") or not url.host:
        raise InvalidParameter(f"--upstream must be an http:// or https:// URL, not {upstream!r}")
    listener, address = listen(host, port)
    on_listening(address)
    run(create_app(registry, upstream), listener)

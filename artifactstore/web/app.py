"""The dashboard as an ASGI app (Starlette, Jinja2 templates shipped in this package) and
``serve``, which runs it with uvicorn. docs/web.md says what each page shows and how acting works.

Pages are rendered on the server, charts included (svg.py); the one script (static/live.js)
only reloads the parts of a page that changed when ``/events`` says the registry moved. No GET
changes anything; every POST is checked for a signed-in session and its CSRF token before its
form is even read for anything else.
"""

import asyncio
import ipaddress
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import jinja2
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..asgi import listen, run
from ..errors import ArtifactStoreError, InvalidParameter, NotFound
from ..progress import human_bytes
from ..registry.refs import ModelName
from ..store import Store
from .actions import ACTIONS
from .auth import Session, Sessions, Token, same_token
from .dashboard import Dashboard
from .release import ReleaseStatus, fleet_status

SESSION_COOKIE = "artifactstore_session"
LOGIN_COOKIE = "artifactstore_login"  # the sign-in form's own CSRF token (double submit)
MAX_FORM_BYTES = 64 * 1024
LIVE_REFRESH_HEADER = "x-live-refresh"  # live.js sends it with the fetch that refreshes a page
DRIFT_SECONDS = 30  # how often drift statuses are read again when the registry holds still
RELEASE_SECONDS = 5  # how often the serving nodes' reports are read again (they report every 5 s)
KEEPALIVE_SECONDS = 15
FAILED_SIGN_IN_PAUSE = 0.5
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")  # as a Host header names them
# a name, a wildcard for its subdomains, an IPv4 address, or an IPv6 one in brackets
ALLOWED_HOST = re.compile(r"(\*\.)?[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*|\[[0-9A-Fa-f:.]+\]")
SECURITY_HEADERS = {
    # everything from this server, no inline script or style: a feature name that slipped through
    # escaping still could not run
    "content-security-policy": "default-src 'self'; img-src 'self' data:; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


class Watcher:
    """Looks at the registry every ``poll`` seconds on a thread; when it moved (or drift is due)
    runs the dashboard's background pass. ``version`` is what ``/events`` streams."""

    def __init__(self, dashboard: Dashboard, poll: float):
        self.dashboard = dashboard
        self.poll = poll
        self.version = ""
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dashboard-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        seen, drift_at, release_at = None, 0.0, 0.0
        while not self._stop.is_set():
            try:
                version = self.dashboard.signature()
                if version != seen or time.monotonic() - drift_at >= DRIFT_SECONDS:
                    self.dashboard.refresh(drift=True)
                    drift_at = time.monotonic()
                if version != seen or time.monotonic() - release_at >= RELEASE_SECONDS:
                    self.dashboard.refresh_release()
                    release_at = time.monotonic()
                version = self.dashboard.signature()
                seen, self.version, self.error = version, version, None
            except Exception as exc:  # a bucket that did not answer, a damaged object: say so on the pages, go on
                self.error = str(exc) or type(exc).__name__
            self._stop.wait(self.poll)


def _templates() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("artifactstore.web", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True)
    env.filters["bytes"] = lambda n: "—" if n is None else human_bytes(n)
    env.filters["when"] = _when
    env.filters["metric"] = lambda value: "—" if value is None else f"{value:.4g}" if isinstance(value, float) \
        else str(value)
    env.filters["quote"] = lambda text: quote(str(text), safe="")
    env.globals["ACTIONS"] = ACTIONS
    return env


def _when(moment: str | datetime | None) -> str:
    """A time to the minute, as the pages show times (UTC)."""
    if isinstance(moment, datetime):
        return moment.strftime("%Y-%m-%d %H:%M")
    return (moment or "")[:16].replace("T", " ")


def create_app(store: Store, tokens: list[Token], *, require_sign_in: bool = False, poll: float = 1.0,
               release_status: ReleaseStatus = fleet_status, bound_host: str | None = None,
               allowed_hosts: Iterable[str] = ()) -> Starlette:
    """The dashboard over ``store``. Actions are on only with ``tokens``; ``require_sign_in``
    closes the read-only pages too (a server bound beyond the loopback). A request is served only
    when its Host names the loopback, ``bound_host`` or one of ``allowed_hosts`` (a proxy's name,
    say): a site that points its own name at 127.0.0.1 (DNS rebinding) must not read the pages.
    A form may also come from a page of ``allowed_hosts`` (a proxy may rewrite the Host)."""
    named_hosts = [_host_header_name(host) for host in allowed_hosts]
    trusted_hosts = [*LOOPBACK_HOSTS, *([_host_header_name(bound_host)] if bound_host else []), *named_hosts]
    dashboard = Dashboard(store, release_status)
    sessions = Sessions(tokens)
    watcher = Watcher(dashboard, poll)
    templates = _templates()
    flashes: dict[str, list[tuple[str, str]]] = {}  # session id -> messages for its next page

    def session_of(request: Request) -> Session | None:
        return sessions.get(request.cookies.get(SESSION_COOKIE))

    def page(request: Request, template: str, context: dict[str, Any], status: int = 200) -> HTMLResponse:
        session = session_of(request)
        # live.js's refresh of a page shows no messages: they are for the page an action redirects to
        refresh = request.headers.get(LIVE_REFRESH_HEADER) is not None
        messages = flashes.pop(session.id, []) if session and not refresh else []
        body = templates.get_template(template).render(
            request=request, session=session, actions_on=sessions.enabled, messages=messages,
            live_version=watcher.version, watcher_error=watcher.error, **context)
        return HTMLResponse(body, status, headers=SECURITY_HEADERS)

    def refusal(request: Request, status: int, message: str) -> HTMLResponse:
        return page(request, "message.html", {"title": "Refused" if status == 403 else "Not found"
                                               if status == 404 else "Error", "message": message}, status)

    def reading(render: Callable[[Request], Response]) -> Callable:
        """A read-only page: rendered on a worker thread; a store error is a page saying it."""
        async def endpoint(request: Request) -> Response:
            if require_sign_in and session_of(request) is None:
                return RedirectResponse(f"/login?next={quote(request.url.path + '?' + request.url.query)}", 303)
            try:
                return await asyncio.to_thread(render, request)
            except NotFound as exc:
                return refusal(request, 404, str(exc))
            except InvalidParameter as exc:
                return refusal(request, 400, str(exc))
            except ArtifactStoreError as exc:
                return refusal(request, 500, f"the store could not be read: {exc}")
        return endpoint

    def overview(request: Request) -> Response:
        return page(request, "overview.html", dashboard.overview())

    def model_page(request: Request) -> Response:
        q = request.query_params
        name = f"{request.path_params['client']}/{request.path_params['model']}"
        data = dashboard.model_page(name, at=q.get("at") or None, metric=q.get("metric") or None,
                                    version=q.get("version") or None, full_log=q.get("log") == "all",
                                    all_features=q.get("features") == "all")
        return page(request, "model.html", data)

    def compare(request: Request) -> Response:
        q = request.query_params
        name = f"{request.path_params['client']}/{request.path_params['model']}"
        state = dashboard.head(ModelName.parse(name))
        versions = state.sorted_versions()
        if len(versions) < 2:
            raise InvalidParameter(f"{name} has {len(versions)} version{'' if len(versions) == 1 else 's'}: "
                                   "nothing to compare")
        b = q.get("b") or versions[-1]
        at = versions.index(b) if b in versions else len(versions) - 1
        a = q.get("a") or versions[at - 1 if at > 0 else 1]  # by default: the version before b
        return page(request, "compare.html", dashboard.compare(name, a, b))

    async def read_form(request: Request) -> dict[str, str]:
        body = await request.body()
        if len(body) > MAX_FORM_BYTES:
            raise InvalidParameter("the form is too large")
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
            raise InvalidParameter("expected a form (application/x-www-form-urlencoded)")
        return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))

    def foreign_origin(request: Request) -> bool:
        """A POST whose Origin names another site (browsers send it with every POST): neither the
        Host it was sent to nor a name the server was told it is reached by (a proxy that rewrites
        the Host sends the upstream's)."""
        origin = request.headers.get("origin")
        if origin is None or origin == "null":
            return origin == "null"
        parts = urlsplit(origin)
        return parts.netloc != request.headers.get("host") and not _names_host(named_hosts, parts.hostname)

    async def posted_form(request: Request) -> dict[str, str] | Response:
        """The form of a POST sent from this site, or the refusal of one that was not or cannot be read."""
        if foreign_origin(request):
            return refusal(request, 403, "refused: the form was sent from another site")
        try:
            return await read_form(request)
        except InvalidParameter as exc:
            return refusal(request, 400, str(exc))

    async def act(request: Request) -> Response:
        try:
            model = ModelName.parse(f"{request.path_params['client']}/{request.path_params['model']}")
        except InvalidParameter as exc:
            return refusal(request, 404, str(exc))
        if not sessions.enabled:
            return refusal(request, 403, "actions are off: this server was started without a token "
                                         "(ARTIFACTSTORE_UI_TOKEN or --token-file)")
        session = session_of(request)
        if session is None:
            return refusal(request, 403, "sign in with a token to act")
        form = await posted_form(request)
        if isinstance(form, Response):
            return form
        if not same_token(session.csrf, form.get("csrf")):
            return refusal(request, 403, "refused: the form's CSRF token is missing or wrong (reload the page and "
                                         "try again)")
        action = ACTIONS.get(request.path_params["action"])
        if action is None:
            return refusal(request, 404, f"no action {request.path_params['action']!r}")
        back = RedirectResponse(f"/m/{model}#actions", 303)
        reason = form.get("reason", "").strip()
        if not reason:
            flashes.setdefault(session.id, []).append(("error", f"{action.title}: refused, a reason is required "
                                                                "(it is recorded in the audit log)"))
            return back
        try:
            done = await asyncio.to_thread(action.run, store, model, form, session.token.actor, reason)
            flashes.setdefault(session.id, []).append(("ok", f"{done} (recorded as {session.token.actor})"))
        except ArtifactStoreError as exc:
            flashes.setdefault(session.id, []).append(("error", f"{action.title}: {exc}"))
        return back

    def login_form(request: Request, error: str | None = None, status: int = 200) -> Response:
        nonce = request.cookies.get(LOGIN_COOKIE) or _random()
        response = page(request, "login.html", {"error": error, "login_csrf": nonce,
                                                "next": _local_path(request.query_params.get("next"))}, status)
        _set_cookie(request, response, LOGIN_COOKIE, nonce, 600)
        return response

    async def login(request: Request) -> Response:
        if request.method == "GET":
            return login_form(request)
        if not sessions.enabled:
            return refusal(request, 403, "actions are off: this server was started without a token")
        form = await posted_form(request)
        if isinstance(form, Response):
            return form
        if not same_token(request.cookies.get(LOGIN_COOKIE, ""), form.get("csrf")) or not form.get("csrf"):
            return login_form(request, "the sign-in form expired: try again", 403)
        session = sessions.sign_in(form.get("token", ""))
        if session is None:
            await asyncio.sleep(FAILED_SIGN_IN_PAUSE)  # guessing secrets one request at a time is slow
            return login_form(request, "that is not a token this server was started with", 401)
        response = RedirectResponse(_local_path(form.get("next")), 303)
        _set_cookie(request, response, SESSION_COOKIE, session.id, None)
        return response

    async def logout(request: Request) -> Response:
        session = session_of(request)
        if session is not None:
            try:
                form = await read_form(request)
            except InvalidParameter as exc:
                return refusal(request, 400, str(exc))
            if not same_token(session.csrf, form.get("csrf")):
                return refusal(request, 403, "refused: the form's CSRF token is missing or wrong")
            sessions.sign_out(session.id)
        response = RedirectResponse("/", 303)
        response.delete_cookie(SESSION_COOKIE)
        return response

    async def events(request: Request) -> Response:
        if require_sign_in and session_of(request) is None:
            return Response("sign in first", 403)

        async def stream():
            sent, quiet = None, 0.0
            while True:
                if watcher.version and watcher.version != sent:
                    sent, quiet = watcher.version, 0.0
                    yield f"data: {sent}\n\n"
                elif quiet >= KEEPALIVE_SECONDS:
                    quiet = 0.0
                    yield ": still here\n\n"
                await asyncio.sleep(0.25)
                quiet += 0.25

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"cache-control": "no-store", "x-accel-buffering": "no"})

    @asynccontextmanager
    async def lifespan(_):
        watcher.start()
        yield
        watcher.stop()

    routes = [
        Route("/", reading(overview)),
        Route("/m/{client}/{model}", reading(model_page)),
        Route("/m/{client}/{model}/compare", reading(compare)),
        Route("/m/{client}/{model}/actions/{action}", act, methods=["POST"]),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/events", events),
        Mount("/static", StaticFiles(packages=[("artifactstore.web", "static")]), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=trusted_hosts)])
    app.state.dashboard = dashboard
    app.state.watcher = watcher
    return app


def _host_header_name(host: str) -> str:
    """``host`` as a Host header names it (an IPv6 address in brackets), or InvalidParameter."""
    name = f"[{host}]" if ":" in host and not host.startswith("[") else host
    if ALLOWED_HOST.fullmatch(name) is None:
        raise InvalidParameter(f"not a host name to allow: {host!r} (a name such as dash.example.com, a wildcard "
                               "such as *.example.com, or an address)")
    return name


def _names_host(names: list[str], host: str | None) -> bool:
    """Whether one of ``names`` (as ``_host_header_name`` gives them) is ``host`` (a URL's
    hostname: lowercase, an IPv6 address without brackets), or a wildcard over it."""
    if not host:
        return False
    for name in (n.lower().strip("[]") for n in names):
        if host == name or (name.startswith("*.") and host.endswith(name[1:])):
            return True
    return False


def _random() -> str:
    return secrets.token_urlsafe(24)


def _local_path(text: str | None) -> str:
    """Where to go after signing in: a path of this server only (never another site)."""
    if not text or not text.startswith("/") or text.startswith("//") or "\\" in text:
        return "/"
    return text


def _set_cookie(request: Request, response: Response, name: str, value: str, max_age: int | None) -> None:
    response.set_cookie(name, value, max_age=max_age, path="/", httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` names is this machine's loopback."""
    try:
        addresses = {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except socket.gaierror:
        return False
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


def serve(store: Store, host: str, port: int, tokens: list[Token], on_listening: Callable[[str], None], *,
          poll: float | None = None, release_status: ReleaseStatus = fleet_status,
          allowed_hosts: Iterable[str] = ()) -> None:
    """Run the dashboard until interrupted. Beyond the loopback it needs a token, and every page
    then needs signing in. ``port`` 0 picks a free port; ``on_listening`` gets the URL. Requests
    are served for ``host``, the loopback's names and ``allowed_hosts`` only."""
    loopback = is_loopback(host)
    if not loopback and not tokens:
        raise InvalidParameter(f"--host {host} is not a loopback address: serving there needs a token "
                               "(ARTIFACTSTORE_UI_TOKEN or --token-file), or bind 127.0.0.1")
    app = create_app(store, tokens, require_sign_in=not loopback,
                     poll=poll if poll is not None else (5.0 if store.shared else 1.0), release_status=release_status,
                     bound_host=host, allowed_hosts=allowed_hosts)
    listener, address = listen(host, port)
    on_listening(address)
    # open /events streams end at once on shutdown instead of holding it up
    run(app, listener, timeout_graceful_shutdown=1)

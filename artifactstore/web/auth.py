"""Who may act in the dashboard: tokens, signed-in sessions and the forms' CSRF tokens.

A token is ``NAME:SECRET``: ``$ARTIFACTSTORE_UI_TOKEN`` holds one, a token file one per line
(blank lines and ``#`` comments skipped). The name is who the audit log records (``ui:NAME``); the
secret is what a person types to sign in, and is never logged, shown or stored anywhere else.

Signing in gives the browser a random session id in an HttpOnly, SameSite=Strict cookie; the
session holds its own random CSRF token, which every action form carries in a hidden field and
every POST must present (compared in constant time). A cookie alone never acts: a page of another
site can make the browser send it (SameSite stops most of that, the form token the rest).
"""

import hmac
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InvalidParameter

TOKEN_VARIABLE = "ARTIFACTSTORE_UI_TOKEN"
TOKEN_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
MIN_SECRET = 16
SESSION_SECONDS = 12 * 3600
ACTOR_PREFIX = "ui:"


@dataclass(frozen=True)
class Token:
    name: str
    secret: str = field(repr=False)

    @property
    def actor(self) -> str:
        return ACTOR_PREFIX + self.name


def parse_token(text: str, where: str) -> Token:
    """``NAME:SECRET``; ``where`` names the variable or file line in errors, which never quote it."""
    name, colon, secret = text.strip().partition(":")
    if not colon or TOKEN_NAME.fullmatch(name) is None:
        raise InvalidParameter(f"{where}: a token is NAME:SECRET, NAME of lowercase letters, digits, '.', '_' or '-' "
                               f"(the audit log records ui:NAME)")
    if len(secret) < MIN_SECRET or secret != secret.strip():
        raise InvalidParameter(f"{where}: the secret after NAME: must be at least {MIN_SECRET} characters without "
                               "surrounding spaces (e.g. python -c 'import secrets; print(secrets.token_urlsafe())')")
    return Token(name, secret)


def read_tokens(token_file: Path | None = None) -> list[Token]:
    """The tokens of ``$ARTIFACTSTORE_UI_TOKEN`` and of ``token_file``; empty: actions are off."""
    tokens = []
    if os.environ.get(TOKEN_VARIABLE):
        tokens.append(parse_token(os.environ[TOKEN_VARIABLE], f"${TOKEN_VARIABLE}"))
    if token_file is not None:
        try:
            lines = token_file.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidParameter(f"--token-file {token_file}: cannot be read ({exc.__class__.__name__})") from None
        for number, line in enumerate(lines, 1):
            if line.strip() and not line.lstrip().startswith("#"):
                tokens.append(parse_token(line, f"{token_file} line {number}"))
    names = [t.name for t in tokens]
    if len(set(names)) != len(names):
        raise InvalidParameter(f"two tokens are named {next(n for n in names if names.count(n) > 1)}: each name must "
                               "say who acted")
    secrets_seen = [t.secret for t in tokens]
    if len(set(secrets_seen)) != len(secrets_seen):
        raise InvalidParameter("two tokens have the same secret: a secret must say who acted")
    return tokens


@dataclass(frozen=True)
class Session:
    id: str = field(repr=False)
    token: Token
    csrf: str = field(repr=False)
    expires: float


class Sessions:
    """The signed-in browsers of one server process (in memory: a restart signs everyone out)."""

    def __init__(self, tokens: list[Token]):
        self.tokens = list(tokens)
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self.tokens)

    def sign_in(self, presented: str) -> Session | None:
        """A new session for the token whose secret (or ``NAME:SECRET``) was presented; None if none.
        Every token is compared, in constant time, so that the answer's timing names none."""
        presented = presented.strip()
        matched = None
        for token in self.tokens:
            for form in (token.secret, f"{token.name}:{token.secret}"):
                if hmac.compare_digest(presented.encode(), form.encode()):
                    matched = token
        if matched is None:
            return None
        session = Session(secrets.token_urlsafe(32), matched, secrets.token_urlsafe(32),
                          time.monotonic() + SESSION_SECONDS)
        with self._lock:
            self._sessions = {k: s for k, s in self._sessions.items() if s.expires > time.monotonic()}
            self._sessions[session.id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        session = self._sessions.get(session_id)
        if session is None or session.expires <= time.monotonic():
            return None
        return session

    def sign_out(self, session_id: str | None) -> None:
        with self._lock:
            self._sessions.pop(session_id or "", None)


def same_token(expected: str, presented: str | None) -> bool:
    return presented is not None and hmac.compare_digest(expected.encode(), presented.encode())

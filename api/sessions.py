"""Dashboard logins: an API key exchanged once for a signed, expiring, HttpOnly session cookie.

The cookie holds the key's role and name (never the key), an expiry and a random nonce, signed
with HMAC-SHA256 under a secret every worker reads from the store. It is ``HttpOnly`` (page
scripts cannot read it), ``SameSite=Strict`` (other sites' pages do not send it) and ``Secure``
when the request came over HTTPS. A state-changing request authenticated by the cookie must
also carry ``X-CSRF-Token``, the token the login (and ``GET /ui/session``) answered with; it is
derived from the nonce, so it changes with every login. Requests with an API key header are not
affected, and the Origin check of the middleware applies to both.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

from starlette.requests import HTTPConnection
from starlette.responses import Response

from api.auth import Identity, KeyRing
from api.errors import Forbidden, Unauthorized

COOKIE = "etl_session"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class Session:
    identity: Identity
    expires: float
    csrf: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Sessions:
    """Issues and checks session cookies (one per worker process, secret shared via the store)."""

    def __init__(self, secret: bytes, keys: KeyRing, lifetime_seconds: float) -> None:
        self._secret = secret
        self._keys = keys
        self.lifetime_seconds = lifetime_seconds

    def _sign(self, payload: bytes) -> str:
        return _b64(hmac.new(self._secret, payload, hashlib.sha256).digest())

    def _csrf(self, nonce: str) -> str:
        return _b64(hmac.new(self._secret, b"csrf:" + nonce.encode(), hashlib.sha256).digest()[:18])

    def issue(self, identity: Identity, response: Response, secure: bool) -> Session:
        expires = time.time() + self.lifetime_seconds
        nonce = secrets.token_urlsafe(16)
        payload = json.dumps({"r": identity.role, "n": identity.name, "e": int(expires), "c": nonce},
                             separators=(",", ":")).encode()
        value = f"{_b64(payload)}.{self._sign(payload)}"
        response.set_cookie(COOKIE, value, max_age=int(self.lifetime_seconds), path="/", httponly=True,
                            samesite="strict", secure=secure)
        return Session(identity, expires, self._csrf(nonce))

    @staticmethod
    def clear(response: Response, secure: bool) -> None:
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=secure)

    def read(self, connection: HTTPConnection) -> Session:
        """The session of the request's cookie; Unauthorized when missing, forged, expired or revoked."""
        value = connection.cookies.get(COOKIE)
        if not value:
            raise Unauthorized("Log in: this page needs an API key (it is exchanged for a session cookie).")
        encoded, _, signature = value.partition(".")
        try:
            payload = _unb64(encoded)
            valid = hmac.compare_digest(self._sign(payload).encode(), signature.encode())
            data = json.loads(payload) if valid else None
        except (ValueError, UnicodeError, TypeError):
            data = None
        if not isinstance(data, dict) or not {"r", "n", "e", "c"} <= data.keys():
            raise Unauthorized("The session cookie is not valid; log in again.")
        if data["e"] < time.time():
            raise Unauthorized("The session has expired; log in again.")
        identity = Identity(role=data["r"], name=data["n"])
        if not self._keys.knows(identity):
            raise Unauthorized("The key of this session is no longer configured; log in again.")
        return Session(identity, float(data["e"]), self._csrf(data["c"]))

    def identify(self, connection: HTTPConnection, method: str) -> Identity:
        """The identity of a cookie-authenticated request; a state change needs the CSRF token too."""
        session = self.read(connection)
        if method not in SAFE_METHODS:
            sent = connection.headers.get(CSRF_HEADER, "")
            if not hmac.compare_digest(sent.encode(), session.csrf.encode()):
                raise Forbidden("The CSRF token is missing or wrong; reload the page.")
        return session.identity


def is_secure(connection: HTTPConnection) -> bool:
    return connection.url.scheme in ("https", "wss")

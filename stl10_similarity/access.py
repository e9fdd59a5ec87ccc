"""Who may talk to ``stl10sim serve``: the Host allow-list, the token, and same-origin uploads.

Three attacks, three checks, made on every request before the app sees it (``server._Guard``):

* DNS rebinding: a web page at ``http://evil.example:8000/`` whose name its owner re-points at 127.0.0.1 reaches a
  loopback server from the user's own browser, as the same origin. Its requests carry ``Host: evil.example``, so
  only names we serve under are answered (:meth:`Access.host_allowed`).
* Strangers on the network: off loopback every request needs the token (``Authorization: Bearer``, or the
  HttpOnly, SameSite=Strict cookie that ``/?token=`` sets for the page), compared in constant time.
* Cross-site requests: a costly request (an upload) from a page of another origin, or from an opaque one
  (``Origin: null``), is refused before its body is read. Clients that send no Origin (curl, scripts) are not
  browsers running someone else's page, and keep working.

Nothing here imports FastAPI: the rules are plain functions of the request's headers, tested as such.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
import socket
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit

from stl10_similarity.errors import ParameterError

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")  # read-only: what a foreign page's form or fetch can't abuse
TOKEN_BYTES = 32  # a generated token: 256 random bits, 43 URL-safe characters
MIN_TOKEN_CHARS = 16  # a token chosen by the user must be at least this long



def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address to listen on) reaches this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def host_name(header: str) -> str | None:
    """The name in a ``Host`` (or an origin's netloc), without its port, lower case; None when malformed."""
    header = header.strip().lower()
    if header.startswith("["):  # [v6]:port
        end = header.find("]")
        if end < 0 or (header[end + 1 :] and not header[end + 1 :].startswith(":")):
            return None
        name, port = header[1:end], header[end + 2 :]
    else:
        name, _, port = header.partition(":")
    if not name or (port and not port.isdigit()):
        return None
    return name.rstrip(".")


def check_token(token: str | None) -> str | None:
    """A token given by the user, checked (None stays None: no token)."""
    if token is None:
        return None
    if len(token) < MIN_TOKEN_CHARS or not token.isascii() or not token.isprintable() or " " in token:
        raise ParameterError("token", f"must be at least {MIN_TOKEN_CHARS} printable ASCII characters without "
                                      "spaces (leave it out on a network address and one is made for you)")
    return token


@dataclass(frozen=True)
class Access:
    """The rules one server applies: the host names it answers to, and its token (None: no token needed)."""

    hosts: frozenset[str]
    any_address: bool  # listening on every interface: any IP address of this machine may be the Host
    token: str | None
    cookie: str  # the cookie the page's token lives in; per port, as cookies don't tell ports apart
    proxies: frozenset[str] = frozenset()  # the --allow-host names: a page served through them is our own
    generated: bool = False  # the token was made here: it must be shown to the user once

    @classmethod
    def for_server(cls, host: str, port: int, allow_hosts: tuple[str, ...] = (), token: str | None = None) -> Access:
        """The rules for a server listening on ``host:port``.

        Host names allowed: the loopback names, ``host`` itself, every ``allow_hosts`` name (a reverse proxy's),
        and, listening on every interface, this machine's name and any IP address (an address can't be rebound).
        A token is needed when one is given, and always off loopback (made here when none is given)."""
        proxies = set()
        for name in allow_hosts:
            parsed = host_name(name)
            if parsed is None or "/" in name:
                raise ParameterError("allow_host", f"{name!r} is not a host name (give a name like "
                                                   "photos.example.org, without a scheme or path)")
            proxies.add(parsed)
        names = {*LOOPBACK_NAMES, host.strip("[]").lower(), *proxies}
        wildcard = host in WILDCARD_HOSTS
        if wildcard:
            names.update({socket.gethostname().lower(), socket.getfqdn().lower()})
        names.discard("")
        token = check_token(token)
        generated = False
        if token is None and not is_loopback(host):
            token, generated = secrets.token_urlsafe(TOKEN_BYTES), True
        return cls(frozenset(names), wildcard, token, f"stl10sim-token-{port}", frozenset(proxies), generated)

    def host_allowed(self, header: str | None) -> bool:
        """Whether a request's ``Host`` header names this server. A request without one (HTTP/1.0) is not a
        browser's: browsers always send it."""
        if header is None:
            return True
        name = host_name(header)
        if name is None:
            return False
        return name in self.hosts or is_loopback(name) or (self.any_address and _is_address(name))

    def origin_allowed(self, method: str, origin: str | None, host: str | None) -> bool:
        """Whether a request from ``origin`` (its ``Origin`` header) may be taken: a read-only method, no Origin (not
        a browser), or the page's own origin (the same host and port as the request's ``Host``, or an allowed name,
        as a reverse proxy may rewrite Host). ``null`` (sandboxed frames, files, some redirects) never is."""
        if method in SAFE_METHODS or origin is None:
            return True
        parts = urlsplit(origin.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return False
        if host is not None and parts.netloc.lower() == host.strip().lower():
            return True
        return host_name(parts.netloc) in self.proxies

    def token_ok(self, authorization: str | None, cookie: str | None) -> bool:
        """Whether a request carries the token (``Authorization: Bearer T`` or the page's cookie), compared in
        constant time; True when no token is needed."""
        if self.token is None:
            return True
        offered = []
        if authorization is not None:
            scheme, _, value = authorization.strip().partition(" ")
            if scheme.lower() == "bearer":
                offered.append(value.strip())
        if cookie is not None:
            offered.append(cookie_value(cookie, self.cookie) or "")
        expected = self.token.encode()
        # every offer is compared in full: which one matched, or how far, takes the same time
        return any([hmac.compare_digest(value.encode(), expected) for value in offered])

    def page_link(self, query_string: str) -> str | None:
        """``/?token=T&...``: when T is the token, where to send the browser (the same page, the token taken out of
        the address bar); else None."""
        pairs = parse_qsl(query_string, keep_blank_values=True)
        given = [value for key, value in pairs if key == "token"]
        if not given or self.token is None or not hmac.compare_digest(given[-1].encode(), self.token.encode()):
            return None
        rest = urlencode([(key, value) for key, value in pairs if key != "token"])
        return "/?" + rest if rest else "/"

    def set_cookie(self) -> str:
        """The ``Set-Cookie`` value that lets the page's own requests carry the token."""
        return f"{self.cookie}={self.token}; Path=/; HttpOnly; SameSite=Strict"

    def url(self, host: str, port: int) -> str:
        """The address to open (with the token in it when one was made here, as Jupyter prints it)."""
        shown = socket.gethostname() if host in WILDCARD_HOSTS else host
        shown = f"[{shown}]" if ":" in shown else shown
        return f"http://{shown}:{port}/" + (f"?token={self.token}" if self.generated else "")


def cookie_value(header: str, name: str) -> str | None:
    """The value of cookie ``name`` in a ``Cookie`` header, or None."""
    for part in header.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name:
            return value
    return None

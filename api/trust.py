"""Who may reach the service and from where: the Host allow-list, the same-origin rule, the client address.

A web page the user visits can make the browser send requests to the local service: through DNS
rebinding (a name the attacker controls, so a foreign ``Host``) or as a plain cross-site form
post (a foreign ``Origin``). Both are refused here before any route runs. The client address
recorded for audit comes from ``X-Forwarded-For`` only when the peer is a configured proxy.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from functools import lru_cache

from api.settings import Settings, is_loopback

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_BINDS = frozenset({"", "0.0.0.0", "::"})
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Probes and load balancers call these by whatever address they know; they reveal nothing.
OPEN_PATHS = frozenset({"/livez", "/health"})


def host_name(value: str) -> str:
    """The name in a ``Host`` header or an origin's authority, without port, brackets or final dot."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value[1:]
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class HostRules:
    """The allowed ``Host`` names and browser origins of one server."""

    def __init__(self, settings: Settings) -> None:
        configured = settings.allowed_host_list
        self.any_host = "*" in configured
        bind = host_name(settings.host)
        self.names = set(LOOPBACK_NAMES) | {host_name(name) for name in configured if name != "*"}
        # Bound to every interface (only allowed with keys): clients reach it by any of the
        # machine's addresses, or by its own name. An address cannot be rebound, a name can.
        self.any_address = bind in WILDCARD_BINDS
        if self.any_address:
            self.names.add(socket.gethostname().lower())
        else:
            self.names.add(bind)
        self.origins = {origin.rstrip("/").lower() for origin in settings.cors_origin_list}
        self._seen: dict[str, bool] = {}

    def host_allowed(self, host: str) -> bool:
        known = self._seen.get(host)
        if known is None:
            name = host_name(host)
            known = (self.any_host or name in self.names
                     or (_is_ip(name) and (self.any_address or is_loopback(name))))
            if len(self._seen) > 256:  # the cache is for the few names real clients use
                self._seen.clear()
            self._seen[host] = known
        return known

    def origin_allowed(self, origin: str, host: str | None) -> bool:
        """A browser origin may change state if it is this server's own (same authority) or CORS-listed."""
        origin = origin.strip().rstrip("/").lower()
        if origin in self.origins:
            return True
        scheme, _, authority = origin.partition("://")
        if scheme not in ("http", "https") or not authority or host is None:
            return False  # "null" (sandboxed frames, file:// pages) included
        return authority == host.strip().lower()


@lru_cache(maxsize=8)
def _networks(spec: str) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(entry.strip(), strict=False) for entry in spec.split(",") if entry.strip())


def _trusted(address: str, networks: tuple[IPNetwork, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return False
    return any(ip in network for network in networks)


def client_address(peer: str | None, forwarded_for: Iterable[str], settings: Settings) -> str | None:
    """The caller's address: the peer, or, when the peer is a trusted proxy, the right-most untrusted hop."""
    networks = _networks(settings.trusted_proxies)
    if peer is None or not networks or not _trusted(peer, networks):
        return peer
    hops = [hop.strip() for value in forwarded_for for hop in value.split(",") if hop.strip()]
    client = peer
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop.strip("[]"))
        except ValueError:
            break  # not written by a proxy of ours: stop at the last hop one of them vouched for
        client = hop
        if not _trusted(hop, networks):
            break
    return client

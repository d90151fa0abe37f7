"""The HTTP client `connectors.images` fetches with: one that connects only to permitted addresses (the server-side
request forgery guard) and keeps no cookies.

Unless private networks are allowed, every address a host name resolves to must be public (`is_public_address`:
not loopback, private, link-local incl. 169.254.169.254, shared/CGNAT, multicast, reserved, unspecified, nor an
IPv4 address wrapped in IPv6: mapped, 6to4, NAT64), or lie in one of the allowed networks. The check runs inside
the connection layer (a custom httpcore network backend) on the addresses actually connected to, for every request
and so for every redirect hop; because the socket connects to the very addresses that were checked, DNS rebinding
between check and connect is not possible. A refused address raises `BlockedAddress`, a name that does not resolve
`ResolutionFailed`, before any byte is sent.

What it must not do: follow redirects, read bodies or judge responses (`connectors.images` does), or log URLs.
"""

from __future__ import annotations

import http.cookiejar
import ipaddress
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import httpcore
import httpx

__all__ = ["BlockedAddress", "ResolutionFailed", "Resolver", "guarded_client", "is_public_address"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Sequence[str]]  # (host, port) -> addresses

NAT64_NETWORKS = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


def guarded_client(
    *,
    allow_private_networks: bool,
    allowed_networks: Sequence[str] = (),
    resolver: Resolver | None = None,
    max_connections: int,
    headers: dict[str, str],
) -> httpx.Client:
    """An httpx client whose connections pass the address guard (see the module docstring), with no environment
    proxies, no cookies and no automatic redirects. `allowed_networks`: CIDRs reachable even when private networks
    are not; `resolver` replaces the system resolver (custom DNS, tests)."""
    backend = GuardedNetworkBackend(
        resolver=resolver or system_resolver,
        allow_private=allow_private_networks,
        allowed_networks=tuple(ipaddress.ip_network(n, strict=False) for n in allowed_networks),
    )
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    return httpx.Client(
        transport=GuardedTransport(backend, limits),
        follow_redirects=False,  # the caller follows them, so every hop's scheme and count are checked
        trust_env=False,
        cookies=http.cookiejar.CookieJar(policy=RejectAllCookies()),
        headers=headers,
    )


def is_public_address(ip: IPAddress) -> bool:
    """True when `ip` is a globally routable unicast address, looking through IPv4-in-IPv6 forms."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return is_public_address(ip.ipv4_mapped)
        if ip.sixtofour is not None:
            return is_public_address(ip.sixtofour)
        if any(ip in net for net in NAT64_NETWORKS):
            return is_public_address(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if ip.is_site_local or ip.teredo is not None:
            return False
    return ip.is_global and not (
        ip.is_multicast or ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_reserved or ip.is_unspecified
    )


class BlockedAddress(Exception):
    """The host resolves to an address the guard refuses (or the URL asks for a unix socket)."""


class ResolutionFailed(Exception):
    """The host name does not resolve (a resolver outage looks the same from here)."""


def system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class GuardedNetworkBackend(httpcore.NetworkBackend):
    """httpcore's socket backend, except that a host name is resolved here, every address is checked, and the
    socket connects only to checked addresses. Raising here aborts the request before any byte is sent."""

    def __init__(
        self,
        *,
        resolver: Resolver,
        allow_private: bool,
        allowed_networks: Sequence[Network],
    ) -> None:
        self._inner = httpcore.SyncBackend()
        self._resolver = resolver
        self._allow_private = allow_private
        self._allowed_networks = tuple(allowed_networks)

    def _permitted(self, ip: IPAddress) -> bool:
        return self._allow_private or is_public_address(ip) or any(ip in net for net in self._allowed_networks)

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        name = host.strip("[]")
        try:
            addresses = [ipaddress.ip_address(a.split("%", 1)[0]) for a in self._resolver(name, port)]
        except (OSError, UnicodeError) as exc:
            raise ResolutionFailed(f"cannot resolve {name}: {exc}") from None
        if not addresses:
            raise ResolutionFailed(f"{name} resolves to no address")
        refused = [str(ip) for ip in addresses if not self._permitted(ip)]
        if refused:
            raise BlockedAddress(
                f"{name} resolves to a non-public address ({', '.join(refused)}); refused. "
                "Set allow_private_networks or allowed_networks for trusted internal hosts."
            )
        last: Exception | None = None
        for ip in addresses:
            try:
                return self._inner.connect_tcp(str(ip), port, timeout, local_address, socket_options)
            except httpcore.ConnectError as exc:
                last = exc
        assert last is not None
        raise last

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        raise BlockedAddress("unix sockets are not allowed")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class GuardedTransport(httpx.HTTPTransport):
    """httpx's transport with its connection pool rebuilt on the guarded network backend (httpx has no public
    parameter for the backend; `_pool` is what its `handle_request` uses)."""

    def __init__(self, backend: httpcore.NetworkBackend, limits: httpx.Limits) -> None:
        super().__init__(limits=limits, trust_env=False)
        if not isinstance(getattr(self, "_pool", None), httpcore.ConnectionPool):
            raise RuntimeError("this httpx version has no HTTPTransport._pool; the SSRF guard cannot be installed")
        self._pool.close()
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=True,
            http2=False,
            network_backend=backend,
        )


class RejectAllCookies(http.cookiejar.DefaultCookiePolicy):
    """Keep no cookie and send none: one image host must not see cookies set by another."""

    def set_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False

    def return_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False

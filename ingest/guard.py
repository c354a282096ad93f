"""Network guard for the crawler, installed into every img2dataset worker process.

img2dataset fetches with `urllib.request.urlopen`, i.e. the process-wide opener. We install an opener whose
connections check the *resolved* address before connecting (and connect to that checked address, so a DNS
answer cannot change between check and connect), which covers redirects too because every hop goes through
the same opener. It also caps the response size and the total time spent on one body, and speaks only
http and https (no file://, ftp://, data:).
"""
from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
import urllib.request
from dataclasses import dataclass, field

# Everything a crawler must not reach by default: loopback, private, link-local (cloud metadata lives at
# 169.254.169.254), carrier-grade NAT, multicast, reserved and unspecified ranges; `check` also refuses whatever
# else the IANA registries mark not global (documentation, benchmarking, ...).
BLOCKED_NETS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
        "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/4", "240.0.0.0/4",
        "::/128", "::1/128", "fc00::/7", "fe80::/10", "ff00::/8", "::ffff:0:0/96",
    )
)


class Blocked(OSError):
    """Raised instead of connecting; its text starts with the manifest reason."""


class TooLarge(OSError):
    pass


@dataclass(frozen=True)
class GuardPolicy:
    allow_nets: tuple[str, ...] = ()  # CIDRs that may be reached even if in BLOCKED_NETS
    max_bytes: int = 20 * 2**20  # response body cap
    max_seconds: float = 60.0  # total time for one body (a trickling server never times out per read)
    _allow: tuple = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "_allow", tuple(ipaddress.ip_network(n, strict=False) for n in self.allow_nets))

    def check(self, ip: str) -> None:
        addr = ipaddress.ip_address(ip.split("%")[0])
        if any(addr in net for net in self._allow):
            return
        for a in (addr, *embedded_ipv4(addr)):
            if not a.is_global or any(a.version == net.version and a in net for net in BLOCKED_NETS):
                raise Blocked(f"ssrf_blocked: {addr} is not a public address (allow it with --allow-net)")


NAT64 = ipaddress.ip_network("64:ff9b::/96")


def embedded_ipv4(addr) -> list:
    """The IPv4 addresses an IPv6 address carries (mapped, 6to4, Teredo, NAT64): each must be public too."""
    if addr.version != 6:
        return []
    found = [addr.ipv4_mapped, addr.sixtofour, addr.teredo[1] if addr.teredo else None]
    if addr in NAT64:
        found.append(ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF))
    return [a for a in found if a is not None]


def _resolve_checked(policy: GuardPolicy, host: str, port: int) -> tuple:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    for *_, sockaddr in infos:  # every answer must pass: a mixed answer is how rebinding sneaks in
        policy.check(sockaddr[0])
    return infos[0]


class _CappedResponse(http.client.HTTPResponse):
    policy: GuardPolicy

    def read(self, amt=None):
        if amt is not None:
            return super().read(amt)
        length = self.getheader("Content-Length")
        if length and length.isdigit() and int(length) > self.policy.max_bytes:
            raise TooLarge(f"too_large: Content-Length {length} over {self.policy.max_bytes} bytes")
        chunks, size, start = [], 0, time.monotonic()
        while True:
            chunk = super().read(min(65536, self.policy.max_bytes + 1 - size))
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            size += len(chunk)
            if size > self.policy.max_bytes:
                raise TooLarge(f"too_large: body over {self.policy.max_bytes} bytes")
            if time.monotonic() - start > self.policy.max_seconds:
                raise TimeoutError(f"timed out: body took over {self.policy.max_seconds:.0f} s")


def _connection_classes(policy: GuardPolicy):
    response_class = type("Response", (_CappedResponse,), {"policy": policy})

    class GuardedHTTP(http.client.HTTPConnection):
        def connect(self):
            family, socktype, proto, _, sockaddr = _resolve_checked(policy, self.host, self.port)
            self.sock = socket.socket(family, socktype, proto)
            self.sock.settimeout(self.timeout)
            self.sock.connect(sockaddr)

    GuardedHTTP.response_class = response_class

    class GuardedHTTPS(http.client.HTTPSConnection):
        def connect(self):
            GuardedHTTP.connect(self)
            self.sock = self._context.wrap_socket(self.sock, server_hostname=self.host)

    GuardedHTTPS.response_class = response_class
    return GuardedHTTP, GuardedHTTPS


def build_opener(policy: GuardPolicy) -> urllib.request.OpenerDirector:
    http_conn, https_conn = _connection_classes(policy)

    class HTTPHandler(urllib.request.HTTPHandler):
        def http_open(self, req):
            return self.do_open(http_conn, req)

    class HTTPSHandler(urllib.request.HTTPSHandler):
        def __init__(self):
            super().__init__(context=ssl.create_default_context())

        def https_open(self, req):
            return self.do_open(https_conn, req, context=self._context)

    opener = urllib.request.OpenerDirector()
    # No ProxyHandler: a proxy would make the checked address the proxy's, not the target's.
    for handler in (
        HTTPHandler(), HTTPSHandler(), urllib.request.HTTPRedirectHandler(),
        urllib.request.HTTPErrorProcessor(), urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.UnknownHandler(),
    ):
        opener.add_handler(handler)
    return opener


_installed: GuardPolicy | None = None


def install(policy: GuardPolicy) -> None:
    """Make this process's urlopen guarded (idempotent; called in each worker before it downloads)."""
    global _installed
    if _installed != policy:
        urllib.request.install_opener(build_opener(policy))
        _installed = policy

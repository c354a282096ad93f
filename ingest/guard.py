"""The crawler's network guard: which URLs may be fetched and which addresses may be reached.

Three pure checks and a resolver, used by the fetcher (`fetch.py`) on every request and every redirect hop:
- `parse_target` reads the host and port of a URL as urllib does and refuses what is not http(s), carries
  userinfo (`user:pass@`, unless allowed), or names something that is not a host name (`127.0.0.1:80` from a
  doubled port, `0x7f.1`, `2130706433`): such a string is never handed to DNS.
- `GuardPolicy.check` refuses every address that is not public (loopback, private, link-local, CGNAT, NAT64 of a
  private address, deprecated IPv6 forms that carry an IPv4 address, ...) unless an `--allow-net` network holds it.
- `Resolver` resolves a host name once per process (answers cached), checks every address of the answer, and is
  what aiohttp connects with: the socket goes to the address that was checked, so DNS cannot change it in between.
No proxies are used (a proxy would make the checked address the proxy's, not the target's).
"""
from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from urllib.parse import urlsplit

# Everything a crawler must not reach by default: loopback, private, link-local (cloud metadata lives at
# 169.254.169.254), carrier-grade NAT, multicast, reserved and unspecified ranges, and the IPv6 forms that carry
# an IPv4 address a router may translate (IPv4-compatible ::/96, mapped, SIIT, local-use NAT64) or that are
# deprecated (site-local); `check` also refuses whatever else the IANA registries mark not global. The last three
# are IANA special-purpose ranges newer than Python's tables: the deprecated 6to4 relay anycast (RFC 7526),
# SRv6 segment identifiers (RFC 9602) and IPv6 documentation (RFC 9637); no image is served from them.
BLOCKED_NETS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
        "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/4", "240.0.0.0/4",
        "::/96", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8", "::ffff:0:0/96", "::ffff:0:0:0/96",
        "64:ff9b:1::/48", "192.88.99.0/24", "5f00::/16", "3fff::/20",
    )
)
NAT64 = ipaddress.ip_network("64:ff9b::/96")
_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")


class Blocked(OSError):
    """Raised instead of connecting; its text starts with the manifest reason."""


class InvalidURL(ValueError):
    """A URL the crawler will not fetch; its text starts with the manifest reason (`invalid_url`)."""


@dataclass(frozen=True)
class GuardPolicy:
    allow_nets: tuple[str, ...] = ()  # CIDRs that may be reached even if in BLOCKED_NETS
    allow_userinfo: bool = False  # fetch URLs that carry `user:password@`
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


def embedded_ipv4(addr) -> list:
    """The IPv4 addresses an IPv6 address carries (mapped, 6to4, Teredo, NAT64): each must be public too."""
    if addr.version != 6:
        return []
    found = [addr.ipv4_mapped, addr.sixtofour, addr.teredo[1] if addr.teredo else None]
    if addr in NAT64:
        found.append(ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF))
    return [a for a in found if a is not None]


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str  # lower case; an IPv6 literal without brackets
    port: int

    @property
    def key(self) -> str:
        """The host as politeness, the breaker and robots.txt see it."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_ip(self) -> bool:
        return _ip_literal(self.host)


def parse_target(url: str, allow_userinfo: bool = False) -> Target:
    """Host and port of an http(s) URL as urllib reads them, or InvalidURL. Sends nothing."""
    try:
        parts = urlsplit(url)
        port = parts.port  # a port that is not a number (`:18080:18080`) is a ValueError
    except ValueError as err:
        raise InvalidURL(f"invalid_url: {err}") from None
    if parts.scheme not in ("http", "https"):
        raise InvalidURL(f"invalid_url: only http and https are fetched, not {parts.scheme or 'a relative URL'!r}")
    if "@" in parts.netloc and not allow_userinfo:
        raise InvalidURL("invalid_url: the URL carries userinfo (user:password@)")
    host = parts.hostname or ""
    if not is_host_name(host):
        raise InvalidURL(f"invalid_url: {host!r} is not a host name")
    if port == 0:  # `or` would read it as the scheme's default port
        raise InvalidURL("invalid_url: port 0 is no port to connect to")
    return Target(parts.scheme, host, port if port is not None else (443 if parts.scheme == "https" else 80))


def host_key(url: str) -> str | None:
    """The key politeness keeps a URL's host by (`Target.key`), or None for a URL that will never be fetched."""
    try:
        return parse_target(url, allow_userinfo=True).key
    except InvalidURL:
        return None


def is_host_name(host: str) -> bool:
    """An IP literal, or a DNS name whose labels are letters, digits, '-' and '_' (IDNs through IDNA). The
    numeric forms that inet_aton would read as an address (`127.1`, `0x7f.0.0.1`, `2130706433`) are not."""
    if _ip_literal(host):
        return True
    try:
        name = host.rstrip(".").encode("idna").decode("ascii").lower()
    except UnicodeError:
        return False
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        return False
    if labels[-1].isdigit():  # a top-level label is never all digits: this is an address in disguise
        return False
    try:
        socket.inet_aton(name)  # pure parsing, nothing is sent
        return False
    except OSError:
        return True


def _ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


class Resolver:
    """aiohttp's resolver interface: every answer checked against the policy, answers cached per process.

    Lookups of one name are shared while in flight; answers (and failures) are kept for `ttl` seconds, at most
    `size` names (the least recently used go first)."""

    def __init__(self, policy: GuardPolicy, ttl: float = 300.0, size: int = 65_536):
        self.policy, self.ttl, self.size = policy, ttl, size
        self._cache: OrderedDict[str, tuple[float, asyncio.Future]] = OrderedDict()

    async def addresses(self, host: str) -> list[tuple[int, str]]:
        """(family, address) for host, each checked; Blocked, InvalidURL or socket.gaierror otherwise."""
        if _ip_literal(host):
            answer = [(socket.AF_INET6 if ":" in host else socket.AF_INET, host)]
        else:
            if not is_host_name(host):
                raise InvalidURL(f"invalid_url: {host!r} is not a host name")
            answer = await asyncio.shield(self._lookup(host))
        for _, ip in answer:  # every answer must pass: a mixed answer is how rebinding sneaks in
            self.policy.check(ip)
        return answer

    def _lookup(self, host: str) -> asyncio.Future:
        now = time.monotonic()
        hit = self._cache.get(host)
        if hit and hit[0] > now:
            self._cache.move_to_end(host)
            return hit[1]
        loop = asyncio.get_running_loop()
        future = asyncio.ensure_future(self._getaddrinfo(loop, host))
        self._cache[host] = (now + self.ttl, future)
        while len(self._cache) > self.size:
            self._cache.popitem(last=False)
        return future

    @staticmethod
    async def _getaddrinfo(loop, host: str) -> list[tuple[int, str]]:
        infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        return list(dict.fromkeys((family, sockaddr[0]) for family, _, _, _, sockaddr in infos))

    # aiohttp's AbstractResolver: the connector calls this for host names (it connects to IP literals as they are)
    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[dict]:
        flags = socket.AI_NUMERICHOST | socket.AI_NUMERICSERV
        return [{"hostname": host, "host": ip, "port": port, "family": fam, "proto": 0, "flags": flags}
                for fam, ip in await self.addresses(host) if family in (socket.AF_UNSPEC, fam)]

    async def close(self) -> None:
        self._cache.clear()

"""The crawler's fetcher: one asyncio event loop per worker process (aiohttp), every guard rule on every hop.

A row goes through, in order: a politeness slot on its host (the shard's part of `--per-host`, ingest/plan.py;
waiting costs no thread), the host's breaker (`host_unreachable` once it tripped), its turn under the shard's part
of `--per-host-rate`, the host's Retry-After and its 429s (the adaptive rate, hosts.py), a connection slot
(`--threads` requests in flight), robots.txt of the host (fetched once per crawl, shared by its rows, robots.py),
then its attempts. An attempt follows redirects itself,
and each hop is parsed (`guard.parse_target`), resolved and checked (`guard.Resolver`) and, unless
`--ignore-robots`, checked against that host's robots.txt. Each request has `--timeout` for connect and headers
together; a body takes a memory slot when it starts (at most 2 x `--threads` bodies being read or waiting for the
resizer) and must keep up `--min-rate` over every `RATE_WINDOW`. The row ends at `--deadline`, counted from the
moment it holds its host's slot and pacing turn: every wait for a robots.txt (of each hop's host), every attempt and
backoff included. Transient failures are retried (`--retries`) after an exponential backoff with jitter, or
the Retry-After of a 429 or 503 (seconds or an HTTP date) when it asks for longer, while the deadline allows.
"""
from __future__ import annotations

import asyncio
import atexit
import errno
import queue
import random
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from urllib.parse import urljoin

import aiohttp
import yarl

from wit.ingest import robots
from wit.ingest.config import HEADER_OPTOUTS
from wit.ingest.crawl_stats import FetchStats
from wit.ingest.guard import Blocked, GuardPolicy, InvalidURL, Resolver, Target, parse_target
from wit.ingest.hosts import Budgets, Host, Hosts
from wit.ingest.reasons import is_transient

RATE_WINDOW = 3.0  # seconds: a body slower than --min-rate over a whole window is dropped (`too_slow`)
BACKOFF = 0.5  # seconds before the first retry; doubled each time, times a jitter in [0.5, 1)
MAX_HOPS = 10  # redirects followed, as urllib
REDIRECTS = frozenset({301, 302, 303, 307, 308})
ROBOTS_POLL = 0.1  # seconds between looks at a robots.txt answer another process is fetching
BREAKER_REASONS = frozenset({"connection_error", "timeout", "deadline", "too_slow"})


@dataclass(frozen=True)
class FetchSettings:
    policy: GuardPolicy = field(default_factory=GuardPolicy)
    timeout: float = 10.0  # connect + headers; also the longest silence inside a body
    deadline: float = 20.0  # everything one row may take: attempts, redirects, backoff
    min_rate: float = 1024.0  # bytes/s over each RATE_WINDOW once the body started; 0: no floor
    concurrency: int = 64  # requests in flight per process
    per_host: int = 8  # requests in flight per host, in a shard whose plan names no part of it
    per_host_rate: float = 0.0  # requests per second per host, likewise; 0: no limit
    host_failures: int = 5  # consecutive connect failures/timeouts that trip a host's breaker; 0: never
    retries: int = 0
    max_bytes: int = 20 * 2**20
    user_agent_token: str = "wit"
    header_optouts: tuple[str, ...] = HEADER_OPTOUTS  # X-Robots-Tag directives honoured
    robots: bool = True  # honour robots.txt and `tdm-reservation: 1`
    robots_cache: str | None = None  # the crawl's folder of robots.txt answers (robots.CrawlCache); None: per process

    @property
    def user_agent(self) -> str:
        return ("Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:72.0) Gecko/20100101 Firefox/72.0 "
                f"(compatible; {self.user_agent_token}; +https://github.com/rom1504/img2dataset)")


@dataclass
class _Job:
    """One shard's rows: its account, its part of each host's budget, and the memory slots its bodies hold (from
    their first byte until the resizer took them; per shard, so that a shard given up half-way leaks none into the
    next)."""
    stats: FetchStats
    buffers: asyncio.Semaphore
    budgets: Budgets


class Failure(Exception):
    """A row's failure; str() is `reason: detail`, which reasons.reason_for reads back."""

    def __init__(self, reason: str, detail: str, retry_after: float = 0.0):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.retry_after = reason, retry_after


_FETCHERS: dict[FetchSettings, Fetcher] = {}


def fetcher(settings: FetchSettings) -> Fetcher:
    """This process's fetcher for these settings: its connections, DNS answers and host states outlive a shard."""
    if settings not in _FETCHERS:
        _FETCHERS[settings] = Fetcher(settings)
    return _FETCHERS[settings]


class Fetcher:
    def __init__(self, settings: FetchSettings):
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="wit-fetch", daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._open(), self.loop).result()
        atexit.register(self.close)

    async def _open(self) -> None:
        s = self.settings
        self.resolver = Resolver(s.policy)
        self.hosts = Hosts(s.host_failures)
        self.robots_cache = (robots.CrawlCache(s.robots_cache, stale_after=s.deadline + 10)
                             if s.robots and s.robots_cache else None)
        self.connections = asyncio.Semaphore(s.concurrency)
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(resolver=self.resolver, use_dns_cache=False, limit=0, keepalive_timeout=30),
            headers={"User-Agent": s.user_agent, "Accept-Encoding": "identity"},
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=s.timeout),  # the rest is ours (below)
            cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False, trust_env=False,  # trust_env: no proxies
        )

    def close(self) -> None:
        if self.loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(self.session.close(), self.loop).result(timeout=5)
            except Exception:  # noqa: BLE001 - at exit, a connection that will not close is no reason to fail
                pass

    def fetch_rows(self, rows: list[tuple[int, str]], stats: FetchStats, budgets: tuple = ()
                   ) -> Iterator[tuple[int, bytes | None, str | None]]:
        """(key, body, None) or (key, None, error) for each (key, url), in the order they finish. budgets: the
        shard's part of the budget of the hosts the plan names, (host, requests in flight, requests per second)."""
        done: queue.SimpleQueue = queue.SimpleQueue()
        s = self.settings
        job = asyncio.run_coroutine_threadsafe(
            _new_job(stats, 2 * s.concurrency, Budgets(s.per_host, s.per_host_rate, budgets)), self.loop).result()
        running = asyncio.run_coroutine_threadsafe(self._fetch_all(rows, done.put, job), self.loop)
        freed = 0  # memory slots to give back: in batches, each wakeup of the loop costs a thread switch
        try:
            for _ in rows:
                if freed and (freed >= 16 or done.empty()):
                    self.loop.call_soon_threadsafe(_release, job.buffers, freed)
                    freed = 0
                item = done.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                freed += item[1] is not None
        finally:
            running.cancel()

    async def _fetch_all(self, rows, put, job: _Job) -> None:
        alive = asyncio.Semaphore(max(1024, 8 * self.settings.concurrency))  # rows scheduled at once
        tasks: set[asyncio.Task] = set()

        async def one(key: int, url: str) -> None:
            try:
                put((key, *await self._row(url, job)))
            except Exception as err:  # noqa: BLE001 - a bug must end the shard, not hang it
                put(err)

        try:
            for key, url in rows:
                await alive.acquire()
                task = asyncio.create_task(one(key, url))
                tasks.add(task)
                task.add_done_callback(lambda t: (tasks.discard(t), alive.release()))
            await asyncio.gather(*tasks)
        except asyncio.CancelledError:
            for task in tasks:
                task.cancel()
            raise

    # ------------------------------------------------------------------------------------------------- one row
    async def _row(self, url: str, job: _Job) -> tuple[bytes | None, str | None]:
        s, loop = self.settings, asyncio.get_running_loop()
        try:
            target = self._target(url)
        except Failure as failure:
            return None, str(failure)
        host = self.hosts.get(target.key)
        host.users += 1
        try:
            async with job.budgets.slots(target.key):
                if self.hosts.tripped(host):
                    raise Failure("host_unreachable", f"{target.key} failed {s.host_failures} times in a row")
                await self.hosts.pace(host, job.budgets.rate_of(target.key))
                deadline_at = loop.time() + s.deadline  # from here on, everything the row does counts
                if s.robots:
                    async with self.connections:
                        await self._robots_allow(target, host, url, deadline_at, job)
                body = await self._attempts(url, target.key, host, deadline_at, job)
            job.stats.row(target.key, None)
            return body, None
        except Failure as failure:
            job.stats.row(target.key, failure.reason)
            return None, str(failure)
        finally:
            host.users -= 1

    async def _attempts(self, url: str, key: str, host: Host, deadline_at: float, job: _Job) -> bytes:
        loop, attempt = asyncio.get_running_loop(), 0
        while True:
            try:
                async with self.connections:
                    body = await self._get(url, deadline_at, job, image=True)
                job.stats.recovered += attempt > 0
                return body
            except Failure as failure:
                pause = max(BACKOFF * 2**attempt * random.uniform(0.5, 1.0), failure.retry_after)
                turn = max(pause, self.hosts.turn_in(host))  # the host's Retry-After and 429s hold every row
                if (attempt == self.settings.retries or not is_transient(failure.reason)
                        or failure.reason in ("deadline", "host_unreachable") or loop.time() + turn >= deadline_at):
                    raise
                if self.hosts.tripped(host):
                    raise Failure("host_unreachable", f"{failure}; then the host's breaker tripped") from None
            attempt += 1
            job.stats.retries += 1
            await asyncio.sleep(pause)
            await self.hosts.pace(host, job.budgets.rate_of(key))

    # ------------------------------------------------------------------------------------------- one attempt
    def _target(self, url: str) -> Target:
        try:
            return parse_target(url, self.settings.policy.allow_userinfo)
        except InvalidURL as err:
            raise Failure("invalid_url", str(err).removeprefix("invalid_url: ")) from None

    async def _get(self, url: str, deadline_at: float, job: _Job, image: bool):
        """The body of url after its redirects (image=True), or robots.txt's (status, body) (image=False)."""
        seen = {url}
        for _ in range(MAX_HOPS + 1):
            target = self._target(url)
            host = self.hosts.get(target.key)
            await self._check_address(target, deadline_at)
            if image and self.settings.robots:
                await self._robots_allow(target, host, url, deadline_at, job)
            began = asyncio.get_running_loop().time()
            try:
                status, body, location = await self._request(url, target, host, deadline_at, job if image else None)
            finally:
                job.stats.spent(target.key, asyncio.get_running_loop().time() - began)
            if location is None:
                return body if image else (status, body)
            url = urljoin(url, location)
            if url in seen:
                raise Failure("redirect_loop", f"{url} redirects back to itself")
            seen.add(url)
        raise Failure("redirect_loop", f"more than {MAX_HOPS} redirects")

    async def _check_address(self, target: Target, deadline_at: float) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(min(deadline_at, loop.time() + self.settings.timeout)):
                await self.resolver.addresses(target.host)
        except Blocked as err:
            raise Failure("ssrf_blocked", str(err).removeprefix("ssrf_blocked: ")) from None
        except (socket.gaierror, UnicodeError) as err:
            raise Failure("dns_error", f"{target.host}: {err}") from None
        except TimeoutError:
            raise Failure("dns_error", f"{target.host}: no DNS answer within {self.settings.timeout:g} s") from None

    async def _request(self, url: str, target: Target, host: Host, deadline_at: float, job: _Job | None):
        """One request: (status, body, redirect location); job: an image's (None: robots.txt). Any answer resets
        the host's breaker; a connect failure or a timeout counts towards it."""
        try:
            result = await self._exchange(url, target, host, deadline_at, job)
        except Failure as failure:
            (self.hosts.failed if failure.reason in BREAKER_REASONS else self.hosts.answered)(host)
            if failure.reason == "http_429":
                self.hosts.throttled(host, failure.retry_after)
                if job is not None:
                    job.stats.throttled(target.key)
            elif failure.retry_after:
                self.hosts.asked_to_wait(host, failure.retry_after)
            raise
        self.hosts.answered(host)
        self.hosts.not_throttled(host)
        return result

    async def _exchange(self, url: str, target: Target, host: Host, deadline_at: float, job: _Job | None):
        s, loop, image = self.settings, asyncio.get_running_loop(), job is not None
        address = _request_url(url, target, s.policy.allow_userinfo)
        headers_by = min(deadline_at, loop.time() + s.timeout)
        try:
            async with asyncio.timeout_at(headers_by):
                response = await self.session.get(address, allow_redirects=False)
        except TimeoutError as err:
            if headers_by == deadline_at:
                raise Failure("deadline", f"no response within the {s.deadline:g} s deadline") from None
            what = "connection" if isinstance(err, aiohttp.ServerTimeoutError) else "response headers"
            raise Failure("timeout", f"no {what} within {s.timeout:g} s") from None
        except (aiohttp.ClientError, OSError, ValueError) as err:
            raise classify(err) from None
        try:
            location = response.headers.get("Location")
            if response.status in REDIRECTS and location:
                return response.status, None, location
            if image:
                _check_answer(response, s)
            elif not 200 <= response.status < 300:
                return response.status, b"", None
            limit = s.max_bytes if image else robots.MAX_BYTES
            length = response.headers.get("Content-Length", "")
            if image and length.isdigit() and int(length) > limit:
                raise Failure("too_large", f"Content-Length {length} over {limit} bytes")
            if not image:
                return response.status, await self._body(response, deadline_at, limit, truncate=True), None
            await job.buffers.acquire()  # a memory slot from the first byte: waiting for headers holds none
            try:
                body = await self._body(response, deadline_at, limit, truncate=False)
                if not body:
                    raise Failure("empty_body", f"{response.status} with an empty body")
            except BaseException:
                job.buffers.release()
                raise
            return response.status, body, None
        except BaseException:
            response.close()  # a body not read to its end: the connection is not reused
            raise
        finally:
            response.release()

    async def _body(self, response, deadline_at: float, limit: int, truncate: bool) -> bytes:
        """Read the body under the size cap, the deadline, --min-rate and the longest silence (--timeout)."""
        s, loop, content = self.settings, asyncio.get_running_loop(), response.content
        chunks, size = [], 0
        last_data = window_start = loop.time()
        window_bytes = content.total_bytes  # what arrived (read or not) when the window opened
        while True:
            try:
                async with asyncio.timeout_at(min(deadline_at, window_start + RATE_WINDOW, last_data + s.timeout)):
                    chunk = await content.readany()
            except TimeoutError:
                chunk = None
            except (aiohttp.ClientError, OSError) as err:
                raise classify(err) from None
            now = loop.time()
            if chunk == b"":
                return b"".join(chunks)
            if chunk:
                size += len(chunk)
                if size > limit:
                    if truncate:
                        return b"".join(chunks)[:limit]
                    raise Failure("too_large", f"body over {limit} bytes")
                chunks.append(chunk)
                last_data = now
            if now >= deadline_at:
                raise Failure("deadline", f"body not complete within the {s.deadline:g} s deadline ({size} bytes)")
            if now >= window_start + RATE_WINDOW:
                arrived = content.total_bytes - window_bytes
                if (s.min_rate > 0 and arrived < s.min_rate * RATE_WINDOW
                        and not _ends_in_time(response, content.total_bytes, arrived / (now - window_start),
                                              deadline_at - now)):
                    raise Failure("too_slow", f"{arrived} bytes in {RATE_WINDOW:g} s, under --min-rate "
                                              f"{s.min_rate:g} bytes/s ({size} bytes in all)")
                window_start, window_bytes = now, content.total_bytes
            if now - last_data >= s.timeout:
                raise Failure("timeout", f"no data for {s.timeout:g} s in the body ({size} bytes)")

    # --------------------------------------------------------------------------------------------- robots.txt
    async def _robots_allow(self, target: Target, host: Host, url: str, deadline_at: float, job: _Job) -> None:
        """Whether robots.txt lets the row fetch url. The host's robots.txt is read once per crawl (`_robots_answer`),
        under a deadline of its own, and shared by the host's rows: each row waits for it only until its own
        deadline."""
        previous = host.robots
        if previous is None or previous.cancelled() or (previous.done() and isinstance(previous.exception(), Failure)):
            host.robots = asyncio.ensure_future(self._robots_rules(target, job))  # never fetched, or the host did not answer
            host.robots.add_done_callback(_read_outcome)  # the rows that wanted it may all have stopped waiting
        try:
            async with asyncio.timeout_at(deadline_at):
                rules = await asyncio.shield(host.robots)
        except TimeoutError:
            raise Failure("deadline", f"robots.txt of {target.key} not read within the "
                                      f"{self.settings.deadline:g} s deadline") from None
        except robots.Unavailable as err:
            raise Failure("robots_unavailable", str(err).removeprefix("robots_unavailable: ")) from None
        except Failure as failure:
            raise Failure(failure.reason, f"robots.txt of {target.key}: {failure}") from None
        if not robots.allowed(rules, self.settings.user_agent_token, url):
            raise Failure("robots_disallowed", f"robots.txt of {target.key} disallows it")

    async def _robots_rules(self, target: Target, job: _Job):
        return robots.rules(*await self._robots_answer(target, job))

    async def _robots_answer(self, target: Target, job: _Job) -> tuple[int, bytes]:
        """The host's robots.txt (status, body): the crawl's kept answer, or fetched by this process when it is the
        first to claim it (robots.CrawlCache), or the answer another process fetched, once it is kept."""
        cache, key = self.robots_cache, target.key
        if cache is None:
            return await self._fetch_robots(target, job)
        while True:
            kept = await asyncio.to_thread(cache.read, key)
            if kept is not None:
                return kept
            if await asyncio.to_thread(cache.claim, key):
                break
            if await asyncio.to_thread(cache.claim_is_stale, key):
                await asyncio.to_thread(cache.release, key)  # its process died mid-fetch: take it over
                continue
            await asyncio.sleep(ROBOTS_POLL)
        try:
            status, body = await self._fetch_robots(target, job)
            if status < 500:  # a 5xx says "not now": not kept for the crawl
                await asyncio.to_thread(cache.store, key, status, body)
            return status, body
        finally:
            cache.release(key)  # not awaited: a cancelled fetch releases its claim too

    async def _fetch_robots(self, target: Target, job: _Job) -> tuple[int, bytes]:
        authority = f"[{target.host}]" if ":" in target.host else target.host
        url = f"{target.scheme}://{authority}:{target.port}/robots.txt"
        deadline_at = asyncio.get_running_loop().time() + self.settings.deadline
        return await self._get(url, deadline_at, job, image=False)


def _request_url(url: str, target: Target, allow_userinfo: bool) -> yarl.URL:
    """The URL aiohttp sends, after checking that yarl reads the same host and port as urllib did."""
    try:
        parsed = yarl.URL(url)
    except (ValueError, TypeError) as err:
        raise Failure("invalid_url", str(err)) from None
    expected = target.host if target.is_ip else target.host.rstrip(".").encode("idna").decode("ascii")
    if ((parsed.raw_host or "").lower().rstrip(".") != expected.rstrip(".") or parsed.port != target.port
            or (parsed.user is not None and not allow_userinfo)):
        raise Failure("invalid_url", f"the URL's host reads differently to urllib ({target.key}) and aiohttp")
    return parsed


def _check_answer(response, s: FetchSettings) -> None:
    if response.status >= 400:
        wait = retry_after(response.headers.get("Retry-After", "")) if response.status in (429, 503) else 0.0
        raise Failure(f"http_{response.status}", f"HTTP Error {response.status}: {response.reason}", wait)
    if response.status >= 300:  # a redirect without a Location (or a 304): its body is not the image
        raise Failure("bad_response", f"{response.status} {response.reason} with no Location to follow")
    optouts = response.headers.getall("X-Robots-Tag", [])
    if s.header_optouts and robots.header_optout(optouts, s.user_agent_token, s.header_optouts):
        raise Failure("robots_optout", "use of the image disallowed by an X-Robots-Tag directive")
    if s.robots and response.headers.get("tdm-reservation", "").strip() == "1":
        raise Failure("tdm_reserved", "text and data mining rights reserved (TDMRep header tdm-reservation: 1)")


def retry_after(value: str, now: float | None = None) -> float:
    """Seconds a Retry-After header asks to wait: a number of seconds or an HTTP date (RFC 9110 10.2.3); 0 when
    it is neither, or a date already past."""
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return 0.0
    if when.tzinfo is None:  # a date without a zone is not an HTTP date; read as UTC, as GMT is meant
        return 0.0
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def classify(err: BaseException) -> Failure:
    """aiohttp's and the socket's exceptions -> the manifest's reasons."""
    if isinstance(err, aiohttp.ClientConnectorError):
        cause = err.os_error
        if isinstance(cause, Blocked):
            return Failure("ssrf_blocked", str(cause).removeprefix("ssrf_blocked: "))
        if isinstance(cause, InvalidURL):
            return Failure("invalid_url", str(cause).removeprefix("invalid_url: "))
        if isinstance(err, aiohttp.ClientConnectorDNSError):
            return Failure("dns_error", str(err))
        if isinstance(err, (aiohttp.ClientConnectorCertificateError, aiohttp.ClientConnectorSSLError)):
            return Failure("tls_error", str(err))
        return Failure("connection_error", str(err))
    if isinstance(err, (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError)):
        return Failure("connection_reset", f"{type(err).__name__}: {err}")
    if isinstance(err, aiohttp.ClientSSLError):
        return Failure("tls_error", str(err))
    if isinstance(err, aiohttp.ClientResponseError):
        return Failure("bad_response", f"malformed answer: {err.message}")
    if isinstance(err, (aiohttp.InvalidURL, ValueError)):
        return Failure("invalid_url", str(err))
    os_error = err if isinstance(err, OSError) else getattr(err, "__cause__", None)
    if isinstance(os_error, OSError) and os_error.errno in (errno.ECONNRESET, errno.EPIPE):
        return Failure("connection_reset", str(err))
    if isinstance(err, (aiohttp.ClientOSError, OSError)):
        return Failure("connection_error", str(err))
    return Failure("download_error", f"{type(err).__name__}: {err}")


def _ends_in_time(response, received: int, rate: float, left: float) -> bool:
    """Whether the rest of a body its Content-Length announces comes before the deadline at `rate` (bytes/s): a
    small image sent slowly ends well inside the deadline, and the rate floor has no reason to drop it."""
    length = response.headers.get("Content-Length", "")
    return length.isdigit() and int(length) - received <= rate * left


def _read_outcome(future: asyncio.Future) -> None:
    """Read a shared fetch's outcome, so that an error no row awaits any more is kept (the next row of the host
    reads it and fetches again), not logged as lost when the task is collected."""
    if not future.cancelled():
        future.exception()


def _release(semaphore: asyncio.Semaphore, n: int) -> None:
    for _ in range(n):
        semaphore.release()


async def _new_job(stats: FetchStats, buffers: int, budgets: Budgets) -> _Job:
    return _Job(stats, asyncio.Semaphore(buffers), budgets)  # made on the loop that uses it

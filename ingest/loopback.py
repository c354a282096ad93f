"""A loopback HTTP server over real images, with fault routes: the crawler's sparring partner in the demo,
the tests and the benchmarks. It binds to 127.x.y.z only and every slow or endless route stops by itself.

Routes:  /img/<name>        the image            /404, /500, /503    that status
         /noai/<name>       image + X-Robots-Tag: noai               /tdm/<name>  image + tdm-reservation: 1
         /tagged/<name>?tag=V   image + X-Robots-Tag: V
         /slow/<name>       waits `slow_seconds`, then the image
         /slowok/<name>     waits `slowok_delay`, then sends the image evenly over `slowok_seconds`
         /delay/<name>      waits `delay_seconds`, then the image (keeps a connection busy: politeness tests)
         /flaky/<name>      503 for the first `flaky_failures` requests of a name, then the image
         /busy/<name>?times=N&after=S[&date=1]   429 for the first N requests of a name (with `Retry-After: S`,
                            or that moment as an HTTP date with date=1; none without after), then the image
         /gate/<name>       waits until `gate` is set (at most `hang_seconds`), then the image
         /trickle/<name>    honest headers, then the image 1 byte per `trickle_interval` for `trickle_seconds`
         /dribble           the status line and headers 1 byte per `trickle_interval`, for `trickle_seconds`
         /hang              reads the request and never answers (for `hang_seconds`)
         /cut/<name>?at=F   honest Content-Length, the first F of the image, then the connection is closed
         /empty             200 with an empty body
         /endless           a body that never ends (stops after `endless_seconds`)
         /reset             closes the connection with a TCP reset   /corrupt.jpg  a JPEG cut to garbage
         /page.html         an HTML page        /bomb.jpg  a JPEG whose header claims 60000 x 60000 pixels
         /loop              redirects to itself  /redirect?to=<url>  redirects to <url>
         /nolocation/<name> 302 without a Location header, the image as its body
         /robots.txt        `robots_txt` when set, else 404; after `robots_delay` seconds

What the server saw is kept for tests: `requests` (paths), `request_times` ((monotonic time, path)),
`answer_times` ((wall-clock time, path, status) of every answer sent whole, just before its last bytes), `spans`
((monotonic start, end, path) of every request: when it came and when it stopped counting as in flight),
`held` ((path, seconds the client kept a slow route's connection)), `max_connections` (most TCP connections open
at once) and `max_in_flight` (most requests being answered at once). A request stops counting as in flight just
before the last bytes of its answer leave: a client that has the whole answer (and sends its next request) can
never see it still counted, so the peak is exact for the answers sent whole. A request the client gives up on
(a trickle, a hang) ends when its client closes the connection: every new request first ends those. `closed_port` and `StuckListener` stand in for
dead hosts: nothing listening (refused at once), and a listener that never accepts (connects hang).
"""
from __future__ import annotations

import select
import socket
import struct
import sys
import threading
import time
from collections import Counter
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


class _Server(ThreadingHTTPServer):
    request_queue_size = 1024  # the default backlog of 5 drops connections from a crawler's hundreds of threads
    daemon_threads = True

    def handle_error(self, request, client_address):
        # a client that drops an idle kept-alive connection (a crawler exiting) is not the server's error
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _loopback(host: str) -> None:
    if not host.startswith("127."):
        raise ValueError("the loopback server binds to 127.0.0.0/8 only")


class LoopbackImageServer:
    def __init__(self, images: dict[str, bytes], host: str = "127.0.0.1", port: int = 0, *,
                 slow_seconds: float = 5.0, endless_seconds: float = 20.0, flaky_failures: int = 1,
                 slowok_delay: float = 1.0, slowok_seconds: float = 3.0, delay_seconds: float = 0.3,
                 trickle_interval: float = 1.0, trickle_seconds: float = 60.0, hang_seconds: float = 60.0,
                 robots_txt: str | None = None, robots_delay: float = 0.0):
        _loopback(host)
        self.images = images
        self.slow_seconds, self.endless_seconds, self.flaky_failures = slow_seconds, endless_seconds, flaky_failures
        self.slowok_delay, self.slowok_seconds, self.delay_seconds = slowok_delay, slowok_seconds, delay_seconds
        self.trickle_interval, self.trickle_seconds, self.hang_seconds = trickle_interval, trickle_seconds, hang_seconds
        self.robots_txt, self.robots_delay = robots_txt, robots_delay
        self.requests: list[str] = []
        self.request_times: list[tuple[float, str]] = []
        self.held: list[tuple[str, float]] = []
        self.flaky_seen: Counter = Counter()
        self.busy_seen: Counter = Counter()
        self.answer_times: list[tuple[float, str, int]] = []
        self.spans: list[tuple[float, float, str]] = []
        self.gate = threading.Event()
        self.connections = self.max_connections = self.in_flight = self.max_in_flight = 0
        self._lock = threading.Lock()
        self._live: dict = {}  # handler of each request in flight -> when it came
        self.httpd = _Server((host, port), self._handler())
        self.host, self.port = self.httpd.server_address[:2]
        self.url = f"http://{self.host}:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> "LoopbackImageServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _count(self, attr: str, step: int) -> None:
        with self._lock:
            self._count_locked(attr, step)

    def _count_locked(self, attr: str, step: int) -> None:
        value = getattr(self, attr) + step
        setattr(self, attr, value)
        peak = "max_" + attr
        setattr(self, peak, max(getattr(self, peak), value))

    def _begin(self, request) -> None:
        """A request is in flight; first, those whose client has closed its connection no longer are. A client
        closes a connection it gives up on before it sends its next request, and its close reaches this host's
        kernel first, so the peak never counts a request its client has left (however late its thread notices)."""
        with self._lock:
            for other in [r for r in self._live if _peer_closed(r.connection)]:
                self._end_locked(other, None)
            self._live[request] = time.monotonic()
            self._count_locked("in_flight", 1)

    def _end(self, request, status: int | None) -> None:
        with self._lock:
            self._end_locked(request, status)

    def _end_locked(self, request, status: int | None) -> None:
        """The request is no longer in flight (once); an answer sent whole is timed."""
        started = self._live.pop(request, None)
        if started is None:
            return
        self._count_locked("in_flight", -1)
        self.spans.append((started, time.monotonic(), request.path))
        if status is not None:
            self.answer_times.append((time.time(), request.path, status))

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # as real servers: without it keep-alive answers stall on delayed ACKs

            def log_message(self, *args):  # keep test and demo output clean
                pass

            def setup(self):
                super().setup()
                server._count("connections", 1)

            def finish(self):
                server._count("connections", -1)
                super().finish()

            def do_GET(self):
                with server._lock:
                    server.requests.append(self.path)
                    server.request_times.append((time.monotonic(), self.path))
                path = urlsplit(self.path).path
                head, _, name = path.lstrip("/").partition("/")
                server._begin(self)
                try:
                    self._route(head, name, path)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True
                finally:
                    self._answered()

            def _answered(self, status: int | None = None):
                server._end(self, status)

            def _route(self, head, name, path):
                image = server.images.get(name)
                if head == "img" and image:
                    return self._send(200, image)
                if head == "noai" and image:
                    return self._send(200, image, {"X-Robots-Tag": "noai"})
                if head == "tagged" and image:
                    return self._send(200, image, {"X-Robots-Tag": parse_qs(urlsplit(self.path).query)["tag"][0]})
                if head == "tdm" and image:
                    return self._send(200, image, {"tdm-reservation": "1"})
                if head == "slow" and image:
                    time.sleep(server.slow_seconds)
                    return self._send(200, image)
                if head == "delay" and image:
                    time.sleep(server.delay_seconds)
                    return self._send(200, image)
                if head == "slowok" and image:
                    return self._slowok(image)
                if head == "flaky" and image:
                    with server._lock:
                        server.flaky_seen[name] += 1
                        failing = server.flaky_seen[name] <= server.flaky_failures
                    return self._send(503, b"try later") if failing else self._send(200, image)
                if head == "busy" and image:
                    return self._busy(name, image)
                if head == "gate" and image:
                    server.gate.wait(server.hang_seconds)
                    return self._send(200, image)
                if head == "trickle" and image:
                    return self._trickle(path, self._head(200, len(image)), image)
                if head == "cut" and image:
                    at = float(parse_qs(urlsplit(self.path).query).get("at", ["0.7"])[0])
                    self.wfile.write(self._head(200, len(image)) + image[: int(len(image) * at)])
                    self.close_connection = True
                    return
                if path == "/dribble":
                    return self._trickle(path, b"", self._head(200, 1000))
                if path == "/hang":
                    return self._hold(path, server.hang_seconds)
                if path == "/empty":
                    return self._send(200, b"")
                if path == "/robots.txt":
                    time.sleep(server.robots_delay)
                    if server.robots_txt is not None:
                        return self._send(200, server.robots_txt.encode(), {"Content-Type": "text/plain"})
                if path in ("/404", "/500", "/503"):
                    return self._send(int(path[1:]), b"no")
                if path == "/endless":
                    return self._endless()
                if path == "/reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    self._answered()  # before the reset reaches the client
                    return self.connection.close()
                if path == "/corrupt.jpg":
                    first = next(iter(server.images.values()))
                    return self._send(200, first[:200] + b"\x00garbage" * 50)
                if path == "/page.html":
                    return self._send(200, b"<html><body>not an image</body></html>", {"Content-Type": "text/html"})
                if path == "/bomb.jpg":
                    return self._send(200, bomb_jpeg())
                if head == "nolocation" and image:
                    return self._send(302, image)
                if path == "/loop":
                    return self._send(302, b"", {"Location": "/loop"})
                if path == "/redirect":
                    target = parse_qs(urlsplit(self.path).query).get("to", ["/404"])[0]
                    return self._send(302, b"", {"Location": target})
                return self._send(404, b"no such route")

            def _head(self, code, length, headers=None) -> bytes:
                lines = [f"HTTP/1.1 {code} {self.responses[code][0]}", "Content-Type: image/jpeg",
                         f"Content-Length: {length}", *(f"{k}: {v}" for k, v in (headers or {}).items())]
                return ("\r\n".join(lines) + "\r\n\r\n").encode()

            def _send(self, code, body, headers=None):
                self.send_response(code)
                self.send_header("Content-Type", (headers or {}).get("Content-Type", "image/jpeg"))
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    if k != "Content-Type":
                        self.send_header(k, v)
                self._answered(code)  # before the headers leave: an empty body is whole with them
                self.end_headers()
                self.wfile.write(body)

            def _busy(self, name, image):
                query = parse_qs(urlsplit(self.path).query)
                with server._lock:
                    server.busy_seen[name] += 1
                    busy = server.busy_seen[name] <= int(query.get("times", ["1"])[0])
                if not busy:
                    return self._send(200, image)
                headers = {}
                if "after" in query:
                    after = float(query["after"][0])
                    headers["Retry-After"] = (formatdate(time.time() + after, usegmt=True) if "date" in query
                                              else f"{after:g}")
                return self._send(429, b"slow down", headers)

            def _slowok(self, image):
                start, pieces = time.monotonic(), 20
                time.sleep(server.slowok_delay)
                self.wfile.write(self._head(200, len(image)))
                step = -(-len(image) // pieces)
                for i in range(0, len(image), step):
                    if self._client_gone(server.slowok_seconds / pieces):
                        self.close_connection = True
                        break
                    if i + step >= len(image):
                        self._answered(200)  # before the last piece: the client then has the whole answer
                    self.wfile.write(image[i:i + step])
                with server._lock:
                    server.held.append((urlsplit(self.path).path, time.monotonic() - start))

            def _client_gone(self, wait: float) -> bool:
                """Wait up to `wait` s; True as soon as the client closed its end."""
                start = time.monotonic()
                readable, _, _ = select.select([self.connection], [], [], max(wait, 0))
                if not readable:
                    return False
                try:
                    gone = self.connection.recv(1, socket.MSG_PEEK) == b""
                except OSError:
                    return True
                if not gone:  # the client sent more (a next request): not gone, just wait out the interval
                    time.sleep(max(0.0, wait - (time.monotonic() - start)))
                return gone

            def _trickle(self, path, first: bytes, rest: bytes):
                """Send `first`, then `rest` one byte per interval, until the client leaves or time is up."""
                start = time.monotonic()
                self.close_connection = True
                try:
                    self.wfile.write(first)
                    for byte in rest:
                        if time.monotonic() - start > server.trickle_seconds:
                            break
                        if self._client_gone(server.trickle_interval):
                            break
                        self.wfile.write(bytes([byte]))
                except OSError:
                    pass
                with server._lock:
                    server.held.append((path, time.monotonic() - start))

            def _hold(self, path, seconds):
                start = time.monotonic()
                self.close_connection = True
                while time.monotonic() - start < seconds and not self._client_gone(0.2):
                    pass
                with server._lock:
                    server.held.append((path, time.monotonic() - start))

            def _endless(self):
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.end_headers()  # no length: the body runs until the client gives up or we stop
                deadline = time.monotonic() + server.endless_seconds
                chunk = b"\xff" * 65536
                while time.monotonic() < deadline:
                    self.wfile.write(chunk)
                self.close_connection = True

        return Handler


def _peer_closed(sock) -> bool:
    """Whether the other end has closed the connection (read without waiting and without taking any data)."""
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:  # reset, or closed here
        return True


def closed_port(host: str = "127.0.0.3") -> int:
    """A port on a loopback address where nothing listens: a connect is refused at once (a dead host)."""
    _loopback(host)
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class StuckListener:
    """A loopback port that listens but never accepts: once its backlog is full, connects hang (a host that
    drops packets). Close it to end."""

    def __init__(self, host: str = "127.0.0.4"):
        _loopback(host)
        self.sock = socket.socket()
        self.sock.bind((host, 0))
        self.sock.listen(0)
        self.host, self.port = self.sock.getsockname()[:2]
        self.url = f"http://{self.host}:{self.port}"

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def bomb_jpeg() -> bytes:
    """A tiny valid JPEG whose frame header is patched to claim 60000 x 60000 pixels."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 10, 10)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", 60000, 60000)
    return bytes(data)

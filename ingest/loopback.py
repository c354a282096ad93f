"""A loopback HTTP server over real images, with fault routes: the crawler's sparring partner in the demo,
the tests and the benchmarks. It binds to 127.x.y.z only and every slow or endless route stops by itself.

Routes:  /img/<name>        the image            /404, /500, /503    that status
         /noai/<name>       image + X-Robots-Tag: noai                /slow/<name>  waits `slow_seconds`
         /flaky/<name>      503 for the first `flaky_failures` requests of a name, then the image
         /endless           a body that never ends (stops after `endless_seconds`)
         /reset             closes the connection with a TCP reset   /corrupt.jpg  a JPEG cut to garbage
         /page.html         an HTML page        /bomb.jpg  a JPEG whose header claims 60000 x 60000 pixels
         /loop              redirects to itself  /redirect?to=<url>  redirects to <url>
"""
from __future__ import annotations

import socket
import struct
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


class _Server(ThreadingHTTPServer):
    request_queue_size = 1024  # the default backlog of 5 drops connections from a crawler's hundreds of threads
    daemon_threads = True


class LoopbackImageServer:
    def __init__(self, images: dict[str, bytes], host: str = "127.0.0.1", port: int = 0, *,
                 slow_seconds: float = 5.0, endless_seconds: float = 20.0, flaky_failures: int = 1):
        if not host.startswith("127."):
            raise ValueError("the loopback server binds to 127.0.0.0/8 only")
        self.images = images
        self.slow_seconds, self.endless_seconds, self.flaky_failures = slow_seconds, endless_seconds, flaky_failures
        self.requests: list[str] = []
        self.flaky_seen: Counter = Counter()
        self._lock = threading.Lock()
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

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test and demo output clean
                pass

            def do_GET(self):
                with server._lock:
                    server.requests.append(self.path)
                path = urlsplit(self.path).path
                head, _, name = path.lstrip("/").partition("/")
                try:
                    self._route(head, name, path)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _route(self, head, name, path):
                if head == "img" and name in server.images:
                    return self._send(200, server.images[name])
                if head == "noai" and name in server.images:
                    return self._send(200, server.images[name], {"X-Robots-Tag": "noai"})
                if head == "slow" and name in server.images:
                    time.sleep(server.slow_seconds)
                    return self._send(200, server.images[name])
                if head == "flaky" and name in server.images:
                    with server._lock:
                        server.flaky_seen[name] += 1
                        failing = server.flaky_seen[name] <= server.flaky_failures
                    return self._send(503, b"try later") if failing else self._send(200, server.images[name])
                if path in ("/404", "/500", "/503"):
                    return self._send(int(path[1:]), b"no")
                if path == "/endless":
                    return self._endless()
                if path == "/reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    return self.connection.close()
                if path == "/corrupt.jpg":
                    first = next(iter(server.images.values()))
                    return self._send(200, first[:200] + b"\x00garbage" * 50)
                if path == "/page.html":
                    return self._send(200, b"<html><body>not an image</body></html>", {"Content-Type": "text/html"})
                if path == "/bomb.jpg":
                    return self._send(200, bomb_jpeg())
                if path == "/loop":
                    return self._send(302, b"", {"Location": "/loop"})
                if path == "/redirect":
                    target = parse_qs(urlsplit(self.path).query).get("to", ["/404"])[0]
                    return self._send(302, b"", {"Location": target})
                return self._send(404, b"no such route")

            def _send(self, code, body, headers=None):
                self.send_response(code)
                self.send_header("Content-Type", (headers or {}).get("Content-Type", "image/jpeg"))
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    if k != "Content-Type":
                        self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

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

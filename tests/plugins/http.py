"""Pytest fixtures: a small real HTTP server on 127.0.0.1 (stdlib `http.server` in a thread) serving good and
hostile image URLs, for the fetcher's tests and the daemon's.

`http_server` (function scope; the server itself lives for the whole session) gives a `LocalHTTPServer`:
`url("/ok.jpg")`, `add_static(...)`, `add_redirect(...)`, `add_route(path, handler)` for anything else, and
what it saw: `hits(path)`, `max_in_flight(path)`, `bytes_sent(path)`. Routes a test adds and the request log are reset
after each test. Built-in routes (query parameters in brackets):

  /ok.jpg                a real JPEG from deploy/demo/clothing-cc0 (`jpeg_bytes`)
  /ok.png                a small valid PNG
  /404, /gone            404 and 410
  /status?code=N[&retry_after=S]  any status
  /slow[?delay=5&chunks=2]         headers at once, then the JPEG in `chunks` parts, `delay` s before each
  /slow-headers[?delay=5]          nothing for `delay` s, then the JPEG
  /huge                  Content-Length of 1 TB (then 1 KiB and the connection closes)
  /huge-stream[?mb=64]   no Content-Length, streams up to `mb` MiB until the client goes away
  /text                  text/html
  /no-content-type.jpg   the JPEG without a Content-Type header
  /redirect-loop         302 to itself
  /redirect-to-metadata  302 to http://169.254.169.254/latest/meta-data/
  /redirect?to=URL       302 to URL;  /redirect-chain?n=K  K redirects, then /ok.jpg
  /truncated.jpg         the first half of the JPEG, as a complete HTTP response
  /cut-off.jpg           declares the whole JPEG's length, sends half, closes the connection
  /bomb.png              a valid 20000x20000 1-bit PNG (400 megapixels) of a few KB
  /notimage.jpg          random bytes labelled image/jpeg

What it must not do: listen beyond 127.0.0.1, or keep a test waiting after the session (handlers that sleep
wake up when the server stops).
"""

from __future__ import annotations

import functools
import random
import struct
import threading
import time
import urllib.parse
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

DEMO_IMAGES = Path(__file__).resolve().parents[2] / "deploy" / "demo" / "clothing-cc0" / "images"


class RouteContext:
    """What a route handler gets: the request, and ways to answer it (whole, or streamed)."""

    def __init__(self, handler: BaseHTTPRequestHandler, server: LocalHTTPServer) -> None:
        self._handler = handler
        self.server = server
        parts = urllib.parse.urlsplit(handler.path)
        self.path = parts.path
        self.query = {k: v[-1] for k, v in urllib.parse.parse_qs(parts.query).items()}
        self.headers = handler.headers
        self.method = handler.command

    def send(
        self,
        status: int,
        body: bytes = b"",
        content_type: str | None = "application/octet-stream",
        headers: dict[str, str] | None = None,
    ) -> None:
        """A complete response with Content-Length."""
        all_headers = {"Content-Length": str(len(body)), **(headers or {})}
        if content_type is not None:
            all_headers["Content-Type"] = content_type
        self.start(status, all_headers)
        self.write(body)

    def start(self, status: int, headers: dict[str, str]) -> None:
        """Status line and headers; the body follows with write(). Without Content-Length, the body ends when the
        connection closes (the server closes it after the handler returns)."""
        self._handler.send_response(status)
        for name, value in headers.items():
            self._handler.send_header(name, value)
        if "Content-Length" not in headers:
            self._handler.send_header("Connection", "close")
            self._handler.close_connection = True
        self._handler.end_headers()
        self._handler.wfile.flush()

    def write(self, data: bytes) -> bool:
        """Send body bytes; False once the client has gone away."""
        try:
            self._handler.wfile.write(data)
            self._handler.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self._handler.close_connection = True
            return False
        self.server._count_bytes(self.path, len(data))
        return True

    def close(self) -> None:
        """Close the connection after this response (e.g. to cut a body short)."""
        self._handler.close_connection = True

    def sleep(self, seconds: float) -> bool:
        """Sleep in small slices; False if the server is stopping meanwhile."""
        return not self.server._stopping.wait(seconds)


Handler = Callable[[RouteContext], None]


class LocalHTTPServer:
    """A threaded HTTP/1.1 server on a loopback address (127.0.0.1 unless told) with exact-path routes."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.jpeg_bytes = _demo_jpeg()
        self.png_bytes = _small_png()
        self._routes: dict[str, Handler] = {}
        self._lock = threading.Lock()
        self._hits: Counter[str] = Counter()
        self._bytes: Counter[str] = Counter()
        self._in_flight: Counter[str] = Counter()
        self._max_in_flight: Counter[str] = Counter()
        self._stopping = threading.Event()
        self._install_builtin_routes()
        outer = self

        class _RequestHandler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                outer._dispatch(self)

            def do_HEAD(self) -> None:
                outer._dispatch(self)

            def log_message(self, format: str, *args: object) -> None:
                return None

        self._httpd = ThreadingHTTPServer((host, 0), _RequestHandler)
        self._httpd.daemon_threads = True
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="local-http", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ public

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path if path.startswith('/') else '/' + path}"

    def add_route(self, path: str, handler: Handler) -> None:
        with self._lock:
            self._routes[path] = handler

    def add_static(
        self,
        path: str,
        body: bytes,
        content_type: str | None = "image/jpeg",
        status: int = 200,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.add_route(path, lambda ctx: ctx.send(status, body, content_type, headers))

    def add_redirect(self, path: str, location: str, status: int = 302) -> None:
        self.add_route(path, lambda ctx: ctx.send(status, b"", None, {"Location": location}))

    def hits(self, path: str) -> int:
        with self._lock:
            return self._hits[path]

    def max_in_flight(self, path: str) -> int:
        """The most requests for `path` that were being handled at the same moment."""
        with self._lock:
            return self._max_in_flight[path]

    def bytes_sent(self, path: str) -> int:
        with self._lock:
            return self._bytes[path]

    def reset_log(self) -> None:
        with self._lock:
            self._hits.clear()
            self._bytes.clear()
            self._max_in_flight.clear()

    def stop(self) -> None:
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    # ------------------------------------------------------------------ internals

    def _snapshot_routes(self) -> dict[str, Handler]:
        with self._lock:
            return dict(self._routes)

    def _restore_routes(self, routes: dict[str, Handler]) -> None:
        with self._lock:
            self._routes = dict(routes)

    def _count_bytes(self, path: str, n: int) -> None:
        with self._lock:
            self._bytes[path] += n

    def _dispatch(self, handler: BaseHTTPRequestHandler) -> None:
        ctx = RouteContext(handler, self)
        with self._lock:
            route = self._routes.get(ctx.path)
            self._hits[ctx.path] += 1
            self._in_flight[ctx.path] += 1
            self._max_in_flight[ctx.path] = max(self._max_in_flight[ctx.path], self._in_flight[ctx.path])
        try:
            if route is None:
                ctx.send(404, b"no such route", "text/plain")
            else:
                route(ctx)
        except (BrokenPipeError, ConnectionResetError):
            handler.close_connection = True
        finally:
            with self._lock:
                self._in_flight[ctx.path] -= 1

    def _install_builtin_routes(self) -> None:
        jpeg = self.jpeg_bytes
        half = jpeg[: len(jpeg) // 2]
        r = self._routes
        r["/ok.jpg"] = lambda ctx: ctx.send(200, jpeg, "image/jpeg")
        r["/ok.png"] = lambda ctx: ctx.send(200, self.png_bytes, "image/png")
        r["/404"] = lambda ctx: ctx.send(404, b"not found", "text/plain")
        r["/gone"] = lambda ctx: ctx.send(410, b"gone", "text/plain")
        r["/status"] = _status
        r["/slow"] = functools.partial(_slow, body=jpeg)
        r["/slow-headers"] = functools.partial(_slow_headers, body=jpeg)
        r["/huge"] = _huge
        r["/huge-stream"] = functools.partial(_huge_stream, head=jpeg[:1024])
        r["/text"] = lambda ctx: ctx.send(200, b"<html><body>not an image</body></html>", "text/html; charset=utf-8")
        r["/no-content-type.jpg"] = lambda ctx: ctx.send(200, jpeg, None)
        r["/redirect-loop"] = lambda ctx: ctx.send(302, b"", None, {"Location": "/redirect-loop"})
        r["/redirect-to-metadata"] = lambda ctx: ctx.send(
            302, b"", None, {"Location": "http://169.254.169.254/latest/meta-data/"}
        )
        r["/redirect"] = lambda ctx: ctx.send(302, b"", None, {"Location": ctx.query.get("to", "/ok.jpg")})
        r["/redirect-chain"] = _redirect_chain
        r["/truncated.jpg"] = lambda ctx: ctx.send(200, half, "image/jpeg")
        r["/cut-off.jpg"] = functools.partial(_cut_off, body=jpeg)
        r["/bomb.png"] = lambda ctx: ctx.send(200, bomb_png(), "image/png")
        r["/notimage.jpg"] = lambda ctx: ctx.send(200, random.Random(1234).randbytes(4096), "image/jpeg")


# ---------------------------------------------------------------------- route handlers


def _status(ctx: RouteContext) -> None:
    code = int(ctx.query.get("code", "500"))
    headers = {"Retry-After": ctx.query["retry_after"]} if "retry_after" in ctx.query else None
    ctx.send(code, f"status {code}".encode(), "text/plain", headers)


def _slow(ctx: RouteContext, body: bytes) -> None:
    delay = float(ctx.query.get("delay", "5"))
    chunks = max(1, int(ctx.query.get("chunks", "2")))
    ctx.start(200, {"Content-Type": "image/jpeg", "Content-Length": str(len(body))})
    step = -(-len(body) // chunks)
    for i in range(0, len(body), step):
        if not ctx.sleep(delay) or not ctx.write(body[i : i + step]):
            ctx.close()
            return


def _slow_headers(ctx: RouteContext, body: bytes) -> None:
    if ctx.sleep(float(ctx.query.get("delay", "5"))):
        ctx.send(200, body, "image/jpeg")


def _huge(ctx: RouteContext) -> None:
    ctx.start(200, {"Content-Type": "image/jpeg", "Content-Length": str(10**12)})
    ctx.write(b"\xff\xd8\xff" + b"\0" * 1021)
    ctx.close()


def _huge_stream(ctx: RouteContext, head: bytes) -> None:
    limit = int(float(ctx.query.get("mb", "64")) * 2**20)
    ctx.start(200, {"Content-Type": "image/jpeg"})  # no Content-Length: the body ends when the connection closes
    chunk = b"\0" * 65536
    sent = 0
    if not ctx.write(head):
        return
    while sent < limit and ctx.write(chunk):
        sent += len(chunk)


def _redirect_chain(ctx: RouteContext) -> None:
    n = int(ctx.query.get("n", "1"))
    location = "/ok.jpg" if n <= 1 else f"/redirect-chain?n={n - 1}"
    ctx.send(302, b"", None, {"Location": location})


def _cut_off(ctx: RouteContext, body: bytes) -> None:
    ctx.start(200, {"Content-Type": "image/jpeg", "Content-Length": str(len(body))})
    ctx.write(body[: len(body) // 2])
    ctx.close()


# ---------------------------------------------------------------------- test images


def _demo_jpeg() -> bytes:
    return sorted(DEMO_IMAGES.glob("*.jpg"))[0].read_bytes()


def _png(width: int, height: int, bit_depth: int, color_type: int, raw_rows: Iterator[bytes]) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for row in raw_rows) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@functools.cache
def bomb_png(width: int = 20_000, height: int = 20_000) -> bytes:
    """A valid 1-bit grayscale PNG of width x height, all black: a few KB that decode to `width * height` pixels."""
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte "none" + packed bits
    return _png(width, height, 1, 0, (row for _ in range(height)))


def _small_png() -> bytes:
    rows = (b"\x00" + b"".join(bytes((x * 16, y * 16, 128)) for x in range(16)) for y in range(16))
    return _png(16, 16, 8, 2, rows)


# ---------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def http_server_session() -> Iterator[LocalHTTPServer]:
    server = LocalHTTPServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def image_cdn() -> Iterator[LocalHTTPServer]:
    """The same server on 127.0.0.2: a stand-in for an image CDN that a daemon allows explicitly
    (`fetch.allowed_networks`), while 127.0.0.1 stays refused by the address guard."""
    server = LocalHTTPServer(host="127.0.0.2")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def http_server(http_server_session: LocalHTTPServer) -> Iterator[LocalHTTPServer]:
    """The session's server, with routes a test adds and the request log reset afterwards."""
    routes = http_server_session._snapshot_routes()
    http_server_session.reset_log()
    try:
        yield http_server_session
    finally:
        http_server_session._restore_routes(routes)
        http_server_session.reset_log()


def wait_for(predicate: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    """Poll `predicate` until true or `timeout_s` passes (for assertions about the server's side)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()

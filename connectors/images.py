"""`ImageFetcher`: downloads product images over HTTP(S) (or reads `file://` URLs under one directory) with
the limits a service that fetches URLs from other people's data needs.

Guarantees:
- Server-side request forgery guard (the client of `connectors.guarded_http`): unless
  `allow_private_networks=True`, every address the host name resolves to must be public (not loopback, private,
  link-local incl. 169.254.169.254, shared/CGNAT, multicast, reserved, unspecified, nor an IPv4 address wrapped in
  IPv6), or lie in `allowed_networks`, checked on the addresses actually connected to, for the first request and
  for every redirect hop (so DNS rebinding between check and connect is not possible).
- Bounded: at most `max_concurrency` fetches at once (a semaphore; callers beyond that wait), connect/read
  timeouts, a total deadline, `max_bytes` (a Content-Length above it is refused before reading, and a body is
  read in a stream that stops at the limit), at most `max_redirects` redirects.
- Only images: the Content-Type must start with one of `allowed_content_types`, and (with `verify_signature`)
  the bytes must start like a JPEG, PNG, GIF, WebP, BMP, TIFF, AVIF or HEIC file.
- Every failure is a `FetchError` with a `reason` (a `FetchReason`) and `transient` (retrying may help).

Decisions worth knowing:
- DNS failures are `connection` and transient: a resolver outage looks the same as a missing name from here
  (both often "Name or service not known"), and a real missing name costs only the caller's few retries before
  the event is dead-lettered, while a resolver blip must not dead-letter good events. Name resolution uses the
  system resolver and has no timeout of its own (the OS resolver's timeouts apply).
- The total deadline is checked between reads, so a fetch can overrun it by at most one read timeout.
- Environment proxies (HTTP_PROXY...) and cookies are ignored; `Accept-Encoding: identity` is sent so that
  Content-Length is the real size; redirects are followed only to http(s), never to file://.

What it must not do: decode images (a decompression bomb is the decoder's problem: `learner.inference.imaging`
enforces max_pixels), retry (the caller's policy), log URLs (they may carry credentials), or import `daemon/` or
`learner/`.
"""

from __future__ import annotations

import errno
import hashlib
import mimetypes
import os
import stat
import threading
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import httpx

from connectors.guarded_http import BlockedAddress, ResolutionFailed, Resolver, guarded_client, is_public_address

__all__ = ["FetchError", "FetchReason", "FetchedImage", "ImageFetcher", "is_public_address"]

USER_AGENT = "ShelfSight-ImageFetcher/0.1 (+https://github.com/shelfsight)"
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
ISO_BMFF_IMAGE_BRANDS = (b"avif", b"avis", b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1")


# Linux: an O_PATH descriptor's /proc entry names the file the kernel resolved (see ImageFetcher._open_within_root)
_PROC_FD_WORKS = hasattr(os, "O_PATH") and os.path.isdir("/proc/self/fd")


class FetchReason(StrEnum):
    BAD_URL = "bad_url"  # unsupported scheme, malformed URL, file:// without a file_root
    BLOCKED_ADDRESS = "blocked_address"  # the host resolves to a non-public address (SSRF guard)
    NOT_FOUND = "not_found"  # HTTP 404 or 410
    HTTP_STATUS = "http_status"  # any other unusable status; 5xx, 408 and 429 are transient
    TIMEOUT = "timeout"  # connect, read or total deadline
    CONNECTION = "connection"  # DNS failure, refused, reset, response cut off
    TOO_LARGE = "too_large"  # Content-Length or the body over max_bytes
    BAD_CONTENT_TYPE = "bad_content_type"  # not an allowed Content-Type, or bytes not an image format
    TOO_MANY_REDIRECTS = "too_many_redirects"
    FILE_OUTSIDE_ROOT = "file_outside_root"  # file:// path (after resolving symlinks and ..) outside file_root
    FILE_NOT_FOUND = "file_not_found"  # file:// path missing, unreadable or not a regular file


class FetchError(Exception):
    """Why an image could not be fetched. `transient`: the same URL may work later (retry with backoff);
    otherwise retrying is pointless. `status_code` and `retry_after_s` are set for HTTP status failures (a retry by
    `connectors.retry.RetryPolicy` waits at least `retry_after_s`, within its cap)."""

    def __init__(
        self,
        reason: FetchReason,
        message: str,
        transient: bool,
        *,
        status_code: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.transient = transient
        self.status_code = status_code
        self.retry_after_s = retry_after_s

    def __reduce__(self) -> tuple[Any, ...]:  # picklable, e.g. across a process pool
        return (_rebuild_fetch_error, (self.reason, self.message, self.transient, self.status_code, self.retry_after_s))

    def __repr__(self) -> str:
        return f"FetchError({self.reason.value!r}, {self.message!r}, transient={self.transient})"


def _rebuild_fetch_error(
    reason: FetchReason, message: str, transient: bool, status_code: int | None, retry_after_s: float | None
) -> FetchError:
    return FetchError(reason, message, transient, status_code=status_code, retry_after_s=retry_after_s)


@dataclass(frozen=True)
class FetchedImage:
    """The bytes of one image. `url` is the URL asked for, `final_url` the one that answered (after
    redirects); `sha256` is the hex digest of `data`; `elapsed_s` excludes time spent waiting for a slot."""

    url: str
    data: bytes
    content_type: str
    elapsed_s: float
    sha256: str
    final_url: str = ""
    redirects: int = 0


class ImageFetcher:
    """Fetches images; see the module docstring for the rules. Thread-safe: share one per process and call
    `close()` at the end (or use it as a context manager).

    `allowed_networks`: CIDRs reachable even when private networks are not (e.g. an internal image CDN,
    "10.20.0.0/16"). `resolver(host, port) -> [ip, ...]` replaces the system resolver (custom DNS, tests).
    `file_root`: the only directory `file://` URLs may read from; None refuses `file://` altogether.
    """

    def __init__(
        self,
        *,
        connect_timeout_s: float = 3.0,
        read_timeout_s: float = 10.0,
        total_timeout_s: float = 20.0,
        max_bytes: int = 20_000_000,
        max_redirects: int = 3,
        max_concurrency: int = 16,
        allow_private_networks: bool = False,
        file_root: Path | None = None,
        allowed_content_types: Sequence[str] = ("image/",),
        allowed_networks: Sequence[str] = (),
        verify_signature: bool = True,
        resolver: Resolver | None = None,
        user_agent: str = USER_AGENT,
    ) -> None:
        if max_concurrency < 1 or max_bytes < 1 or max_redirects < 0:
            raise ValueError("max_concurrency and max_bytes must be positive, max_redirects not negative")
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.total_timeout_s = total_timeout_s
        self.max_bytes = max_bytes
        self.max_redirects = max_redirects
        self.max_concurrency = max_concurrency
        self.allow_private_networks = allow_private_networks
        self.file_root = Path(file_root).resolve() if file_root is not None else None
        self.allowed_content_types = tuple(t.lower() for t in allowed_content_types)
        self.verify_signature = verify_signature
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._client = guarded_client(
            allow_private_networks=allow_private_networks,
            allowed_networks=allowed_networks,
            resolver=resolver,
            max_connections=max_concurrency,
            headers={"User-Agent": user_agent, "Accept": "image/*", "Accept-Encoding": "identity"},
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> ImageFetcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ fetching

    def fetch(self, url: str) -> FetchedImage:
        """The image at `url` (http, https, or file under `file_root`), or FetchError."""
        with self._slots:
            started = time.monotonic()
            scheme = _scheme(url)
            if scheme == "file":
                data, content_type = self._read_file(url)
                return self._result(url, url, data, content_type, started, 0)
            return self._fetch_http(url, started)

    def _fetch_http(self, url: str, started: float) -> FetchedImage:
        deadline = started + self.total_timeout_s
        current = url
        for hop in range(self.max_redirects + 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FetchError(FetchReason.TIMEOUT, f"no answer within {self.total_timeout_s:g} s in total", True)
            timeout = httpx.Timeout(
                connect=min(self.connect_timeout_s, remaining),
                read=min(self.read_timeout_s, remaining),
                write=min(self.read_timeout_s, remaining),
                pool=remaining,
            )
            try:
                with self._client.stream("GET", current, timeout=timeout) as response:
                    if response.status_code in REDIRECT_STATUSES:
                        current = self._redirect_target(response)
                        continue
                    self._check_response(response)
                    data = self._read_body(response, deadline)
                    content_type = _media_type(response.headers.get("content-type", ""))
                    return self._result(url, str(response.url), data, content_type, started, hop)
            except FetchError:
                raise
            except BlockedAddress as exc:
                raise FetchError(FetchReason.BLOCKED_ADDRESS, str(exc), False) from None
            except ResolutionFailed as exc:
                raise FetchError(FetchReason.CONNECTION, str(exc), True) from None
            except httpx.TimeoutException as exc:
                kind = "connecting" if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout) else "reading"
                raise FetchError(FetchReason.TIMEOUT, f"timed out {kind} ({type(exc).__name__})", True) from None
            except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
                raise FetchError(FetchReason.BAD_URL, f"unusable URL: {exc}", False) from None
            except httpx.TransportError as exc:
                raise FetchError(FetchReason.CONNECTION, f"{type(exc).__name__}: {exc}", True) from None
        raise FetchError(
            FetchReason.TOO_MANY_REDIRECTS,
            f"more than {self.max_redirects} redirects (last to {_safe(current)})",
            False,
        )

    def _redirect_target(self, response: httpx.Response) -> str:
        location = response.headers.get("location")
        if not location:
            raise FetchError(
                FetchReason.HTTP_STATUS,
                f"redirect {response.status_code} without a Location",
                False,
                status_code=response.status_code,
            )
        try:
            target = response.url.join(location)
        except httpx.InvalidURL as exc:
            raise FetchError(FetchReason.BAD_URL, f"redirect to an unusable URL: {exc}", False) from None
        if target.scheme not in ("http", "https"):
            raise FetchError(FetchReason.BAD_URL, f"redirect to a {target.scheme or 'relative'}: URL refused", False)
        return str(target)

    def _check_response(self, response: httpx.Response) -> None:
        status = response.status_code
        if status in (404, 410):
            raise FetchError(FetchReason.NOT_FOUND, f"HTTP {status}", False, status_code=status)
        if status not in (200, 203):
            transient = status >= 500 or status in (408, 429)
            retry_after = _retry_after(response.headers.get("retry-after")) if transient else None
            raise FetchError(
                FetchReason.HTTP_STATUS, f"HTTP {status}", transient, status_code=status, retry_after_s=retry_after
            )
        content_type = _media_type(response.headers.get("content-type", ""))
        if not self._allowed_type(content_type):
            raise FetchError(
                FetchReason.BAD_CONTENT_TYPE, f"Content-Type {content_type or '(none)'!r} is not an image", False
            )
        declared = response.headers.get("content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > self.max_bytes:
            raise FetchError(
                FetchReason.TOO_LARGE,
                f"Content-Length {int(declared):,} is over the limit of {self.max_bytes:,}",
                False,
            )

    def _read_body(self, response: httpx.Response, deadline: float) -> bytes:
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > self.max_bytes:
                raise FetchError(FetchReason.TOO_LARGE, f"body is over the limit of {self.max_bytes:,} bytes", False)
            chunks.append(chunk)
            if time.monotonic() > deadline:
                raise FetchError(FetchReason.TIMEOUT, f"body not complete within {self.total_timeout_s:g} s", True)
        return b"".join(chunks)

    def _read_file(self, url: str) -> tuple[bytes, str]:
        if self.file_root is None:
            raise FetchError(FetchReason.BAD_URL, "file:// URLs are disabled (no file_root configured)", False)
        parts = urllib.parse.urlsplit(url)
        if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
            raise FetchError(FetchReason.BAD_URL, "file:// URL must be file:///absolute/path", False)
        raw = urllib.parse.unquote(parts.path)
        if not raw.startswith("/") or "\x00" in raw:
            raise FetchError(FetchReason.BAD_URL, "file:// URL must name an absolute path", False)
        fd, resolved = self._open_within_root(raw)
        content_type = mimetypes.guess_type(resolved.name)[0] or ""
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise FetchError(FetchReason.FILE_NOT_FOUND, f"{raw} is not a regular file", False)
            if info.st_size > self.max_bytes:
                raise FetchError(
                    FetchReason.TOO_LARGE, f"file is {info.st_size:,} bytes, over {self.max_bytes:,}", False
                )
            with os.fdopen(fd, "rb") as fh:
                fd = -1  # owned by fh now
                data = fh.read(self.max_bytes + 1)
        finally:
            if fd >= 0:
                os.close(fd)
        if len(data) > self.max_bytes:
            raise FetchError(FetchReason.TOO_LARGE, f"file is over {self.max_bytes:,} bytes", False)
        if not self._allowed_type(content_type):
            raise FetchError(FetchReason.BAD_CONTENT_TYPE, f"{resolved.name} is not an image file name", False)
        return data, content_type

    def _open_within_root(self, raw: str) -> tuple[int, Path]:
        """A read-only descriptor of the file `raw` names and its real path, refused unless that is inside
        `file_root`. What is checked is what is opened: on Linux the kernel resolves the path once (an O_PATH
        descriptor, which opens nothing: no FIFO blocks, no device is touched), /proc names the file it found,
        and only then is that same file opened for reading. Elsewhere the path is resolved first and the result
        opened without following a symlink swapped in meanwhile. A path that cannot be opened is reported as
        outside the root when it resolves there, so errors never tell whether a file outside the root exists."""
        assert self.file_root is not None
        if not _PROC_FD_WORKS:
            resolved = Path(raw).resolve()  # follows symlinks and folds ".."
            if not resolved.is_relative_to(self.file_root):
                raise _outside_root(raw)
            try:
                # O_NOFOLLOW: a symlink swapped in after resolve() is refused rather than followed; O_NONBLOCK: a
                # FIFO opens at once (and is then refused as not a regular file) instead of waiting for a writer
                flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
                return os.open(resolved, flags), resolved
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise FetchError(
                        FetchReason.FILE_OUTSIDE_ROOT, f"{raw} changed while being opened", False
                    ) from None
                raise self._cannot_open(raw, exc) from None
        try:
            handle = os.open(raw, os.O_PATH | os.O_CLOEXEC)  # type: ignore[attr-defined,unused-ignore]
        except OSError as exc:
            raise self._cannot_open(raw, exc) from None
        try:
            resolved = Path(os.readlink(f"/proc/self/fd/{handle}"))
            if not resolved.is_relative_to(self.file_root):
                raise _outside_root(raw)
            if not stat.S_ISREG(os.fstat(handle).st_mode):
                raise FetchError(FetchReason.FILE_NOT_FOUND, f"{raw} is not a regular file", False)
            try:
                return os.open(f"/proc/self/fd/{handle}", os.O_RDONLY | os.O_CLOEXEC), resolved
            except OSError as exc:
                raise self._cannot_open(raw, exc) from None
        finally:
            os.close(handle)

    def _cannot_open(self, raw: str, exc: OSError) -> FetchError:
        assert self.file_root is not None
        if not Path(raw).resolve().is_relative_to(self.file_root):
            return _outside_root(raw)
        if isinstance(exc, FileNotFoundError | NotADirectoryError):
            return FetchError(FetchReason.FILE_NOT_FOUND, f"{raw} does not exist", False)
        return FetchError(FetchReason.FILE_NOT_FOUND, f"{raw} cannot be opened: {exc.strerror}", False)

    def _result(
        self, url: str, final_url: str, data: bytes, content_type: str, started: float, redirects: int
    ) -> FetchedImage:
        if self.verify_signature and not _looks_like_image(data):
            raise FetchError(
                FetchReason.BAD_CONTENT_TYPE,
                f"labelled {content_type or 'image'} but the bytes are not JPEG/PNG/GIF/WebP/BMP/TIFF/AVIF/HEIC",
                False,
            )
        return FetchedImage(
            url=url,
            data=data,
            content_type=content_type,
            elapsed_s=time.monotonic() - started,
            sha256=hashlib.sha256(data).hexdigest(),
            final_url=final_url,
            redirects=redirects,
        )

    def _allowed_type(self, media_type: str) -> bool:
        return bool(media_type) and any(media_type.startswith(prefix) for prefix in self.allowed_content_types)


# ---------------------------------------------------------------------- helpers


def _outside_root(raw: str) -> FetchError:
    return FetchError(FetchReason.FILE_OUTSIDE_ROOT, f"{raw} is outside the allowed directory", False)


def _scheme(url: str) -> str:
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as exc:
        raise FetchError(FetchReason.BAD_URL, f"malformed URL: {exc}", False) from None
    scheme = parts.scheme.lower()
    if scheme == "file":
        return scheme
    if scheme not in ("http", "https"):
        raise FetchError(
            FetchReason.BAD_URL, f"unsupported URL scheme {scheme or '(none)'!r}: use http, https or file", False
        )
    try:
        hostname = parts.hostname
        _ = parts.port  # raises on a malformed port
    except ValueError as exc:
        raise FetchError(FetchReason.BAD_URL, f"malformed URL: {exc}", False) from None
    if not hostname:
        raise FetchError(FetchReason.BAD_URL, "URL has no host", False)
    return scheme


def _media_type(header: str) -> str:
    return header.split(";", 1)[0].strip().lower()


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: rare for images; the caller's own backoff applies


def _safe(url: str) -> str:
    """`url` without user:password, for messages."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<malformed url>"
    if "@" not in parts.netloc:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def _looks_like_image(data: bytes) -> bool:
    head = data[:32]
    return (
        head.startswith(b"\xff\xd8\xff")  # JPEG
        or head.startswith(b"\x89PNG\r\n\x1a\n")
        or head.startswith((b"GIF87a", b"GIF89a"))
        or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")
        or head.startswith(b"BM")
        or head.startswith((b"II*\x00", b"MM\x00*"))  # TIFF
        or (head[4:8] == b"ftyp" and head[8:12] in ISO_BMFF_IMAGE_BRANDS)  # AVIF, HEIC
    )

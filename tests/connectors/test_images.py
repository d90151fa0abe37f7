"""Behaviour of `ImageFetcher` against a real HTTP server on 127.0.0.1 (tests/plugins/http.py).

The server is on loopback, so positive cases use `allow_private_networks=True`; the SSRF guard is proven with
it off (and, for redirects, with only 127.0.0.1/32 allowed so that the first hop is reachable)."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import pickle
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from connectors import images
from connectors.images import FetchError, FetchReason, ImageFetcher, is_public_address
from tests.plugins.http import LocalHTTPServer, RouteContext, bomb_png


@pytest.fixture
def fetcher() -> Iterator[ImageFetcher]:
    f = ImageFetcher(allow_private_networks=True, connect_timeout_s=2.0, read_timeout_s=2.0, total_timeout_s=5.0)
    yield f
    f.close()


def fetch_error(fetcher: ImageFetcher, url: str) -> FetchError:
    with pytest.raises(FetchError) as info:
        fetcher.fetch(url)
    return info.value


# ---------------------------------------------------------------------- success


def test_fetches_a_real_jpeg_with_its_digest(fetcher: ImageFetcher, http_server: LocalHTTPServer) -> None:
    image = fetcher.fetch(http_server.url("/ok.jpg"))
    assert image.data == http_server.jpeg_bytes
    assert image.sha256 == hashlib.sha256(http_server.jpeg_bytes).hexdigest()
    assert image.content_type == "image/jpeg"
    assert 0 < image.elapsed_s < 30  # recorded, and plausible: a loaded machine is slow, never this slow
    assert (image.url, image.final_url, image.redirects) == (http_server.url("/ok.jpg"),) * 2 + (0,)


def test_follows_redirects_up_to_the_limit(fetcher: ImageFetcher, http_server: LocalHTTPServer) -> None:
    image = fetcher.fetch(http_server.url(f"/redirect-chain?n={fetcher.max_redirects}"))
    assert image.data == http_server.jpeg_bytes
    assert image.redirects == fetcher.max_redirects
    assert image.final_url == http_server.url("/ok.jpg")
    error = fetch_error(fetcher, http_server.url(f"/redirect-chain?n={fetcher.max_redirects + 1}"))
    assert (error.reason, error.transient) == (FetchReason.TOO_MANY_REDIRECTS, False)


def test_truncated_and_bomb_images_are_delivered_unchanged_for_the_decoder_to_judge(
    fetcher: ImageFetcher, http_server: LocalHTTPServer
) -> None:
    # the fetcher does not decode: a cut JPEG or a 400-megapixel PNG are bytes that look like images
    assert (
        fetcher.fetch(http_server.url("/truncated.jpg")).data
        == http_server.jpeg_bytes[: len(http_server.jpeg_bytes) // 2]
    )
    bomb = fetcher.fetch(http_server.url("/bomb.png"))
    assert bomb.data == bomb_png()
    assert len(bomb.data) < 100_000


# ---------------------------------------------------------------------- bad URLs


@pytest.mark.parametrize(
    "url",
    ["ftp://example.com/a.jpg", "gopher://x/", "not a url", "http://", "https:///path-only.jpg", "http://host:99999/"],
)
def test_unsupported_or_malformed_urls_are_bad_url(fetcher: ImageFetcher, url: str) -> None:
    error = fetch_error(fetcher, url)
    assert (error.reason, error.transient) == (FetchReason.BAD_URL, False)


# ---------------------------------------------------------------------- SSRF guard


def test_loopback_is_refused_before_any_request_is_sent(http_server: LocalHTTPServer) -> None:
    with ImageFetcher() as guarded:
        error = fetch_error(guarded, http_server.url("/ok.jpg"))
        assert (error.reason, error.transient) == (FetchReason.BLOCKED_ADDRESS, False)
        localhost = http_server.url("/ok.jpg").replace("127.0.0.1", "localhost")
        assert fetch_error(guarded, localhost).reason == FetchReason.BLOCKED_ADDRESS
    assert http_server.hits("/ok.jpg") == 0


def test_cloud_metadata_address_is_refused() -> None:
    # a connect attempt to the (unreachable) metadata address would hang for the whole 60 s connect timeout; being
    # refused up front takes milliseconds, so a generous 20 s bound tells the two apart even on a loaded machine
    with ImageFetcher(connect_timeout_s=60.0, total_timeout_s=120.0) as guarded:
        started = time.monotonic()
        error = fetch_error(guarded, "http://169.254.169.254/latest/meta-data/")
    assert error.reason == FetchReason.BLOCKED_ADDRESS
    assert time.monotonic() - started < 20.0  # refused without trying to connect


def test_redirect_to_the_metadata_address_is_refused_at_the_hop(http_server: LocalHTTPServer) -> None:
    # 127.0.0.1 explicitly allowed, so the first request goes through and only the redirect is judged
    with ImageFetcher(allowed_networks=["127.0.0.1/32"], connect_timeout_s=0.5) as guarded:
        assert guarded.fetch(http_server.url("/ok.jpg")).data == http_server.jpeg_bytes
        error = fetch_error(guarded, http_server.url("/redirect-to-metadata"))
    assert (error.reason, error.transient) == (FetchReason.BLOCKED_ADDRESS, False)
    assert "169.254.169.254" in error.message
    assert http_server.hits("/redirect-to-metadata") == 1


def test_redirect_to_another_loopback_address_is_refused(http_server: LocalHTTPServer) -> None:
    target = f"http://127.0.0.2:{http_server.port}/ok.jpg"
    with ImageFetcher(allowed_networks=["127.0.0.1/32"]) as guarded:
        error = fetch_error(guarded, http_server.url(f"/redirect?to={target}"))
    assert error.reason == FetchReason.BLOCKED_ADDRESS


def test_redirect_to_a_file_url_is_refused(fetcher: ImageFetcher, http_server: LocalHTTPServer) -> None:
    error = fetch_error(fetcher, http_server.url("/redirect?to=file:///etc/passwd"))
    assert error.reason == FetchReason.BAD_URL


def test_a_host_is_refused_when_any_of_its_addresses_is_private(http_server: LocalHTTPServer) -> None:
    # a name answering with one public and one private address must not be fetched (the private one might be
    # the one connected to)
    def resolver(host: str, port: int) -> list[str]:
        return ["93.184.216.34", "127.0.0.1"] if host == "mixed.example" else [host]

    with ImageFetcher(resolver=resolver) as guarded:
        error = fetch_error(guarded, f"http://mixed.example:{http_server.port}/ok.jpg")
    assert error.reason == FetchReason.BLOCKED_ADDRESS
    assert "127.0.0.1" in error.message
    assert http_server.hits("/ok.jpg") == 0


def test_the_socket_connects_to_the_address_that_was_checked(http_server: LocalHTTPServer) -> None:
    # resolution happens once per connection, inside the guard: a resolver that would answer differently on a
    # second lookup (DNS rebinding) never gets that second lookup
    answers: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        answers.append(host)
        return ["127.0.0.1"]

    with ImageFetcher(resolver=resolver, allowed_networks=["127.0.0.1/32"]) as guarded:
        assert guarded.fetch(f"http://images.example:{http_server.port}/ok.jpg").data == http_server.jpeg_bytes
    assert answers == ["images.example"]


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "233.252.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "fec0::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "64:ff9b::a9fe:a9fe",
        "2002:7f00:1::",
        "2001:db8::1",
    ],
)
def test_non_public_addresses_are_recognised(address: str) -> None:
    assert not is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "64:ff9b::808:808"])
def test_public_addresses_are_recognised(address: str) -> None:
    assert is_public_address(ipaddress.ip_address(address))


# ---------------------------------------------------------------------- HTTP statuses


@pytest.mark.parametrize("path", ["/404", "/gone"])
def test_missing_images_are_permanent_not_found(fetcher: ImageFetcher, http_server: LocalHTTPServer, path: str) -> None:
    error = fetch_error(fetcher, http_server.url(path))
    assert (error.reason, error.transient) == (FetchReason.NOT_FOUND, False)


@pytest.mark.parametrize(("code", "transient"), [(500, True), (503, True), (429, True), (403, False), (400, False)])
def test_server_errors_and_throttling_are_transient_other_client_errors_permanent(
    fetcher: ImageFetcher, http_server: LocalHTTPServer, code: int, transient: bool
) -> None:
    error = fetch_error(fetcher, http_server.url(f"/status?code={code}&retry_after=7"))
    assert (error.reason, error.transient, error.status_code) == (FetchReason.HTTP_STATUS, transient, code)
    assert error.retry_after_s == (7.0 if transient else None)


# ---------------------------------------------------------------------- time and connection


def test_a_body_slower_than_the_read_timeout_times_out(http_server: LocalHTTPServer) -> None:
    with ImageFetcher(allow_private_networks=True, read_timeout_s=0.3, total_timeout_s=10) as f:
        started = time.monotonic()
        error = fetch_error(f, http_server.url("/slow?delay=3&chunks=2"))
    assert (error.reason, error.transient) == (FetchReason.TIMEOUT, True)
    assert time.monotonic() - started < 2


def test_headers_slower_than_the_read_timeout_time_out(http_server: LocalHTTPServer) -> None:
    with ImageFetcher(allow_private_networks=True, read_timeout_s=0.3) as f:
        assert fetch_error(f, http_server.url("/slow-headers?delay=3")).reason == FetchReason.TIMEOUT


def test_a_trickling_body_hits_the_total_deadline(http_server: LocalHTTPServer) -> None:
    # every chunk arrives well within the read timeout, but the whole would take 20 s
    with ImageFetcher(allow_private_networks=True, read_timeout_s=2.0, total_timeout_s=1.0) as f:
        started = time.monotonic()
        error = fetch_error(f, http_server.url("/slow?delay=0.1&chunks=200"))
    assert (error.reason, error.transient) == (FetchReason.TIMEOUT, True)
    assert time.monotonic() - started < 1.0 + 2.0  # total, overrun by at most one read


def test_a_refused_connection_is_transient(fetcher: ImageFetcher) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    error = fetch_error(fetcher, f"http://127.0.0.1:{closed_port}/ok.jpg")
    assert (error.reason, error.transient) == (FetchReason.CONNECTION, True)


def test_a_response_cut_off_mid_body_is_transient(fetcher: ImageFetcher, http_server: LocalHTTPServer) -> None:
    error = fetch_error(fetcher, http_server.url("/cut-off.jpg"))
    assert (error.reason, error.transient) == (FetchReason.CONNECTION, True)


def test_a_name_that_does_not_resolve_is_a_transient_connection_error() -> None:
    with ImageFetcher() as f:
        error = fetch_error(f, "http://no-such-host.invalid/a.jpg")
    assert (error.reason, error.transient) == (FetchReason.CONNECTION, True)


# ---------------------------------------------------------------------- size and type


def test_a_declared_length_over_the_limit_is_refused_without_reading(http_server: LocalHTTPServer) -> None:
    with ImageFetcher(allow_private_networks=True, max_bytes=1_000_000) as f:
        started = time.monotonic()
        error = fetch_error(f, http_server.url("/huge"))
    assert (error.reason, error.transient) == (FetchReason.TOO_LARGE, False)  # reading would end cut off instead
    # quick (milliseconds on a quiet machine); the bound is loose so that a loaded machine passes too
    assert time.monotonic() - started < 5


def test_a_stream_without_length_is_cut_at_the_limit(http_server: LocalHTTPServer) -> None:
    with ImageFetcher(allow_private_networks=True, max_bytes=1_000_000) as f:
        error = fetch_error(f, http_server.url("/huge-stream?mb=64"))
    assert (error.reason, error.transient) == (FetchReason.TOO_LARGE, False)
    # the client hung up: the server managed to push far less than the 64 MiB it offered (socket buffers absorb
    # a few MiB beyond the 1 MB limit)
    time.sleep(0.2)
    assert http_server.bytes_sent("/huge-stream") < 16 * 2**20


def test_an_image_exactly_at_the_limit_is_accepted(http_server: LocalHTTPServer) -> None:
    size = len(http_server.jpeg_bytes)
    with ImageFetcher(allow_private_networks=True, max_bytes=size) as f:
        assert f.fetch(http_server.url("/ok.jpg")).data == http_server.jpeg_bytes
    with ImageFetcher(allow_private_networks=True, max_bytes=size - 1) as f:
        assert fetch_error(f, http_server.url("/ok.jpg")).reason == FetchReason.TOO_LARGE


@pytest.mark.parametrize("path", ["/text", "/no-content-type.jpg", "/notimage.jpg"])
def test_responses_that_are_not_images_are_bad_content_type(
    fetcher: ImageFetcher, http_server: LocalHTTPServer, path: str
) -> None:
    error = fetch_error(fetcher, http_server.url(path))
    assert (error.reason, error.transient) == (FetchReason.BAD_CONTENT_TYPE, False)


def test_extra_routes_and_other_image_types(fetcher: ImageFetcher, http_server: LocalHTTPServer) -> None:
    http_server.add_static("/custom.png", http_server.png_bytes, "image/png; charset=binary")
    image = fetcher.fetch(http_server.url("/custom.png"))
    assert (image.content_type, image.data) == ("image/png", http_server.png_bytes)
    assert http_server.hits("/custom.png") == 1


# ---------------------------------------------------------------------- concurrency


def test_concurrent_fetches_are_bounded_by_max_concurrency(http_server: LocalHTTPServer) -> None:
    def slow_image(ctx: RouteContext) -> None:
        ctx.sleep(0.15)
        ctx.send(200, http_server.jpeg_bytes, "image/jpeg")

    http_server.add_route("/concurrency.jpg", slow_image)
    results: list[bytes] = []
    with ImageFetcher(allow_private_networks=True, max_concurrency=2) as f:

        def work() -> None:
            results.append(f.fetch(http_server.url("/concurrency.jpg")).data)

        threads = [threading.Thread(target=work) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    assert results == [http_server.jpeg_bytes] * 6
    assert http_server.max_in_flight("/concurrency.jpg") == 2


# ---------------------------------------------------------------------- file:// URLs


@pytest.fixture
def image_root(tmp_path: Path, http_server: LocalHTTPServer) -> Path:
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.jpg").write_bytes(http_server.jpeg_bytes)
    (root / "notes.txt").write_text("not an image")
    (tmp_path / "secret.jpg").write_bytes(http_server.jpeg_bytes)
    os.symlink(tmp_path / "secret.jpg", root / "link-out.jpg")
    os.symlink(root / "sub" / "a.jpg", root / "link-in.jpg")
    return root


def test_file_urls_inside_the_root_are_read(image_root: Path, http_server: LocalHTTPServer) -> None:
    with ImageFetcher(file_root=image_root) as f:
        image = f.fetch((image_root / "sub" / "a.jpg").as_uri())
        assert (image.data, image.content_type) == (http_server.jpeg_bytes, "image/jpeg")
        assert f.fetch((image_root / "link-in.jpg").as_uri()).data == http_server.jpeg_bytes


@pytest.mark.parametrize("relative", ["../secret.jpg", "sub/../../secret.jpg", "sub/%2e%2e/%2e%2e/secret.jpg"])
def test_dot_dot_escapes_from_the_root_are_refused(image_root: Path, relative: str) -> None:
    with ImageFetcher(file_root=image_root) as f:
        error = fetch_error(f, f"file://{image_root}/{relative}")
    assert (error.reason, error.transient) == (FetchReason.FILE_OUTSIDE_ROOT, False)


def test_a_symlink_pointing_outside_the_root_is_refused(image_root: Path) -> None:
    with ImageFetcher(file_root=image_root) as f:
        assert fetch_error(f, (image_root / "link-out.jpg").as_uri()).reason == FetchReason.FILE_OUTSIDE_ROOT


def test_missing_files_and_directories_are_file_not_found(image_root: Path) -> None:
    with ImageFetcher(file_root=image_root) as f:
        assert fetch_error(f, (image_root / "nope.jpg").as_uri()).reason == FetchReason.FILE_NOT_FOUND
        assert fetch_error(f, (image_root / "sub").as_uri()).reason == FetchReason.FILE_NOT_FOUND
        assert fetch_error(f, (image_root / "notes.txt").as_uri()).reason == FetchReason.BAD_CONTENT_TYPE


@pytest.fixture(params=["proc", "resolve"])
def open_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways of opening a file:// path: the kernel's resolution named by /proc (Linux), and resolve-then-open
    (elsewhere)."""
    if request.param == "resolve":
        monkeypatch.setattr(images, "_PROC_FD_WORKS", False)
    elif not images._PROC_FD_WORKS:
        pytest.skip("no /proc/self/fd here")
    return str(request.param)


def test_both_ways_of_opening_read_inside_and_refuse_outside_the_root(
    image_root: Path, http_server: LocalHTTPServer, open_mode: str
) -> None:
    with ImageFetcher(file_root=image_root) as f:
        assert f.fetch((image_root / "link-in.jpg").as_uri()).data == http_server.jpeg_bytes
        for outside in (image_root / "link-out.jpg", image_root / "sub" / ".." / ".." / "secret.jpg"):
            assert fetch_error(f, f"file://{outside}").reason == FetchReason.FILE_OUTSIDE_ROOT
        assert fetch_error(f, (image_root / "sub").as_uri()).reason == FetchReason.FILE_NOT_FOUND


def test_errors_never_tell_whether_a_file_outside_the_root_exists(image_root: Path, open_mode: str) -> None:
    with ImageFetcher(file_root=image_root) as f:
        there = fetch_error(f, f"file://{image_root}/../secret.jpg")
        missing = fetch_error(f, f"file://{image_root}/../no-such.jpg")
    assert there.reason == missing.reason == FetchReason.FILE_OUTSIDE_ROOT


def test_a_fifo_inside_the_root_is_refused_without_blocking(image_root: Path, open_mode: str) -> None:
    os.mkfifo(image_root / "pipe.jpg")  # opening it for reading would wait for a writer forever
    with ImageFetcher(file_root=image_root) as f:
        assert fetch_error(f, (image_root / "pipe.jpg").as_uri()).reason == FetchReason.FILE_NOT_FOUND


def test_file_urls_are_refused_without_a_root(image_root: Path) -> None:
    with ImageFetcher() as f:
        assert fetch_error(f, (image_root / "sub" / "a.jpg").as_uri()).reason == FetchReason.BAD_URL


def test_fetch_errors_survive_pickling() -> None:
    error = FetchError(FetchReason.HTTP_STATUS, "HTTP 503", True, status_code=503, retry_after_s=2.0)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.reason, copy.message, copy.transient, copy.status_code, copy.retry_after_s) == (
        FetchReason.HTTP_STATUS,
        "HTTP 503",
        True,
        503,
        2.0,
    )

"""HTTP-level limits on a real uvicorn server: a stalled body times out (408), a body
above its route's limit is refused (413) before it is read, a tenant above its rate
gets 429 with ``Retry-After``, and a 500 keeps the client's keep-alive connection."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import uvicorn
from fastapi import FastAPI

from server.app import body_limits, create_app
from server.context import build_context
from server.settings import Settings

from .harness import Harness


@contextmanager
def serving(app: FastAPI) -> Iterator[int]:
    """``app`` under uvicorn on a free loopback port (yields the port)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture
def live(make_settings: Callable[..., Settings]) -> Iterator[tuple[int, Harness, FastAPI]]:
    settings = make_settings(
        body_idle_timeout_s=1.0,
        body_total_timeout_s=3.0,
        rate_limit_per_s=1.0,
        rate_limit_burst=3,
    )
    context = build_context(settings)
    app = create_app(settings, context=context)

    @app.get("/boom")
    def boom() -> None:  # a bug in a route: the last-resort 500
        raise RuntimeError("/srv/secret/path exploded")

    with serving(app) as port:
        yield port, Harness(None, context), app  # type: ignore[arg-type]


def _raw(port: int, request: bytes, *, then: Callable[[socket.socket], None] | None = None):
    sock = socket.create_connection(("127.0.0.1", port), timeout=15)
    sock.sendall(request)
    if then is not None:
        then(sock)
    data = b""
    while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4:
        part = sock.recv(65536)
        if not part:
            break
        data += part
    sock.settimeout(2)
    try:
        while part := sock.recv(65536):
            data += part
    except TimeoutError:
        pass
    sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return head.decode("latin-1"), body


def test_a_slow_body_times_out_with_408(live: tuple[int, Harness, FastAPI]) -> None:
    port, api, _app = live
    key = api.tenant()["Authorization"]
    request = (
        "POST /v1/training_runs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: {key}\r\nContent-Length: 1000\r\n\r\n"
    ).encode()

    def trickle(sock: socket.socket) -> None:
        # 2 bytes/s: every gap is within the idle limit, only the total deadline stops it
        for _ in range(20):
            try:
                sock.sendall(b" ")
            except OSError:  # answered and closed
                return
            time.sleep(0.5)

    started = time.monotonic()
    head, body = _raw(port, request, then=trickle)
    assert head.startswith("HTTP/1.1 408"), head
    assert json.loads(body)["error"] == "RequestTimeoutError"
    assert json.loads(body)["field"] == "body"
    assert 2.5 < time.monotonic() - started < 15


def test_a_body_above_its_route_limit_is_refused_unread(
    live: tuple[int, Harness, FastAPI],
) -> None:
    port, api, _app = live
    key = api.tenant()["Authorization"]
    limit = body_limits(api.context.settings).limit_for("POST", "/v1/training_runs")
    assert limit < api.context.settings.max_body_bytes  # configuration routes are small
    request = (
        "POST /v1/training_runs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: {key}\r\nContent-Length: {limit + 1}\r\n\r\n"
    ).encode()
    head, body = _raw(port, request)  # the body is never sent: refused from the header
    assert head.startswith("HTTP/1.1 413"), head
    assert json.loads(body)["error"] == "PayloadTooLargeError"
    assert str(limit) in json.loads(body)["detail"]


def test_tinker_routes_have_their_own_limits(live: tuple[int, Harness, FastAPI]) -> None:
    """``/api/v1``: a config-sized route refuses a body above the configuration limit, the
    fwd/bwd route one above the batch limit (on the wire body, zstd-compressed or not)."""
    port, api, _app = live
    api.tenant()
    key = "tml-" + api.last_key
    limits = body_limits(api.context.settings)
    config = limits.limit_for("POST", "/api/v1/create_model")
    batch = limits.limit_for("POST", "/api/v1/forward_backward")
    assert config == limits.limit_for("POST", "/v1/training_runs")
    assert config < batch == limits.limit_for("POST", "/v1/training_runs/r/forward_backward")
    assert batch < api.context.settings.max_body_bytes
    assert limits.limit_for("POST", "/api/v1/sessions/ses_1/finish") == config
    for route, limit, content_type in (
        ("create_model", config, "application/json"),
        ("optim_step", config, "application/json"),
        ("forward_backward", batch, "application/x-protobuf\r\nContent-Encoding: zstd"),
    ):
        request = (
            f"POST /api/v1/{route} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
            f"X-API-Key: {key}\r\nContent-Length: {limit + 1}\r\n\r\n"
        ).encode()
        head, body = _raw(port, request)
        assert head.startswith("HTTP/1.1 413"), (route, head)
        assert json.loads(body)["error"] == "PayloadTooLargeError"
        assert str(limit) in json.loads(body)["detail"]


def test_a_tenant_above_its_rate_gets_429_with_retry_after(
    live: tuple[int, Harness, FastAPI],
) -> None:
    port, api, _app = live
    headers = api.tenant()
    other = api.tenant()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    statuses = []
    for _ in range(5):
        connection.request("GET", "/v1/training_runs", headers=headers)
        response = connection.getresponse()
        body = response.read()
        statuses.append(response.status)
        if response.status == 429:
            assert int(response.getheader("Retry-After") or "0") >= 1
            assert json.loads(body)["error"] == "RateLimitError"
    assert statuses[:3] == [200, 200, 200] and 429 in statuses[3:]
    connection.request("GET", "/v1/training_runs", headers=other)  # others are not limited
    assert connection.getresponse().status == 200
    connection.close()


def test_a_500_keeps_the_keep_alive_connection(live: tuple[int, Harness, FastAPI]) -> None:
    port, _api, _app = live
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    connection.request("GET", "/boom")
    response = connection.getresponse()
    body = json.loads(response.read())
    assert response.status == 500
    assert body["error"] == "ServerError" and "/srv" not in body["detail"]
    assert response.getheader("Connection") != "close"
    sock = connection.sock
    connection.request("GET", "/healthz")  # the same connection, still open
    again = connection.getresponse()
    assert again.status == 200 and again.read() == b'{"status":"ok"}'
    assert connection.sock is sock
    connection.close()


def test_a_31_mb_token_array_is_cut_off_while_it_streams(
    live: tuple[int, Harness, FastAPI],
) -> None:
    """Sent without a Content-Length (chunked), a huge batch is refused as soon as its
    route's limit is passed — long before 31 MB are read or any JSON is parsed."""
    port, api, _app = live
    key = api.tenant()["Authorization"]
    limit = body_limits(api.context.settings).limit_for(
        "POST", "/v1/training_runs/run_x/forward_backward"
    )
    assert limit < 3 * 1024 * 1024  # 128 bytes per token of the 16384-token cap
    request = (
        "POST /v1/training_runs/run_x/forward_backward HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: application/json\r\nAuthorization: {key}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()
    chunk = b'{"batch": {"input_ids": [[' + b"12345, " * 9000
    sent = 0

    def stream(sock: socket.socket) -> None:
        nonlocal sent
        while sent < 31 * 1024 * 1024:
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except OSError:  # refused and closed
                return
            sent += len(chunk)

    started = time.monotonic()
    head, body = _raw(port, request, then=stream)
    assert head.startswith("HTTP/1.1 413"), head
    assert json.loads(body)["field"] == "body"
    assert sent < 31 * 1024 * 1024  # the server stopped reading: the rest was never sent
    assert time.monotonic() - started < 10


def test_route_limits_pick_the_most_specific_pattern(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(max_body_bytes=32 * 1024 * 1024, max_tokens_per_batch=1000)
    limits = body_limits(settings)
    config = settings.max_metadata_bytes + 64 * 1024
    assert limits.limit_for("POST", "/v1/training_runs") == config
    assert limits.limit_for("POST", "/v1/training_runs/r1/optim_step") == config
    assert limits.limit_for("POST", "/v1/training_runs/r1/forward") == 1000 * 128 + 64 * 1024
    assert limits.limit_for("POST", "/v1/datasets/ds_1/records") == 32 * 1024 * 1024
    assert limits.limit_for("GET", "/v1/training_runs") == 32 * 1024 * 1024

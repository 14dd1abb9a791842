"""The sealing/opening pipeline: reused buffers, helper threads, error propagation."""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
from types import SimpleNamespace

import pytest

from tensafe.artifacts import OpeningReader, SealingWriter, TenantKey, open_bytes, seal_bytes
from tensafe.artifacts import writer as writer_module
from tensafe.artifacts.pipeline import BufferPool, HashingPipe
from tensafe.errors import IntegrityError


class _ExplodingHasher:
    """A hasher that fails after ``limit`` bytes (like a broken hash backend)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.seen = limit, 0

    def update(self, data: bytes | memoryview) -> None:
        self.seen += len(data)
        if self.seen > self.limit:
            raise RuntimeError("hash backend failed")


class _CheckingSink:
    """Copies each write, holds on to the view for a moment, then checks that nobody
    modified the buffer while ``write`` was running; keeps the copies."""

    def __init__(self, delay_every: int = 7) -> None:
        self.parts: list[bytes] = []
        self.delay_every = delay_every
        self.modified = False

    def write(self, data: bytes | memoryview) -> int:
        copy = bytes(data)
        if len(self.parts) % self.delay_every == 0:
            time.sleep(0.002)  # let the encrypting thread lap the buffer pool
        if bytes(data) != copy:
            self.modified = True
        self.parts.append(copy)
        return len(copy)


# --- BufferPool -------------------------------------------------------------------


def test_buffer_pool_allocates_lazily_and_reuses() -> None:
    pool = BufferPool(size=8, count=2)
    first = pool.acquire()
    assert len(first) == 8
    pool.release(first)
    assert pool.acquire() is first  # no second allocation while one is free
    second = pool.acquire()
    assert second is not first


def test_buffer_pool_blocks_until_a_buffer_is_released() -> None:
    pool = BufferPool(size=4, count=1)
    held = pool.acquire()
    got: list[bytearray] = []
    waiter = threading.Thread(target=lambda: got.append(pool.acquire()))
    waiter.start()
    waiter.join(0.05)
    assert waiter.is_alive() and not got  # bounded: no third buffer appears
    pool.release(held)
    waiter.join(5)
    assert got == [held]


@pytest.mark.parametrize(("size", "count"), [(-1, 1), (8, 0)])
def test_buffer_pool_rejects_bad_sizes(size: int, count: int) -> None:
    with pytest.raises(ValueError):
        BufferPool(size=size, count=count)


# --- HashingPipe ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("background", "sink_thread"), [(False, False), (True, False), (True, True)]
)
def test_pipe_hashes_sinks_and_calls_back_in_order(background: bool, sink_thread: bool) -> None:
    digest, events = hashlib.sha256(), []
    parts = [os.urandom(100 + i) for i in range(50)]
    with HashingPipe(
        digest, sink=events.append, background=background, depth=2, sink_thread=sink_thread
    ) as pipe:
        for index, part in enumerate(parts):
            pipe.feed(part, then=lambda index=index: events.append(index))
        pipe.after(lambda: events.append("end"))
    expected: list[object] = []
    for index, part in enumerate(parts):
        expected += [part, index]
    assert events == [*expected, "end"]
    assert digest.digest() == hashlib.sha256(b"".join(parts)).digest()


@pytest.mark.parametrize("sink_thread", [False, True])
def test_pipe_hash_error_reaches_the_feeder_and_callbacks_still_run(sink_thread: bool) -> None:
    released: list[int] = []
    sunk: list[bytes] = []
    pipe = HashingPipe(
        _ExplodingHasher(limit=250), sink=sunk.append, depth=2, sink_thread=sink_thread
    )
    fed = 0
    with pytest.raises(RuntimeError, match="hash backend failed"):
        for index in range(100):
            pipe.feed(bytes(100), then=lambda index=index: released.append(index))
            fed += 1
        pipe.close()
    pipe.close()  # reported once; closing again is quiet
    assert fed >= 3
    assert released == list(range(fed))  # every buffer fed came back
    assert len(sunk) <= 2  # nothing is written after the failure
    with pytest.raises(RuntimeError, match="failed earlier"):
        pipe.feed(b"more")


def test_pipe_sink_error_on_the_sink_thread_propagates() -> None:
    def sink(data: bytes | memoryview) -> None:
        raise OSError(28, "No space left on device")

    pipe = HashingPipe(hashlib.sha256(), sink=sink, sink_thread=True)
    pipe.feed(b"x")
    with pytest.raises(OSError, match="No space left"):
        pipe.close()


def test_pipe_context_exit_keeps_the_callers_exception() -> None:
    with (
        pytest.raises(KeyError),
        HashingPipe(_ExplodingHasher(limit=0)) as pipe,
    ):
        pipe.feed(b"boom")
        time.sleep(0.01)
        raise KeyError("the caller's own failure")


# --- SealingWriter with reused buffers --------------------------------------------


def test_many_chunks_through_the_buffer_pool_round_trip(tenant_key: TenantKey) -> None:
    """Far more chunks than buffers, a sink that stalls: reuse never corrupts output."""
    data = os.urandom(300 * 1024 + 77)
    sink = _CheckingSink()
    with SealingWriter(
        sink,  # type: ignore[arg-type]
        tenant_key=tenant_key,
        artifact_id="art_pool",
        chunk_size=1024,
    ) as writer:
        for start in range(0, len(data), 5000):  # straddling and whole-chunk writes
            writer.write(data[start : start + 5000])
    blob = b"".join(sink.parts)
    assert not sink.modified
    assert writer.result.chunk_count == len(data) // 1024 + 1
    assert writer.result.chunk_count > 50 * writer_module.PIPELINE_BUFFERS
    assert writer.result.content_hash == hashlib.sha256(blob).hexdigest()
    assert writer.result.size_bytes == len(blob)
    assert open_bytes(blob, keys=tenant_key, tenant_id="acme", artifact_id="art_pool") == data


def test_writer_data_may_be_reused_after_write_returns(tenant_key: TenantKey) -> None:
    out = io.BytesIO()
    scratch = bytearray(4096)
    expected = bytearray()
    with SealingWriter(out, tenant_key=tenant_key, artifact_id="a", chunk_size=1024) as writer:
        for round_ in range(64):
            scratch[:] = bytes([round_]) * len(scratch)
            writer.write(scratch)
            expected += scratch
    assert open_bytes(out.getvalue(), keys=tenant_key, tenant_id="acme", artifact_id="a") == (
        expected
    )


def test_error_in_the_ciphertext_hash_thread_propagates_and_aborts(
    tenant_key: TenantKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = SimpleNamespace(sha256=lambda: _ExplodingHasher(limit=10_000))
    monkeypatch.setattr(writer_module, "hashlib", fake)
    out = io.BytesIO()
    writer = SealingWriter(out, tenant_key=tenant_key, artifact_id="a", chunk_size=1024)
    with pytest.raises(RuntimeError, match="hash backend failed"):
        for _ in range(100):
            writer.write(bytes(1024))
        writer.finish()
    with pytest.raises(ValueError):  # the writer aborted itself
        writer.write(b"more")
    with pytest.raises(IntegrityError):
        open_bytes(out.getvalue(), keys=tenant_key, tenant_id="acme", artifact_id="a")


def test_sink_error_aborts_the_writer(tenant_key: TenantKey) -> None:
    class Full:
        def write(self, data: bytes) -> int:
            raise OSError(28, "No space left on device")

    writer = SealingWriter(Full(), tenant_key=tenant_key, artifact_id="a", chunk_size=64)  # type: ignore[arg-type]
    with pytest.raises(OSError, match="No space left"):
        for _ in range(1000):
            writer.write(bytes(64))
        writer.finish()
    with pytest.raises(ValueError):
        writer.write(b"x")


# --- OpeningReader ----------------------------------------------------------------


@pytest.mark.parametrize("background", [True, False])
def test_reader_content_hash_is_complete_when_the_final_chunk_arrives(
    tenant_key: TenantKey, background: bool
) -> None:
    data = os.urandom(50_000)
    blob = seal_bytes(data, tenant_key=tenant_key, artifact_id="a", chunk_size=1024)
    content = hashlib.sha256()
    reader = OpeningReader(
        io.BytesIO(blob),
        keys=tenant_key,
        tenant_id="acme",
        artifact_id="a",
        content_hasher=content,
        background=background,
    )
    got = []
    for chunk in reader.chunks():
        got.append(chunk)
        if reader.complete:
            assert content.digest() == hashlib.sha256(blob).digest()
    assert b"".join(got) == data


def test_chunks_into_decrypts_into_the_given_buffers(tenant_key: TenantKey) -> None:
    data = os.urandom(10 * 1024 + 5)
    blob = seal_bytes(data, tenant_key=tenant_key, artifact_id="a", chunk_size=1024)
    output = bytearray(len(data))
    position = 0

    def destination(size: int) -> memoryview:
        nonlocal position
        view = memoryview(output)[position : position + size]
        position += size
        return view

    reader = OpeningReader(io.BytesIO(blob), keys=tenant_key, tenant_id="acme", artifact_id="a")
    sizes = [len(chunk) for chunk in reader.chunks_into(destination)]
    assert output == data and sizes == [1024] * 10 + [5] and reader.complete


def test_chunks_into_leaves_no_unverified_plaintext(tenant_key: TenantKey) -> None:
    data = b"secret!!" * 512
    blob = bytearray(seal_bytes(data, tenant_key=tenant_key, artifact_id="a", chunk_size=1024))
    header_length = len(blob) - (len(data) + 5 * 16)
    blob[header_length + 1024 + 16 + 3] ^= 0x01  # inside the second chunk's ciphertext
    targets: list[bytearray] = []

    def destination(size: int) -> memoryview:
        targets.append(bytearray(size))
        return memoryview(targets[-1])

    reader = OpeningReader(
        io.BytesIO(bytes(blob)), keys=tenant_key, tenant_id="acme", artifact_id="a"
    )
    with pytest.raises(IntegrityError):
        for _ in reader.chunks_into(destination):
            pass
    assert len(targets) == 2
    assert targets[1] == bytes(1024)  # the failed chunk's buffer was wiped


def test_chunks_into_rejects_a_wrongly_sized_destination(tenant_key: TenantKey) -> None:
    blob = seal_bytes(b"abc", tenant_key=tenant_key, artifact_id="a")
    reader = OpeningReader(io.BytesIO(blob), keys=tenant_key, tenant_id="acme", artifact_id="a")
    with pytest.raises(ValueError, match="expected 3"):
        list(reader.chunks_into(lambda size: memoryview(bytearray(size + 1))))


def test_abandoned_reader_stops_its_hash_thread(tenant_key: TenantKey) -> None:
    blob = seal_bytes(os.urandom(20_000), tenant_key=tenant_key, artifact_id="a", chunk_size=1024)
    before = threading.active_count()
    reader = OpeningReader(
        io.BytesIO(blob),
        keys=tenant_key,
        tenant_id="acme",
        artifact_id="a",
        content_hasher=hashlib.sha256(),
    )
    chunks = reader.chunks()
    next(chunks)
    chunks.close()  # stopping early joins the helper thread
    assert threading.active_count() == before

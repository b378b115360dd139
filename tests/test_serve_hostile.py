"""`ipldmount serve` against hostile and broken clients, and over a corrupt store.

Idle and half-sent connections must hold no thread and must not keep a well-behaved request
from its answer; the connection cap, the idle, request-head and send timeouts each end what
they bound; every aborted client is one line in the log, never a traceback; a stored block
that does not hash to its CID is answered 500 (or ends a CAR already under way), never sent.
Everything runs on 127.0.0.1; every wait is bounded in count and time.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import logging
import os
import resource
import select
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ipldmount.adapters.serve import GatewayServer
from ipldmount.blocks import DirectoryBlockstore, car
from ipldmount.ipld import cid as cids
from ipldmount.tree.model import Tree

ANSWER_BOUND = 10.0  # seconds a well-behaved request may take while hostile clients are connected
HOSTILE = 150  # connections of each hostile kind
BIG = 24  # MiB in the big store: more than loopback's socket buffers, so a send can stall
HALF_SENT = b"GET /ipfs/bafkqaaa?format=raw HTTP/1.1\r\nHost: 127.0.0.1\r\n"  # no blank line: never ends

Served = tuple[GatewayServer, DirectoryBlockstore, bytes]


# --- fixtures and helpers ------------------------------------------------------------


@pytest.fixture(autouse=True)
def descriptors() -> Iterator[None]:
    """Room for both ends of every test connection in this process (the soft limit raised,
    within the hard one, and restored after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4096 if hard == resource.RLIM_INFINITY else min(4096, hard)
    if wanted < 2 * (2 * HOSTILE) + 200:
        pytest.skip(f"the descriptor limit ({hard}) is too low for {2 * HOSTILE} connections")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _store(path: Path, files: dict[str, bytes]) -> tuple[DirectoryBlockstore, bytes]:
    store = DirectoryBlockstore(path, durable=False)
    tree = Tree(store)
    for name, data in files.items():
        tree.write_file(name, data)
    return store, tree.commit()


@pytest.fixture
def small(tmp_path: Path) -> tuple[DirectoryBlockstore, bytes]:
    return _store(tmp_path / "small", {f"arr/{i}": bytes([i]) * 3000 for i in range(5)})


@pytest.fixture
def big(tmp_path: Path) -> tuple[DirectoryBlockstore, bytes]:
    return _store(tmp_path / "big", {f"arr/{i}": os.urandom(1 << 20) for i in range(BIG)})


@contextlib.contextmanager
def _serving(store: DirectoryBlockstore, **limits: Any) -> Iterator[GatewayServer]:
    server = GatewayServer(store, ("127.0.0.1", 0), **limits)
    server.start_in_thread()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def _connections(port: int, count: int, first: bytes = b"", rcvbuf: int = 0) -> Iterator[list[socket.socket]]:
    """*count* connections to the server, each having sent *first*; all closed on leaving."""
    opened: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket()
            if rcvbuf:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: the window
            sock.settimeout(ANSWER_BOUND)
            opened.append(sock)
            sock.connect(("127.0.0.1", port))
            if first:
                sock.sendall(first)
        yield opened
    finally:
        for sock in opened:
            sock.close()


def _reset(sock: socket.socket) -> None:
    """Close with a RST, as an aborted client does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _peer(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


def _get(url: str) -> tuple[int, bytes]:
    """Status and body; fails the test if no answer comes within ANSWER_BOUND."""
    request = urllib.request.Request(url, headers={"Accept": "application/vnd.ipld.raw"})
    try:
        with urllib.request.urlopen(request, timeout=ANSWER_BOUND) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _answered(url: str, expected: bytes) -> None:
    started = time.monotonic()
    assert _get(url) == (200, expected)
    assert time.monotonic() - started < ANSWER_BOUND


def _eventually(condition: Callable[[], bool], bound: float = ANSWER_BOUND) -> bool:
    deadline = time.monotonic() + bound
    for _ in range(int(bound / 0.05) + 1):
        if condition() or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return condition()


def _lines(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [record for record in caplog.records if text in record.getMessage()]


def _raw_url(server: GatewayServer, cid: bytes, format_: str = "raw") -> str:
    return f"{server.url}/ipfs/{cids.cid_to_str(cid)}?format={format_}"


def _corrupt(store: DirectoryBlockstore, cid: bytes) -> bytes:
    """Overwrite a stored block with other bytes of its length; return them."""
    path = store.block_path(cid)
    evil = bytes(b ^ 0xFF for b in path.read_bytes())
    path.chmod(0o644)
    path.write_bytes(evil)
    return evil


# --- connections that hold nothing ------------------------------------------------------


def test_idle_and_half_sent_connections_hold_no_thread(small: tuple[DirectoryBlockstore, bytes]) -> None:
    store, root = small
    before = threading.active_count()
    with (
        _serving(store, workers=4) as server,
        _connections(server.server_address[1], HOSTILE) as idle,
        _connections(server.server_address[1], HOSTILE, HALF_SENT) as half,
    ):
        _answered(_raw_url(server, root), store.get(root))
        assert threading.active_count() <= before + 1 + 4  # the loop and the workers, whatever is open
        assert len(idle) + len(half) == 2 * HOSTILE


def test_past_the_cap_the_longest_waiting_connection_makes_room(
    small: tuple[DirectoryBlockstore, bytes], caplog: pytest.LogCaptureFixture
) -> None:
    store, root = small
    caplog.set_level(logging.INFO, logger="ipldmount.adapters.serve")
    with (
        _serving(store, max_connections=32, workers=2) as server,
        _connections(server.server_address[1], 2 * HOSTILE, HALF_SENT),
    ):
        _answered(_raw_url(server, root), store.get(root))
        evicted = 2 * HOSTILE + 1 - 32  # the hostile ones and the good one, less the cap
        assert _eventually(lambda: len(_lines(caplog, "closed to make room")) >= evicted)
    assert all("Traceback" not in record.getMessage() for record in caplog.records)


def test_a_server_short_of_descriptors_neither_spins_nor_stops_answering(
    small: tuple[DirectoryBlockstore, bytes],
) -> None:
    """The old server, at 128 descriptors, failed accept() (EMFILE) in a loop: one CPU busy and
    no answer to anyone. `serve` now caps connections below the limit and makes room."""
    store, root = small
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    command = [sys.executable, "-m", "ipldmount", "serve", "--port", str(port), "--store", str(store.root)]
    server = subprocess.Popen(
        command,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (128, hard)),
    )
    url = f"http://127.0.0.1:{port}/ipfs/{cids.cid_to_str(root)}?format=raw"
    try:
        assert _eventually(lambda: _listening(port) or server.poll() is not None, 20)
        assert server.poll() is None, "serve did not start"
        with (
            _connections(port, HOSTILE // 3) as idle,
            _connections(port, HOSTILE + 50, HALF_SENT) as half,
        ):
            _answered(url, store.get(root))
            cpu, started = _cpu_seconds(server.pid), time.monotonic()
            time.sleep(2)
            busy = (_cpu_seconds(server.pid) - cpu) / (time.monotonic() - started)
            assert busy < 0.25, f"serve used {busy:.0%} of a CPU with {len(idle) + len(half)} clients waiting"
            assert _threads(server.pid) <= 1 + 32 + 2  # main (the loop), the workers, slack
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=20)
    assert "Traceback" not in stderr
    assert "closed to make room" in stderr


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads line")


# --- time limits ------------------------------------------------------------------------


def test_an_idle_connection_is_closed_after_the_idle_timeout(
    small: tuple[DirectoryBlockstore, bytes],
) -> None:
    store, _ = small
    with (
        _serving(store, idle_timeout=0.5) as server,
        _connections(server.server_address[1], 1) as (idle,),
    ):
        assert idle.recv(100) == b""  # closed by the server: recv does not time out (ANSWER_BOUND)


def test_a_slowloris_sender_is_cut_off_after_the_request_timeout(
    small: tuple[DirectoryBlockstore, bytes], caplog: pytest.LogCaptureFixture
) -> None:
    """One byte of header every 0.1 s: each byte is activity, but the head must be whole
    within request_timeout of its first byte."""
    store, _ = small
    with (
        _serving(store, idle_timeout=30, request_timeout=1) as server,
        _connections(server.server_address[1], 1, b"GET /ipfs/bafkqaaa?format=raw HTTP/1.1\r\n") as (slow,),
    ):
        answer = None
        started = time.monotonic()
        for _ in range(int(ANSWER_BOUND / 0.1)):
            with contextlib.suppress(OSError):  # a reset once the server has closed
                slow.sendall(b"X")
            if select.select([slow], [], [], 0.1)[0]:
                answer = _read_all(slow)
                break
        assert answer is not None, "still open"
        assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer  # a 408, unless lost to a reset
        assert time.monotonic() - started < ANSWER_BOUND
    assert _lines(caplog, "no complete request within 1 s")


def test_clients_that_stop_reading_hold_no_thread(big: tuple[DirectoryBlockstore, bytes]) -> None:
    """More clients than workers stop reading a big CAR: their answers wait in the event loop,
    not in the workers, so a well-behaved request is answered long before the send timeout."""
    store, root = big
    before = threading.active_count()
    with (
        _serving(store, workers=2, send_timeout=60) as server,
        _connections(server.server_address[1], 20, _car_request(root), rcvbuf=4096) as stalled,
    ):
        for sock in stalled:  # each answer has begun, and stalled
            assert len(sock.recv(1024)) > 0
        _answered(_raw_url(server, root), store.get(root))
        assert threading.active_count() <= before + 1 + 2


def test_a_client_that_stops_reading_is_cut_off_after_the_send_timeout(
    big: tuple[DirectoryBlockstore, bytes], caplog: pytest.LogCaptureFixture
) -> None:
    store, root = big
    with (
        _serving(store, send_timeout=1) as server,
        _connections(server.server_address[1], 1, _car_request(root), rcvbuf=4096) as (stalled,),
    ):
        assert _eventually(lambda: bool(_lines(caplog, "took no byte of its answer for 1 s")))
        received = _read_all(stalled)  # what was sent before the cut, then the end
        assert received.startswith(b"HTTP/1.1 200") and len(received) < BIG << 20


class _Stuck:
    """A store whose reads wait for *released*: its requests stay with the workers."""

    def __init__(self, store: DirectoryBlockstore) -> None:
        self.store = store
        self.released = threading.Event()

    def get(self, cid: bytes) -> bytes:
        self.released.wait(ANSWER_BOUND)
        return self.store.get(cid)

    def has(self, cid: bytes) -> bool:
        return self.store.has(cid)


def test_past_the_cap_with_every_connection_worked_on_a_new_one_gets_a_fast_503(
    small: tuple[DirectoryBlockstore, bytes], caplog: pytest.LogCaptureFixture
) -> None:
    store, root = small
    stuck = _Stuck(store)
    request = f"GET /ipfs/{cids.cid_to_str(root)}?format=raw HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    with _serving(stuck, max_connections=2, workers=1) as server:  # type: ignore[arg-type]
        port = server.server_address[1]
        with _connections(port, 2, request) as working:  # one with the worker, one queued for it
            # both heads read (the loop's own state): neither connection can make room
            assert _eventually(lambda: server._open == 2 and not server._waiting)
            with _connections(port, 1) as (refused,):  # sends nothing: closing it cannot reset
                answer = _read_all(refused)
            assert answer.startswith(b"HTTP/1.1 503") and b"too many connections" in answer
            stuck.released.set()
            for sock in working:
                assert sock.recv(100).startswith(b"HTTP/1.1 200")
    assert len(_lines(caplog, "refused (503)")) == 1


def test_pipelined_requests_are_answered_in_order(small: tuple[DirectoryBlockstore, bytes]) -> None:
    """Two requests in one send, and a head split across sends: the bytes the loop read past
    one request are the start of the next."""
    store, root = small
    ask = f"GET /ipfs/{cids.cid_to_str(root)}?format=raw HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    probe = b"GET /ipfs/bafkqaaa?format=raw HTTP/1.1\r\nHost: x\r\n\r\n"
    with _serving(store) as server, _connections(server.server_address[1], 1, ask + probe[:20]) as (sock,):
        time.sleep(0.2)
        sock.sendall(
            probe[20:] + ask + b"GET /ipfs/bafkqaaa?format=raw HTTP/1.1\r\nConnection: close\r\n\r\n"
        )
        answers = _read_all(sock)
    assert answers.count(b"HTTP/1.1 200 OK") == 4
    assert answers.count(store.get(root)) == 2


def _car_request(root: bytes) -> bytes:
    return f"GET /ipfs/{cids.cid_to_str(root)}?format=car HTTP/1.1\r\nHost: x\r\n\r\n".encode()


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    for _ in range(1000):
        try:
            chunk = sock.recv(65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


# --- failures are one line each ------------------------------------------------------------


def test_aborted_clients_leave_one_line_each_and_no_traceback(
    big: tuple[DirectoryBlockstore, bytes],
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Reset before sending anything, in the middle of a request head, and in the middle of a
    CAR being sent: one log line per client, naming it, and nothing on stderr."""
    store, root = big
    caplog.set_level(logging.INFO, logger="ipldmount.adapters.serve")
    car_request = _car_request(root)
    with _serving(store, workers=4) as server:
        port = server.server_address[1]
        with (  # all open at once: a port freed by a reset could be another client's next
            _connections(port, 50) as silent,
            _connections(port, 50, HALF_SENT) as half,
            _connections(port, 10, car_request, rcvbuf=4096) as reading,
        ):
            peers = [_peer(sock) for sock in silent + half + reading]
            for sock in silent + half:
                _reset(sock)
            for sock in reading:  # one after the other: each waits for a worker the last one freed
                assert len(sock.recv(1024)) > 0  # the answer has begun
                _reset(sock)
            assert _eventually(lambda: all(_lines(caplog, f"{peer}:") for peer in peers))
        _answered(_raw_url(server, root), store.get(root))
    for peer in peers:
        assert len(_lines(caplog, f"{peer}:")) == 1, _lines(caplog, f"{peer}:")
    assert not [record for record in caplog.records if record.exc_info]
    assert "Traceback" not in capfd.readouterr().err


# --- a corrupt store -------------------------------------------------------------------------


def test_a_corrupt_block_is_a_server_error_never_sent(
    small: tuple[DirectoryBlockstore, bytes], caplog: pytest.LogCaptureFixture
) -> None:
    store, root = small
    leaf = cids.block_cid(cids.RAW, bytes([3]) * 3000)
    evil = _corrupt(store, leaf)
    name = cids.cid_to_str(leaf)
    with _serving(store) as server:
        for url in (_raw_url(server, leaf), _raw_url(server, leaf, "car"), _raw_url(server, root, "car")):
            status, body = _get(url)
            assert status == 500, url
            assert b"corrupt" in body and name.encode() in body and evil not in body
        head = urllib.request.Request(_raw_url(server, leaf), method="HEAD")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(head, timeout=ANSWER_BOUND)
        assert refused.value.code == 500
    errors = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert len(errors) == 4 and all(name in record.getMessage() for record in errors)
    assert all("corrupt" in record.getMessage() for record in errors)


def test_a_corrupt_block_deep_in_a_car_ends_it_and_is_logged_as_corrupt(
    big: tuple[DirectoryBlockstore, bytes], caplog: pytest.LogCaptureFixture
) -> None:
    """Past the first MiB the 200 is sent: the CAR stops before the corrupt block, whose CID
    the log names as corrupt (not missing)."""
    store, root = big
    order = [cid for cid, _ in car.iter_closure(store, root)]
    bad = order[-1]
    evil = _corrupt(store, bad)
    with _serving(store) as server:
        status, body = _get(_raw_url(server, root, "car"))
    assert status == 200 and evil not in body
    roots, read = car.read_car(io.BytesIO(body))
    sections = list(read)
    assert roots == [root] and [cid for cid, _ in sections] == order[:-1]
    assert all(cids.verify(cid, data) for cid, data in sections)
    cut = _lines(caplog, f"stored block {cids.cid_to_str(bad)} is corrupt")
    assert len(cut) == 1 and cut[0].levelno == logging.ERROR


def test_a_file_cut_short_by_a_corrupt_leaf_closes_its_connection(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A file's bytes by path: its status is sent once its first MiB is read, so a corrupt leaf
    further on ends the answer there, closes the connection (the client sees a short body, never
    the bad bytes, never a hang) and is one log line, not a traceback."""
    data = os.urandom(3 << 20)
    store, root = _store(tmp_path / "chunked", {"f": data})
    *_, last = [cid for cid, _ in car.iter_closure(store, root)]
    evil = _corrupt(store, last)
    with _serving(store) as server:
        host, port = server.server_address[:2]
        connection = http.client.HTTPConnection(host, port, timeout=ANSWER_BOUND)
        connection.request("GET", f"/ipfs/{cids.cid_to_str(root)}/f")
        response = connection.getresponse()
        assert response.status == 200 and response.headers["Content-Length"] == str(len(data))
        with pytest.raises(http.client.IncompleteRead) as short:
            response.read()
        assert short.value.partial == data[: 2 << 20] and evil not in short.value.partial
        connection.close()
        assert _get(_raw_url(server, root))[0] == 200  # the server goes on
    cut = _lines(caplog, "cut short")
    assert len(cut) == 1 and cut[0].levelno == logging.ERROR and cids.cid_to_str(last) in cut[0].getMessage()
    assert not any(record.exc_info for record in caplog.records)


def test_the_cli_passes_its_limits_to_the_server(small: tuple[DirectoryBlockstore, bytes]) -> None:
    """`serve --idle-timeout 1`: the limits of the command line reach the server."""
    store, _ = small
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ipldmount",
            "serve",
            "--port",
            "0",
            "--idle-timeout",
            "1",
            "--store",
            str(store.root),
        ],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "IPLDMOUNT_CONFIG": "/nonexistent/config.toml"},
    )
    try:
        line = process.stderr.readline()  # type: ignore[union-attr]
        port = int(line.rsplit(":", 1)[1].split("/")[0])
        with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_BOUND) as idle:
            started = time.monotonic()
            assert idle.recv(100) == b""  # closed by the server
            assert time.monotonic() - started < ANSWER_BOUND
    finally:
        process.terminate()
        process.communicate(timeout=30)

"""Bad input on the RESP socket is answered as Redis answers it, and nothing is lost.

Aspects: malformed frames (error after the replies before them, then the connection
closes, as in Redis), a nested multibulk, a bulk length far over the limits (refused
once ``max_request_bytes`` arrived, not buffered to the end), a value over
``limits.maxValueBytes`` (refused, connection usable), inline commands, binary keys
with NUL and CRLF, and a hypothesis fuzz of the parser boundary: no crash, no hang,
the process keeps serving and a stored key keeps its value.
"""

from __future__ import annotations

import socket
import uuid

import hiredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.sidecar import resp_support as support
from tests.sidecar.resp_support import RawClient, encode

reference_socket = support.reference_socket
reference = support.reference
resp_socket = support.resp_socket
resp = support.resp
ns = support.ns


def test_malformed_frame_after_good_commands(resp_socket: str, ns: str) -> None:
    client = RawClient(resp_socket)
    client.send(encode("SET", ns + "k", "kept") + encode("GET", ns + "k") + b"*1\r\n$-5\r\n")
    assert client.read() == b"OK"
    assert client.read() == b"kept"
    error = client.read()
    assert isinstance(error, hiredis.ReplyError)
    assert str(error).startswith("ERR Protocol error")
    assert client.closed_by_peer()
    again = RawClient(resp_socket)
    assert again.call("GET", ns + "k") == b"kept"


def test_nested_multibulk_like_redis(resp_socket: str, reference: RawClient) -> None:
    frame = b"*1\r\n*1\r\n$4\r\nPING\r\n"
    ours = RawClient(resp_socket)
    ours.send(frame)
    reference.send(frame)
    assert str(ours.read()) == str(reference.read()) == "ERR Protocol error: expected '$', got '*'"
    assert ours.closed_by_peer()


def test_huge_bulk_is_refused_before_it_is_read(resp_socket: str, ns: str) -> None:
    client = RawClient(resp_socket)
    client.send(
        b"*3\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$999999999\r\n" % (len(ns) + 1, ns.encode() + b"k")
    )
    sent = 0
    try:
        for _ in range(1000):  # 8 MiB at most; the limit in these sidecars is ~68 KiB
            client.sock.sendall(b"x" * 8192)
            sent += 8192
    except (BrokenPipeError, ConnectionResetError):
        pass
    error = client.read()
    assert "Protocol error: a command of more than" in str(error)
    assert sent < 2 * 1024 * 1024  # the sidecar stopped reading long before the end
    assert RawClient(resp_socket).call("EXISTS", ns + "k") == 0


def test_value_over_the_limit_keeps_the_connection(resp: RawClient, ns: str) -> None:
    resp.call("SET", ns + "k", "old")
    assert "limits.maxValueBytes" in str(resp.call("SET", ns + "k", b"x" * 5000))
    assert resp.call("GET", ns + "k") == b"old"


def test_inline_commands(resp_socket: str, reference_socket: str, ns: str) -> None:
    for path in (resp_socket, reference_socket):
        client = RawClient(path)
        client.send(b"PING\r\n")
        assert client.read() == b"PONG"
        client.send(f"SET {ns}inline hello\r\nGET {ns}inline\n".encode())
        assert client.read() == b"OK"
        assert client.read() == b"hello"
        client.send(encode("GET", ns + "inline"))  # a real frame after inline ones
        assert client.read() == b"hello"
        client.close()


def test_binary_keys_with_nul_and_crlf(resp: RawClient, ns: str) -> None:
    key = ns.encode() + b"a\x00b\r\nc"
    assert resp.call("SET", key, b"\r\n\x00") == b"OK"
    assert resp.call("GET", key) == b"\r\n\x00"
    found: list[bytes] = []
    cursor = b"0"
    while True:  # a full iteration: the module's sidecar holds many other keys
        cursor, keys = resp.call("SCAN", cursor, "MATCH", ns + "*", "COUNT", "1000")
        found += keys
        if cursor == b"0":
            break
    assert found == [key]


def _send_and_drain(path: str, data: bytes) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.1)
        sock.connect(path)
        try:
            sock.sendall(data)
            while sock.recv(65536):
                pass
        except (TimeoutError, BrokenPipeError, ConnectionResetError):
            pass  # an unfinished frame waits for more; a bad one closes: both fine


_FRAGMENTS = st.sampled_from(
    [
        b"*",
        b"$",
        b"\r\n",
        b"-1",
        b"0",
        b"3",
        b"999999999999",
        b"GET",
        b"SET",
        b"PING",
        b"MULTI",
        b"EXEC",
        b"+OK",
        b":1",
        b"*2\r\n",
        b"$3\r\n",
        b"%1\r\n",
        b"_\r\n",
        b"\x00",
        b"podcache:lock:x",
        b" ",
        b"\n",
    ]
)
_PAYLOADS = st.one_of(
    st.binary(max_size=200),
    st.lists(_FRAGMENTS, max_size=30).map(b"".join),
)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(payload=_PAYLOADS)
def test_fuzz_no_crash_no_hang(resp_socket: str, payload: bytes) -> None:
    sentinel = "fuzz-sentinel-" + uuid.uuid5(uuid.NAMESPACE_URL, resp_socket).hex[:8]
    client = RawClient(resp_socket, timeout=5.0)
    if client.call("GET", sentinel) is None:
        client.call("SET", sentinel, "intact")
    _send_and_drain(resp_socket, payload)
    assert client.call("PING") == b"PONG"
    assert client.call("GET", sentinel) == b"intact"
    client.close()

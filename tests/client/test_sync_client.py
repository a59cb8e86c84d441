"""``podcache.Client`` end to end: a real sidecar process on each backend, through its socket.

Aspects: get/set/delete round trips and misses, TTLs (seconds and duration
strings) expiring, set_if_absent, compare-and-set by ETag and by value, keys with
odd characters (each a distinct key), binary and empty values, the server's typed
errors (invalid key, invalid ttl, too large, unknown election) with the server
still serving after them, keep-alive reuse of one connection, many threads on one
client, a forked child opening its own connection, reconnecting after the sidecar
restarts, a clear ``ClientError`` when the sidecar is down, and the probes.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import pytest

import podcache
from podcache import errors
from tests.client.sidecars import SidecarProcess, memory_config, wait_for

ODD_KEYS = ["a/b", "a%2Fb", "100%", "what?x=1&y=2", "#frag", "sp ace", "ключ", "🙂", "..", ".",
            "+plus", "semi;colon", "back\\slash", "quote\"'", "tab\t", "new\nline\r\n",
            "x" * 1000]


def test_set_get_delete(client: podcache.Client, key: str) -> None:
    client.set(key, b"hello")
    assert client.get(key) == b"hello"
    client.set(key, b"again")
    assert client.get(key) == b"again"
    client.delete(key)
    with pytest.raises(podcache.CacheMiss):
        client.get(key)
    client.delete(key)  # absent: still fine


def test_miss_is_a_key_error(client: podcache.Client, key: str) -> None:
    with pytest.raises(KeyError):
        client.get(key)


@pytest.mark.parametrize("ttl", [0.3, "300ms"])
def test_ttl_expires(client: podcache.Client, key: str, ttl: float | str) -> None:
    client.set(key, b"v", ttl=ttl)
    client.set(key + "-long", b"v", ttl=60)
    assert client.get(key) == b"v"

    def gone() -> bool:
        try:
            client.get(key)
        except podcache.CacheMiss:
            return True
        return False

    wait_for(gone, timeout=3.0, message="expiry")
    assert client.get(key + "-long") == b"v"


def test_set_if_absent(client: podcache.Client, key: str) -> None:
    assert client.set_if_absent(key, b"first") is True
    assert client.set_if_absent(key, b"second") is False
    assert client.get(key) == b"first"


def test_compare_and_set_by_etag(client: podcache.Client, key: str) -> None:
    client.set(key, b"v1")
    value, etag = client.get_with_etag(key)
    assert value == b"v1"
    assert client.compare_and_set(key, b"v2", etag) is True
    assert client.get(key) == b"v2"
    assert client.compare_and_set(key, b"v3", etag) is False  # stale: v1's etag
    assert client.get(key) == b"v2"


def test_compare_and_set_on_a_missing_key_is_false(client: podcache.Client, key: str) -> None:
    assert client.compare_and_set(key, b"v", '"0123"') is False
    with pytest.raises(podcache.CacheMiss):
        client.get(key)


def test_set_if_match_by_value(client: podcache.Client, key: str) -> None:
    assert client.set_if_match(key, b"new", b"old") is False  # absent
    client.set(key, b"old")
    assert client.set_if_match(key, b"new", b"other") is False
    assert client.set_if_match(key, b"new", b"old") is True
    assert client.get(key) == b"new"


def test_odd_keys_are_distinct_keys(client: podcache.Client, key: str) -> None:
    keys = [key + odd for odd in ODD_KEYS]
    for index, odd in enumerate(keys):
        client.set(odd, f"value-{index}".encode())
    for index, odd in enumerate(keys):
        assert client.get(odd) == f"value-{index}".encode(), odd
    for odd in keys:
        client.delete(odd)
        with pytest.raises(podcache.CacheMiss):
            client.get(odd)


def test_newline_in_key(client: podcache.Client, key: str) -> None:
    client.set(key + "\n", b"v")
    assert client.get(key + "\n") == b"v"


def test_longest_key(client: podcache.Client) -> None:
    longest = "ä" * 512  # 1024 UTF-8 bytes: the limit itself is allowed
    client.set(longest, b"v")
    assert client.get(longest) == b"v"
    with pytest.raises(podcache.InvalidKey, match="1025 bytes"):
        client.get(longest + "x")


@pytest.mark.parametrize("value", [b"", b"\x00\xff\x00", bytes(range(256)) * 100])
def test_binary_values(client: podcache.Client, key: str, value: bytes) -> None:
    client.set(key, value)
    assert client.get(key) == value


def test_bad_input_gets_typed_errors_and_the_server_keeps_serving(
        client: podcache.Client, key: str) -> None:
    client.set(key, b"kept")
    with pytest.raises(podcache.InvalidKey):
        client.set("x" * 1025, b"v")  # over limits.maxKeyBytes
    with pytest.raises(podcache.ValueTooLarge):
        client.set(key, b"x" * 65537)  # over limits.maxValueBytes
    with pytest.raises(podcache.InvalidTTL):
        client.acquire_lock(key, ttl="2h")  # over locks.maxTTL
    with pytest.raises(podcache.InvalidTTL):
        client.set(key, b"v", ttl=-1)  # refused before sending
    with pytest.raises(errors.ServerError) as caught:
        client.leader("never-joined")
    assert caught.value.code == "unknown_election"
    assert caught.value.status == 404
    assert client.get(key) == b"kept"


def test_keep_alive_reuses_one_connection(client: podcache.Client, key: str) -> None:
    for index in range(50):
        client.set(key, str(index).encode())
        assert client.get(key) == str(index).encode()
    assert client.connects == 1


def test_threads_share_one_client(client: podcache.Client, key: str) -> None:
    failures: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for index in range(30):
                name = f"{key}-{worker}-{index}"
                client.set(name, name.encode())
                assert client.get(name) == name.encode()
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(worker,)) for worker in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert client.connects <= 8


def test_probes(client: podcache.Client) -> None:
    assert client.health() is True
    assert client.ready() is True


@pytest.fixture
def own_sidecar() -> Iterator[SidecarProcess]:
    sidecar = SidecarProcess(memory_config(), pod_name="pod-restart")
    try:
        sidecar.start()
        yield sidecar
    finally:
        sidecar.close()


def test_reconnects_after_the_sidecar_restarts(own_sidecar: SidecarProcess) -> None:
    with podcache.Client(own_sidecar.socket_path, timeout=5.0) as client:
        client.set("k", b"before")
        assert client.connects == 1
        own_sidecar.restart()  # the pooled keep-alive connection is now dead
        with pytest.raises(podcache.CacheMiss):  # memory backend: a fresh, empty process
            client.get("k")
        client.set("k", b"after")
        assert client.get("k") == b"after"
        assert client.connects == 2


def test_sidecar_down_is_a_clear_client_error(own_sidecar: SidecarProcess) -> None:
    with podcache.Client(own_sidecar.socket_path, timeout=2.0) as client:
        assert client.ready()
        own_sidecar.stop()
        with pytest.raises(errors.ClientError, match=own_sidecar.socket_path):
            client.get("k")
        assert isinstance(errors.ClientError("x"), ConnectionError)


def test_stopped_client_refuses_calls(sidecar: SidecarProcess) -> None:
    client = podcache.Client(sidecar.socket_path)
    assert client.ready()
    client.stop()
    with pytest.raises(errors.ClientError, match="stopped"):
        client.get("k")


def test_forked_child_opens_its_own_connection(client: podcache.Client, key: str) -> None:
    client.set(key, b"v")
    pid = os.fork()
    if pid == 0:  # the child: must not talk on the parent's pooled socket
        code = 1
        try:
            code = 0 if client.get(key) == b"v" and client.connects == 2 else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert client.get(key) == b"v"
    assert client.connects == 1

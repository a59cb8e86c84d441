"""The RESP socket answers like a real redis-server, command family by family.

Each test sends the same commands to the sidecar's RESP socket (memory and Redis
backends, a sidecar process each) and to a real redis-server on its own Unix socket,
and compares the parsed replies: values, integers, nulls, arrays, and error texts
byte for byte. Where podcache differs on purpose (every key has a TTL, one database,
PERSIST refused by default) the test says so and checks podcache's answer instead.

Aspects: strings (GET/SET and its options, SETNX/SETEX/PSETEX, GETDEL/GETEX,
MGET/MSET), counters, expiry and key commands, connection commands, transactions,
SCAN over this tenant's keys only, RESP3, DBSIZE, the tenant prefix kept invisible.
"""

from __future__ import annotations

from typing import Any

import redis

from tests.sidecar import resp_support as support
from tests.sidecar.resp_support import RawClient, norm, spawned

# The fixtures of resp_support, by assignment (pytest finds them in the module).
reference_socket = support.reference_socket
reference = support.reference
resp_socket = support.resp_socket
resp = support.resp
ns = support.ns


def same(resp: RawClient, reference: RawClient, script: list[list[Any]]) -> None:
    for command in script:
        ours, theirs = norm(resp.call(*command)), norm(reference.call(*command))
        assert ours == theirs, f"{command}: sidecar {ours!r}, redis-server {theirs!r}"


def test_strings(resp: RawClient, reference: RawClient, ns: str) -> None:
    a, b, c, d, e, m1, m2 = (ns + name for name in ("a", "b", "c", "d", "e", "m1", "m2"))
    same(
        resp,
        reference,
        [
            ["SET", a, "1"],
            ["GET", a],
            ["GET", ns + "missing"],
            ["SET", a, "2", "NX"],
            ["SET", a, "2", "XX"],
            ["GET", a],
            ["SET", b, "x", "XX"],
            ["GET", b],
            ["SET", a, "3", "GET"],
            ["SET", c, "3", "NX", "GET"],
            ["SET", c, "4", "NX", "GET"],
            ["SET", a, "v", "EX", "100"],
            ["TTL", a],
            ["SET", a, "w", "KEEPTTL"],
            ["TTL", a],
            ["GET", a],
            ["SET", a, "v", "EX", "0"],
            ["SET", a, "v", "PX", "-1"],
            ["SET", a, "v", "EX", "x"],
            ["SET", a, "v", "NX", "XX"],
            ["SET", a, "v", "EX", "1", "PX", "1"],
            ["SET", a, "v", "EX", "1", "KEEPTTL"],
            ["SET", a, "v", "FOO"],
            ["SET", a, "v", "EX"],
            ["SET", a],
            ["SETNX", d, "1"],
            ["SETNX", d, "2"],
            ["GET", d],
            ["SETEX", e, "100", "v"],
            ["TTL", e],
            ["SETEX", e, "0", "v"],
            ["SETEX", e, "x", "v"],
            ["PSETEX", e, "100000", "w"],
            ["GET", e],
            ["PSETEX", e, "-5", "w"],
            ["GETDEL", e],
            ["GETDEL", e],
            ["SET", a, "v", "EX", "100"],
            ["GETEX", a],
            ["GETEX", a, "EX", "200"],
            ["TTL", a],
            ["GETEX", a, "PX", "300000"],
            ["TTL", a],
            ["GETEX", a, "EX"],
            ["GETEX", a, "EX", "0"],
            ["GETEX", ns + "nope", "EX", "10"],
            ["MSET", m1, "1", m2, "2"],
            ["MGET", m1, m2, ns + "m3"],
            ["MSET", m1],
            ["MSET", m1, "1", m2],
            ["SET", a, b"bin\x00ary\r\nvalue"],
            ["GET", a],
        ],
    )


def test_counters(resp: RawClient, reference: RawClient, ns: str) -> None:
    n, big, s = ns + "n", ns + "big", ns + "s"
    same(
        resp,
        reference,
        [
            ["INCR", n],
            ["INCRBY", n, "10"],
            ["DECR", n],
            ["DECRBY", n, "3"],
            ["GET", n],
            ["INCRBY", n, "x"],
            ["INCRBY", n, "1.5"],
            ["INCRBY", n, " 1"],
            ["INCR"],
            ["SET", big, "9223372036854775807"],
            ["INCR", big],
            ["DECRBY", n, "-9223372036854775808"],
            ["SET", big, "-9223372036854775808"],
            ["DECR", big],
            ["SET", s, "abc"],
            ["INCR", s],
            ["SET", s, "007"],
            ["INCR", s],
            ["SET", s, "-0"],
            ["INCR", s],
            ["DECRBY", ns + "fresh", "-5"],
        ],
    )


def test_counters_keep_and_give_ttls(resp: RawClient, ns: str) -> None:
    # Redis: INCR keeps a key's TTL, and a new key has none; here a new key gets the
    # default TTL (5m in these sidecars), since every key has one.
    assert resp.call("INCR", ns + "new") == 1
    assert 299 <= resp.call("TTL", ns + "new") <= 300
    resp.call("SET", ns + "k", "1", "EX", "50")
    assert resp.call("INCRBY", ns + "k", "5") == 6
    assert 49 <= resp.call("TTL", ns + "k") <= 50


def test_expiry_and_keys(resp: RawClient, reference: RawClient, ns: str) -> None:
    x, y = ns + "x", ns + "y"
    same(
        resp,
        reference,
        [
            ["SET", x, "v", "EX", "100"],
            ["EXPIRE", x, "200"],
            ["TTL", x],
            ["EXPIRE", x, "50", "GT"],
            ["EXPIRE", x, "500", "GT"],
            ["TTL", x],
            ["EXPIRE", x, "100", "LT"],
            ["EXPIRE", x, "1000", "LT"],
            ["EXPIRE", x, "10", "NX"],
            ["EXPIRE", x, "150", "XX"],
            ["TTL", x],
            ["EXPIRE", x, "10", "NX", "XX"],
            ["EXPIRE", x, "10", "GT", "LT"],
            ["EXPIRE", x, "10", "FOO"],
            ["EXPIRE", x, "ten"],
            ["EXPIRE", ns + "missing", "10"],
            ["PEXPIRE", x, "300000"],
            ["TTL", x],
            ["TTL", ns + "missing"],
            ["PTTL", ns + "missing"],
            ["TYPE", x],
            ["TYPE", ns + "missing"],
            ["EXISTS", x, x, ns + "missing"],
            ["SET", y, "v", "EX", "100"],
            ["EXPIRE", y, "0"],
            ["GET", y],
            ["EXISTS", y],
            ["SET", y, "v", "EX", "100"],
            ["PEXPIRE", y, "-1"],
            ["GET", y],
            ["DEL", x, ns + "missing"],
            ["SET", y, "v"],
            ["UNLINK", y, y],
            ["DEL"],
            ["TTL"],
        ],
    )


def test_differences_on_purpose(resp: RawClient, ns: str) -> None:
    """A SET without TTL gets the default TTL; PERSIST is refused unless allowed
    (``test_resp_persist``); one database."""
    resp.call("SET", ns + "k", "v")
    assert 299 <= resp.call("TTL", ns + "k") <= 300
    assert str(resp.call("PERSIST", ns + "k")).startswith("ERR PERSIST is not allowed")
    assert str(resp.call("GETEX", ns + "k", "PERSIST")).startswith("ERR PERSIST is not allowed")
    assert str(resp.call("SELECT", "1")) == "ERR DB index is out of range"
    assert resp.call("SELECT", "0") == b"OK"


def test_limits_and_reserved_keys(resp: RawClient, ns: str) -> None:
    assert "limits.maxValueBytes is 4096" in str(resp.call("SET", ns + "k", b"x" * 4097))
    assert "limits.maxKeyBytes is 64" in str(resp.call("GET", "k" * 65))
    assert "reserved" in str(resp.call("SET", "podcache:lock:x", "1"))
    assert "reserved" in str(resp.call("GET", "podcache:leader:x"))
    assert "UTF-8" in str(resp.call("SET", b"\xff\xfe", "1"))
    assert "must not be empty" in str(resp.call("SET", "", "1"))
    assert resp.call("PING") == b"PONG"  # still usable


def test_connection_commands(resp: RawClient, reference: RawClient) -> None:
    same(
        resp,
        reference,
        [
            ["PING"],
            ["PING", "hi"],
            ["PING", "a", "b"],
            ["ECHO", "hi"],
            ["ECHO"],
            ["SELECT", "0"],
            ["SELECT", "x"],
            ["CLIENT", "GETNAME"],
            ["CLIENT", "SETNAME", "app-1"],
            ["CLIENT", "GETNAME"],
            ["CLIENT", "SETNAME", "a b"],
            ["CLIENT", "FOO"],
            ["CLIENT"],
            ["FOO", "a", "b"],
            ["foo"],
            ["FOO", "x" * 200, "y"],
            ["GET"],
            ["HELLO", "4"],
            ["HELLO", "x"],
            ["AUTH", "secret"],
            ["CONFIG", "GET", "nosuchparam"],
            ["CONFIG", "FOO"],
            ["CONFIG", "GET"],
        ],
    )
    assert isinstance(resp.call("CLIENT", "ID"), int)
    hello = resp.call("HELLO", "2")
    assert hello[:6] == [b"server", b"redis", b"version", b"7.0.0", b"proto", 2]


def test_transactions(resp: RawClient, reference: RawClient, ns: str) -> None:
    k, s = ns + "k", ns + "s"
    same(
        resp,
        reference,
        [
            ["MULTI"],
            ["SET", k, "1"],
            ["INCR", k],
            ["GET", k],
            ["EXEC"],
            ["EXEC"],
            ["DISCARD"],
            ["MULTI"],
            ["MULTI"],
            ["SET", k, "9"],
            ["DISCARD"],
            ["GET", k],
            ["MULTI"],
            ["FOO"],
            ["SET", k, "1"],
            ["EXEC"],
            ["MULTI"],
            ["GET"],
            ["EXEC"],
            ["MULTI"],
            ["SET", s, "abc"],
            ["INCR", s],
            ["EXEC"],
            ["MULTI"],
            ["WATCH", k],
            ["EXEC"],
        ],
    )


def test_pipeline_of_many_commands_in_one_write(resp: RawClient, ns: str) -> None:
    from tests.sidecar.resp_support import encode

    count = 10_000
    batch = b"".join(encode("SET", f"{ns}{i}", str(i)) for i in range(count))
    batch += b"".join(encode("GET", f"{ns}{i}") for i in range(count))
    resp.send(batch)
    replies = [resp.read() for _ in range(2 * count)]
    assert replies[:count] == [b"OK"] * count
    assert replies[count:] == [str(i).encode() for i in range(count)]


def test_scan_sees_this_tenants_keys_only(resp_socket: str, ns: str) -> None:
    client = redis.Redis(unix_socket_path=resp_socket)
    try:
        keys = {f"{ns}{i}" for i in range(25)}
        for key in keys:
            client.set(key, "v")
        found = list(client.scan_iter(match=ns + "*", count=7))
        assert sorted(key.decode() for key in found) == sorted(keys)
        assert len(found) == len(set(found))  # each once
        # Lock keys live under the same prefix; SCAN never shows them.
        assert not [key for key in client.scan_iter(count=1000) if key.startswith(b"podcache:")]
        assert sorted(k.decode() for k in client.scan_iter(match=ns + "1?")) == sorted(
            f"{ns}{i}" for i in range(10, 20)
        )
    finally:
        client.close()


def test_scan_errors(resp: RawClient, reference: RawClient) -> None:
    same(
        resp,
        reference,
        [
            ["SCAN", "x"],
            ["SCAN", "0", "COUNT", "0"],
            ["SCAN", "0", "MATCH"],
            ["SCAN", "0", "FOO", "x"],
            ["SCAN"],
        ],
    )


def test_resp3(resp: RawClient, reference: RawClient, ns: str) -> None:
    ours, theirs = resp.call("HELLO", "3"), reference.call("HELLO", "3")
    assert isinstance(ours, dict)
    assert isinstance(theirs, dict)
    assert set(ours) == set(theirs)
    assert ours[b"proto"] == 3
    same(
        resp,
        reference,
        [
            ["GET", ns + "missing"],
            ["SET", ns + "a", "1", "NX"],
            ["SET", ns + "a", "1", "NX"],
            ["MGET", ns + "a", ns + "missing"],
            ["CLIENT", "GETNAME"],
            ["GETDEL", ns + "missing"],
            ["PING"],
        ],
    )


def test_dbsize_counts_this_tenant(redis_session_url: str) -> None:
    for backend in ("memory", "redis"):
        from tests.sidecar.resp_support import backend_config

        with spawned(backend_config(backend, redis_session_url)) as (_, path):
            client = redis.Redis(unix_socket_path=path)
            try:
                assert client.dbsize() == 0
                client.mset({"a": 1, "b": 2, "c": 3})
                assert client.dbsize() == 3
                # The prefix never shows: keys come back as the client wrote them.
                assert sorted(client.scan_iter()) == [b"a", b"b", b"c"]
            finally:
                client.close()

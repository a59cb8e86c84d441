"""The clients' sans-I/O layer, without a server.

Aspects: key percent-encoding (one path segment for any UTF-8), socket path
resolution (argument, env, default), ttl/wait conversion and local refusal of bad
values, mapping of every documented error code (and unknown ones, and non-JSON
bodies) to exception classes, conditional writes' yes/no answers, parsing of
leases, leader statuses and watch lines, the lock lease clock, the CLI's ``--``
split, and that the sync client and the CLI never import aiohttp.
"""

from __future__ import annotations

import json
import subprocess
import sys
from urllib.parse import unquote

import pytest

from podcache import cli, errors
from podcache.client import locking, models, protocol


def reply(status: int, payload: object = None, *, headers: dict[str, str] | None = None,
          body: bytes | None = None) -> protocol.Reply:
    if body is None:
        body = json.dumps(payload).encode() if payload is not None else b""
    return protocol.Reply(status=status, headers=headers or {}, body=body)


# -- keys ------------------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["a/b", "100%", "what?x=1#frag", "sp ace", "ключ", "🙂", "..",
                                 "a%2Fb", "+&=;", "~tilde_-."])
def test_segment_encodes_any_utf8_as_one_segment(key: str) -> None:
    encoded = protocol.segment(key)
    assert not set(encoded) & set("/?# ")
    assert unquote(encoded, errors="strict") == key


def test_segment_keeps_unreserved_characters() -> None:
    assert protocol.segment("Az09-._~") == "Az09-._~"


@pytest.mark.parametrize("key", ["", "\ud800"])
def test_segment_refuses_empty_and_non_utf8(key: str) -> None:
    with pytest.raises(errors.InvalidKey):
        protocol.segment(key)


def test_segment_refuses_non_strings() -> None:
    with pytest.raises(errors.InvalidKey, match="must be a string"):
        protocol.segment(b"bytes")  # type: ignore[arg-type]


def test_cache_calls_put_the_key_in_the_path() -> None:
    call = protocol.get("a/b c")
    assert (call.method, call.path) == ("GET", "/v1/cache/a%2Fb%20c")


# -- socket path -----------------------------------------------------------------------------

def test_socket_from_argument_then_env_then_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PODCACHE_SOCKET", "/env/cache.sock")
    assert protocol.resolve_socket("/arg.sock") == "/arg.sock"
    assert protocol.resolve_socket() == "/env/cache.sock"
    monkeypatch.delenv("PODCACHE_SOCKET")
    assert protocol.resolve_socket() == "/var/run/podcache/cache.sock"


# -- ttl -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("ttl", "query"), [(30, "ttl=30s"), (0.2, "ttl=0.2s"), ("5m", "ttl=300s"),
                                            ("1h30m", "ttl=5400s"), (0.0004, "ttl=0.0004s")])
def test_ttl_is_sent_as_a_duration(ttl: float | str, query: str) -> None:
    assert protocol.put("k", b"v", ttl=ttl).path == f"/v1/cache/k?{query}"


def test_zero_ttl_leaves_the_default_to_the_sidecar() -> None:
    assert protocol.put("k", b"v", ttl=0).path == "/v1/cache/k"


@pytest.mark.parametrize("ttl", [-1, "-1s", "soon", float("nan"), True])
def test_bad_ttl_is_refused_before_sending(ttl: object) -> None:
    with pytest.raises(errors.InvalidTTL):
        protocol.put("k", b"v", ttl=ttl)  # type: ignore[arg-type]


def test_values_must_be_bytes() -> None:
    assert protocol.put("k", bytearray(b"v")).body == b"v"
    with pytest.raises(errors.InvalidValue):
        protocol.put("k", "text")  # type: ignore[arg-type]


def test_lock_acquire_body_and_blocking_time() -> None:
    call = protocol.acquire("job", ttl=10, wait="1500ms")
    assert json.loads(call.body or b"") == {"ttl": "10s", "wait": "1.5s"}
    assert call.blocks_for == 1.5
    assert protocol.refresh("a/b", token="t", ttl=0.3).path == "/v1/locks/a%2Fb/refresh"


# -- errors ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("status", "code", "error_class"), [
    (404, "not_found", errors.CacheMiss),
    (400, "invalid_key", errors.InvalidKey),
    (400, "invalid_ttl", errors.InvalidTTL),
    (400, "invalid_value", errors.InvalidValue),
    (413, "too_large", errors.ValueTooLarge),
    (503, "backend_unavailable", errors.BackendUnavailable),
    (409, "locked", errors.LockNotAcquired),
    (409, "not_owner", errors.NotOwner),
])
def test_error_codes_map_to_their_classes(status: int, code: str,
                                          error_class: type[Exception]) -> None:
    error = protocol.error_from(reply(status, {"error": code, "message": "why"}), lock_name="job")
    assert type(error) is error_class
    assert str(error) == "why"


def test_lock_errors_name_the_lock() -> None:
    with pytest.raises(errors.NotOwner) as caught:
        protocol.release("job", token="t").interpret(reply(409, {"error": "not_owner",
                                                                 "message": "no"}))
    assert caught.value.lock_name == "job"


def test_backend_unavailable_carries_retry_after() -> None:
    error = protocol.error_from(reply(503, {"error": "backend_unavailable", "message": "down"},
                                      headers={"retry-after": "2"}))
    assert isinstance(error, errors.BackendUnavailable)
    assert error.retry_after == 2.0


def test_unknown_codes_become_server_errors() -> None:
    error = protocol.error_from(reply(404, {"error": "unknown_election", "message": "nope"}))
    assert isinstance(error, errors.ServerError)
    assert (error.code, error.status, str(error)) == ("unknown_election", 404, "nope")


def test_non_json_error_bodies_become_server_errors() -> None:
    error = protocol.error_from(reply(502, body=b"Bad Gateway"))
    assert isinstance(error, errors.ServerError)
    assert error.code == "http_502"
    assert "Bad Gateway" in str(error)


def test_a_miss_is_a_key_error_too() -> None:
    with pytest.raises(KeyError):
        protocol.get("k").interpret(reply(404, {"error": "not_found", "message": "k"}))


# -- conditional writes ----------------------------------------------------------------------

def test_set_if_absent_answers() -> None:
    call = protocol.set_if_absent("k", b"v")
    assert call.path == "/v1/cache/k?ifAbsent=true"
    assert call.interpret(reply(201)) is True
    assert call.interpret(reply(409, {"error": "exists", "message": "k"})) is False
    with pytest.raises(errors.ServerError):
        call.interpret(reply(409, {"error": "something_else", "message": "?"}))


def test_compare_and_set_answers() -> None:
    call = protocol.compare_and_set("k", b"v", etag="abc")
    assert call.headers["If-Match"] == '"abc"'
    assert call.interpret(reply(204)) is True
    assert call.interpret(reply(412, {"error": "precondition_failed", "message": "x"})) is False
    assert call.interpret(reply(404, {"error": "not_found", "message": "x"})) is False
    assert protocol.compare_and_set("k", b"v", etag='"q"').headers["If-Match"] == '"q"'


def test_get_with_etag_needs_an_etag() -> None:
    call = protocol.get_with_etag("k")
    assert call.interpret(reply(200, body=b"v", headers={"etag": '"e"'})) == (b"v", '"e"')
    with pytest.raises(errors.ServerError, match="no ETag"):
        call.interpret(reply(200, body=b"v"))


# -- models ----------------------------------------------------------------------------------

def test_lease_parsing() -> None:
    lease = protocol.acquire("job").interpret(reply(200, {"token": "t", "fence": 7, "ttl_ms": 300}))
    assert lease == models.Lease(name="job", token="t", fence=7, ttl=0.3)
    with pytest.raises(errors.ServerError, match="malformed"):
        protocol.acquire("job").interpret(reply(200, {"token": "t"}))
    with pytest.raises(errors.ServerError, match="malformed"):
        protocol.acquire("job").interpret(reply(200, body=b"not json"))


def test_leader_status_and_watch_lines() -> None:
    status = protocol.parse_watch_line(b'{"leader": true, "holder": "pod-a", "term": 3}\n')
    assert status == models.LeaderStatus(leader=True, holder="pod-a", term=3)
    assert protocol.parse_watch_line(b"\n") is None  # heartbeat
    assert protocol.parse_watch_line(b'{"leader": false, "holder": null, "term": 0}') == \
        models.LeaderStatus(leader=False, holder=None, term=0)
    with pytest.raises(errors.ServerError):
        protocol.parse_watch_line(b'{"leader": "yes"}')


def test_probes() -> None:
    assert protocol.ready().interpret(reply(200, {"status": "ready"})) is True
    assert protocol.ready().interpret(reply(503, {"error": "backend_unavailable"})) is False


# -- lease clock -----------------------------------------------------------------------------

def test_lease_clock_never_outlives_the_lease() -> None:
    state = locking.LeaseState("job")
    state.granted(models.Lease(name="job", token="t", fence=1, ttl=0.9), sent_at=100.0)
    assert state.expires_at == pytest.approx(100.9)
    assert state.refresh_delay() == pytest.approx(0.3)
    assert state.retry_delay(100.0) == pytest.approx(0.09)
    assert state.retry_delay(100.88) == pytest.approx(0.02)  # never sleeps past the expiry
    assert state.request_timeout(100.5, 10.0) == pytest.approx(0.4)


# -- CLI -------------------------------------------------------------------------------------

def test_cli_splits_the_locked_command_off() -> None:
    argv = ["--socket", "s", "lock", "job", "--ttl", "2s", "--", "sh", "-c", "echo --ttl"]
    assert cli._split_command(argv) == (["--socket", "s", "lock", "job", "--ttl", "2s"],
                                        ["sh", "-c", "echo --ttl"])
    assert cli._split_command(["set", "k", "--", "-v"]) == (["set", "k", "--", "-v"], [])


def test_sync_client_and_cli_do_not_import_heavy_modules() -> None:
    code = ("import sys, podcache, podcache.cli; podcache.Client('/nonexistent');"
            "heavy = ('aiohttp', 'redis', 'prometheus_client', 'yaml', 'kopf', 'asyncio');"
            "print(','.join(m for m in heavy if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == ""

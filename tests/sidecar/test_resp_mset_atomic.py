"""MSET through the Redis-protocol socket is atomic on the Redis backend (issue 12): a
client reading the same Redis directly never sees some pairs of one MSET stored and
others not. Before, the sidecar sent one SET per pair, and a reader between two of them
saw a mix. Each pair keeps the default TTL."""

from __future__ import annotations

import threading

import redis

from tests.sidecar.resp_support import RawClient, backend_config, spawned

ROUNDS = 400


def test_a_reader_never_sees_half_an_mset(redis_session_url: str) -> None:
    config = backend_config("redis", redis_session_url)
    prefix = config["config"]["keyPrefix"]
    keys = [f"{prefix}m{i}" for i in range(4)]
    direct = redis.Redis.from_url(redis_session_url)
    mixed: list[list[bytes | None]] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            values = direct.mget(keys)
            if len(set(values)) > 1 and None not in values:
                mixed.append(values)

    with spawned(config) as (_, path):
        client = RawClient(path)
        assert client.call("MSET", *[a for i in range(4) for a in (f"m{i}", "0")]) == b"OK"
        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            for round_ in range(1, ROUNDS + 1):
                pairs = [a for i in range(4) for a in (f"m{i}", str(round_))]
                assert client.call("MSET", *pairs) == b"OK"
        finally:
            done.set()
            reader.join(timeout=10)
        ttls = [direct.pttl(key) for key in keys]
        client.close()
    assert not mixed, f"{len(mixed)} reads saw a partial MSET, e.g. {mixed[0]}"
    assert all(0 < ttl <= 300_000 for ttl in ttls), ttls  # the default TTL, 5m

"""Election leases on Redis: atomic campaign, renew and resign scripts, pub/sub notices.

Keys of one election share a Cluster hash tag, so every script touches one slot:

- ``<prefix>podcache:leader:{<name>}``        hash {holder, nonce, term, restarted}; expires
  with the lease (``restarted``: see ``LeaseRecord.term_restarted``)
- ``<prefix>podcache:leader:{<name>}:term``   term counter {n, epoch}; never expires, only grows
- channel ``<prefix>podcache:leader:{<name>}:events``  "elected" / "resigned" notices

A lease or term key of another type (written outside podcache) is replaced, never left
to fail every campaign with WRONGTYPE, and logged at ERROR (see
``redis_topologies.MONOTONIC_COUNTER_LUA`` for why the terms still only grow).

The notices only make followers react sooner; correctness never depends on them.
A follower also re-checks after ``retry_period`` and when the holder's lease is due
to expire. Every election of a backend listens on ONE shared pub/sub connection
(``podcache.backends.redis_notices.NoticeHub``, which reconnects by itself), so
joining elections never takes connections from the cache.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

from podcache.backends import redis_notices, redis_topologies
from podcache.election.store import LeaseRecord, LeaseStore
from podcache.locks.redis import bounded, hash_tag

logger = logging.getLogger(__name__)


def election_keys(prefix: str, name: str) -> tuple[str, str, str]:
    """Lease hash, term counter and notice channel of election ``name``."""
    base = f"{prefix}podcache:leader:{{{hash_tag(name)}}}"
    return base, f"{base}:term", f"{base}:events"


def _text(value: Any) -> str | None:
    if value is None or value is False:
        return None
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)


def _record(holder: Any, term: Any, pttl: Any) -> LeaseRecord:
    pttl = int(pttl)
    expires_in: float | None = None  # -2: no lease
    if pttl != -2:
        expires_in = math.inf if pttl == -1 else pttl / 1000
    return LeaseRecord(holder=_text(holder), term=int(term), expires_in=expires_in)


class RedisLeaseStore(LeaseStore):
    """The lease of election ``name`` on Redis (standalone, Sentinel or Cluster)."""

    # Terms come from the failover-safe counter (redis_topologies.MONOTONIC_COUNTER_LUA):
    # by one per change of leader, and never a term already used even when a promoted
    # replica or a restarted Redis lost the latest writes (it jumps ahead instead).
    CAMPAIGN_LUA = redis_topologies.MONOTONIC_COUNTER_LUA + """
-- KEYS[1] - lease hash {holder, nonce, term}, expires with the lease
-- KEYS[2] - term counter (hash {n, epoch}), never expires
-- ARGV[1] - candidate identity
-- ARGV[2] - candidate nonce (fresh for every campaign)
-- ARGV[3] - lease duration in milliseconds
-- ARGV[4] - notice channel
-- return {1, holder, term, pttl, damage, restarted} when the candidate became leader
--        (term + 1) or already holds the lease under this nonce (an earlier reply was
--        lost; the lease is extended), {0, holder, term, pttl, damage, ''} when someone
--        else holds the lease; damage names keys of another type replaced ('' if none),
--        restarted why the term counter started afresh for this lease ('' if it did not;
--        kept in the lease so that the idempotent path reports it too)
foreign_key(KEYS[1], 'hash')  -- only a hash can be a lease: anything else is not one
if redis.call('EXISTS', KEYS[1]) == 0 then
  local term = next_counter(KEYS[2])
  redis.call('HSET', KEYS[1], 'holder', ARGV[1], 'nonce', ARGV[2], 'term', term,
             'restarted', restarted)
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  redis.call('PUBLISH', ARGV[4], 'elected')
  return {1, ARGV[1], term, tonumber(ARGV[3]), damage, restarted}
end
if redis.call('HGET', KEYS[1], 'nonce') == ARGV[2] then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {1, ARGV[1], tonumber(redis.call('HGET', KEYS[1], 'term')), tonumber(ARGV[3]), damage,
          redis.call('HGET', KEYS[1], 'restarted') or ''}
end
local term = current_counter(KEYS[2])
return {0, redis.call('HGET', KEYS[1], 'holder'), term, redis.call('PTTL', KEYS[1]), damage, ''}
"""

    RENEW_LUA = """
-- KEYS[1] - lease hash
-- ARGV[1] - the leader's nonce
-- ARGV[2] - lease duration in milliseconds
-- return the term when extended; nil when the nonce no longer holds the lease
local lease = redis.call('TYPE', KEYS[1])['ok'] == 'hash'
if lease and redis.call('HGET', KEYS[1], 'nonce') == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return tonumber(redis.call('HGET', KEYS[1], 'term'))
end
return false
"""

    RESIGN_LUA = """
-- KEYS[1] - lease hash
-- ARGV[1] - the leader's nonce
-- ARGV[2] - notice channel
-- return 1 when resigned (watchers notified); 0 when the nonce does not hold the lease
local lease = redis.call('TYPE', KEYS[1])['ok'] == 'hash'
if lease and redis.call('HGET', KEYS[1], 'nonce') == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], 'resigned')
  return 1
end
return 0
"""

    READ_LUA = redis_topologies.MONOTONIC_COUNTER_LUA + """
-- KEYS[1] - lease hash
-- KEYS[2] - term counter
-- return {holder or nil, term, pttl of the lease (-2 when vacant), damage}
local holder = false
if redis.call('TYPE', KEYS[1])['ok'] == 'hash' then
  holder = redis.call('HGET', KEYS[1], 'holder')
end
local term = current_counter(KEYS[2])
return {holder, term, redis.call('PTTL', KEYS[1]), damage}
"""

    def __init__(
        self,
        client: Any,
        *,
        name: str,
        key_prefix: str = "",
        operation_timeout: float = 1.0,
        notices: redis_notices.NoticeHub | None = None,
    ) -> None:
        """``client`` is a ``redis.asyncio`` Redis or RedisCluster; we never close it.

        ``notices`` is the backend's shared pub/sub connection; without one the store
        makes a hub of its own (one connection for this election alone).
        """
        self.name = name
        self._client = client
        self._lease_key, self._term_key, self._channel = election_keys(key_prefix, name)
        self._timeout = operation_timeout
        self._campaign = client.register_script(self.CAMPAIGN_LUA)
        self._renew = client.register_script(self.RENEW_LUA)
        self._resign = client.register_script(self.RESIGN_LUA)
        self._read = client.register_script(self.READ_LUA)
        self._owns_notices = notices is None
        self._notices = notices or redis_notices.NoticeHub(client, timeout=operation_timeout)
        self._subscription: redis_notices.Subscription | None = None

    async def try_acquire(
        self, *, identity: str, nonce: str, duration: float,
    ) -> tuple[bool, LeaseRecord]:
        call = self._campaign(keys=(self._lease_key, self._term_key),
                              args=(identity, nonce, _ms(duration), self._channel))
        won, holder, term, pttl, damage, restarted = await bounded(
            call, seconds=self._timeout, what="campaign")
        self._report_damage(damage)
        record = _record(holder, term, pttl)
        return bool(int(won)), dataclasses.replace(record, term_restarted=_text(restarted) or "")

    async def renew(self, *, nonce: str, duration: float) -> int | None:
        call = self._renew(keys=(self._lease_key,), args=(nonce, _ms(duration)))
        term = await bounded(call, seconds=self._timeout, what="renew")
        return None if term is None else int(term)

    async def resign(self, *, nonce: str) -> bool:
        call = self._resign(keys=(self._lease_key,), args=(nonce, self._channel))
        return bool(int(await bounded(call, seconds=self._timeout, what="resign")))

    async def read(self) -> LeaseRecord:
        call = self._read(keys=(self._lease_key, self._term_key))
        holder, term, pttl, damage = await bounded(call, seconds=self._timeout, what="read")
        self._report_damage(damage)
        return _record(holder, term, pttl)

    def _report_damage(self, damage: bytes | str) -> None:
        if damage:
            text = damage.decode("utf-8", "replace") if isinstance(damage, bytes) else damage
            logger.error(
                "election %r: %s, which podcache never writes (another tenant with an"
                " overlapping keyPrefix, or a hand-made key?); replaced: terms keep increasing",
                self.name, text,
            )

    async def open(self) -> None:
        if self._subscription is None:
            self._subscription = await self._notices.subscribe(self._channel)

    async def wait_for_change(self, *, at_most: float) -> None:
        await self.open()  # a no-op once subscribed; the hub keeps the subscription alive
        assert self._subscription is not None
        await self._subscription.wait(at_most=at_most)

    async def close(self) -> None:
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            await subscription.close()
        if self._owns_notices:
            await self._notices.stop()


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))

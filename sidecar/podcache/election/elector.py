"""The elector: campaigns for a named election, renews while leading, resigns on stop.

The algorithm is client-go's leader election, on a ``LeaseStore``:

- A follower tries to take the lease every ``retry_period`` and also right when the
  holder's lease is due to expire or a "resigned" notice arrives, so a successor is
  elected within milliseconds of a resignation.
- A leader renews every ``retry_period`` with an atomic extend-if-still-ours.
- If renewals keep failing until ``renew_deadline`` after the last successful one,
  the leader steps down locally (``is_leader`` False, ``on_revoked``) BEFORE its
  lease can run out (``renew_deadline < lease_duration``) and pass to someone else.
  The deadline is measured from the moment the last successful renewal was *sent*,
  so it holds however late the reply came.
- ``stop()`` resigns, so a successor takes over at once instead of after the lease.

Leases lost with the store (fencing by time). The above keeps one leader only while
the store keeps its leases: a lease normally ends by resignation or by running out,
and its leader has stepped down locally before that (``renew_deadline``). A FLUSHALL,
a Redis restarted empty or a failover to a replica that missed writes ends a lease
early, while its leader still believes it leads until its next renewal fails (up to
``retry_period``; ``renew_deadline`` if it cannot reach Redis). A follower that took
the vacant lease at once would lead beside it. So the *acquiring* side waits the old
lease out, as client-go's candidates do: a campaign that wins a lease whose term counter
was started afresh (``LeaseRecord.term_restarted``) holds and renews that lease but
claims leadership (``is_leader``, ``state``, ``on_elected``, metrics) only one
``lease_duration`` after the winning reply arrived. The old leader's last successful
renewal was sent before that reply, so by then it has stepped down locally.
The holder side cannot do it alone: it learns that its lease is gone only by asking
Redis, and a leadership answer cannot wait for a round trip.

When the wait applies: the counter came back from another server epoch (a restart or
failover) or held a foreign type, or it is absent while this elector had already seen
a term of the election (the keys were lost). An absent counter seen by an elector that
never saw the election is taken as a new election and led at once, like a first
Kubernetes Lease: one store that cannot tell "never used" from "lost" would otherwise
delay every new election by a lease. The window left: an elector *joining* right after
the loss, within the old leader's last ``retry_period``. All candidates of an election
are assumed to use the same timings (as in client-go).

BEWARE: leadership is a lease, not a lock on the world. A leader paused longer than
``lease_duration - renew_deadline`` (a stopped VM) can still act after a successor
took over; protect writes with the ``term`` as a fencing token where that matters.

Callbacks take no arguments and may be plain functions (called inline: keep them
quick) or coroutine functions. An async ``on_elected`` may run for the whole
leadership: it is cancelled when leadership ends, before ``on_revoked`` is called.
``on_revoked`` is called only after ``on_elected`` (only if it had been leader).
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from prometheus_client import CollectorRegistry

from podcache import tasks
from podcache.election import metrics as election_metrics
from podcache.election.store import LeaseRecord, LeaseStore
from podcache.errors import BackendUnavailable, ConfigError

logger = logging.getLogger(__name__)

Callback = Callable[[], Any]
"""No arguments; may return an awaitable (a coroutine function), which is then run as a task."""

MAX_NAME_BYTES = 1024
"""Election names and identities travel in URL paths and Redis keys."""

_EXPIRY_SLACK = 0.005
"""Retry this long after the holder's lease should have lapsed (timers fire a hair early)."""

_MAX_STALE = 4
"""Stale nonces remembered for resignation (see ``_step_down``)."""

_CALLBACK_GRACE = 5.0
"""How long ``stop()`` waits for running callbacks (e.g. an async on_revoked) to finish."""


@dataclasses.dataclass(frozen=True)
class LeaderState:
    """One observation of an election, as the socket API's leader endpoints report it."""

    leader: bool
    """Whether this elector leads."""
    holder: str | None
    """Identity of the leader, None when vacant or unknown (e.g. right after stepping down)."""
    term: int
    """Term of that leader; grows by one on every change of leader (0: never held)."""


def _check_text(value: object, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(field, f"must be a non-empty string, got {value!r}")
    if len(value.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise ConfigError(field, f"must be at most {MAX_NAME_BYTES} bytes")
    return value


def _check_seconds(value: object, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(field, f"must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(field, f"must be a finite number of seconds > 0, got {value!r}")
    return float(value)


def check_timing(
    *, lease_duration: float, renew_deadline: float, retry_period: float,
) -> tuple[float, float, float]:
    """Validate the three durations and their order; return them as floats."""
    lease = _check_seconds(lease_duration, "lease_duration")
    deadline = _check_seconds(renew_deadline, "renew_deadline")
    retry = _check_seconds(retry_period, "retry_period")
    if deadline >= lease:
        raise ConfigError("renew_deadline", f"must be shorter than lease_duration ({deadline}s >= "
                          f"{lease}s): a leader must step down before its lease can pass on")
    if retry >= deadline:
        raise ConfigError("retry_period", f"must be shorter than renew_deadline ({retry}s >= "
                          f"{deadline}s): a leader must get to retry a failed renewal")
    return lease, deadline, retry


def _new_nonce() -> str:
    return secrets.token_hex(16)


class Elector:
    """One candidate in election ``name``; see the module docstring."""

    def __init__(
        self,
        store: LeaseStore,
        *,
        identity: str,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        on_elected: Callback | None = None,
        on_revoked: Callback | None = None,
        registry: CollectorRegistry | None = None,
        namespace: str = "lab",
    ) -> None:
        self.name = _check_text(store.name, "name")
        self.identity = _check_text(identity, "identity")
        self.lease_duration, self.renew_deadline, self.retry_period = check_timing(
            lease_duration=lease_duration, renew_deadline=renew_deadline, retry_period=retry_period,
        )
        for field, callback in (("on_elected", on_elected), ("on_revoked", on_revoked)):
            if callback is not None and not callable(callback):
                raise ConfigError(field, f"must be callable, got {callback!r}")
        self._store = store
        self._on_elected = on_elected
        self._on_revoked = on_revoked
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self._metrics = election_metrics.ElectionMetrics.of(self.registry, namespace=namespace)
        self._metrics.prepare(self.name)

        self._leader = False
        self._holder: str | None = None
        self._term = 0
        self._nonce = _new_nonce()
        self._stale_nonces: list[str] = []
        """Nonces of leases that may linger after we stepped down; resigned when possible."""
        self._maybe_holding = False
        """A campaign got no answer (timeout, cancellation): the store may hold a lease under
        our nonce that we never saw. Campaigns are idempotent per nonce, so the next one
        with the same nonce claims it; a stop resigns it."""
        self._campaign_failing = False
        self._claim_at: float | None = None
        """Set while we hold a lease but wait out a lease that may have been lost before
        claiming leadership (monotonic time to claim at; see the module docstring)."""
        self._last_renew = 0.0
        self._last_attempt = 0.0
        self._resume_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self._elected_task: asyncio.Future[Any] | None = None
        self._callback_tasks: set[asyncio.Future[Any]] = set()

        self._state = LeaderState(leader=False, holder=None, term=0)
        self._version = 0
        self._changed = asyncio.Event()
        self._closed = False

    # -- observation ---------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        """Whether we lead *now*: also False once the renew deadline has passed, even
        before the campaign loop has run to step down (after a process pause)."""
        return self._leader and time.monotonic() < self._last_renew + self.renew_deadline

    @property
    def holder(self) -> str | None:
        """The leader's identity as last seen (None: vacant or not known yet)."""
        return self._holder

    @property
    def term(self) -> int:
        """The leader's term as last seen."""
        return self._term

    @property
    def state(self) -> LeaderState:
        """The last observed state, with ``leader`` checked against the renew deadline now.

        A process resumed after a pause longer than the renew deadline must not report
        itself leader while another may hold the lease: the campaign loop steps down
        only when it next runs, which may be after this answer is served.
        """
        state = self._state
        if state.leader and not self.is_leader:
            return LeaderState(leader=False, holder=None, term=state.term)
        return state

    @property
    def version(self) -> int:
        """Grows on every change of ``state``; pass it to ``wait_for_change``."""
        return self._version

    @property
    def running(self) -> bool:
        return self._task is not None

    async def wait_for_change(self, last_version: int) -> tuple[int, LeaderState]:
        """Wait until ``version`` differs from ``last_version`` (or the elector stops)."""
        while self._version == last_version and not self._closed:
            await self._changed.wait()
        return self._version, self._state

    async def subscribe(self) -> AsyncIterator[LeaderState]:
        """The current state, then each change; ends when the elector stops.

        Changes that happen faster than the consumer reads are coalesced: it always
        gets the latest state, never a stale backlog.
        """
        version = -1
        while True:
            new_version, state = await self.wait_for_change(version)
            if new_version == version:  # closed, nothing new
                return
            version = new_version
            yield state
            if self._closed and self._version == version:
                return

    async def read_state(self) -> LeaderState:
        """The holder and term as the store has them now (works without ``start``)."""
        record = await self._store.read()
        if not self._leader:
            self._observe(record)
        leading = self.is_leader and record.holder == self.identity
        return LeaderState(leader=leading, holder=record.holder, term=record.term)

    def forget_metrics(self) -> None:
        """Remove this election's metric series (``stop()`` first): for an election left
        for good, so its label set does not stay in every scrape."""
        if self._task is not None:
            raise RuntimeError(f"election {self.name}: stop() the elector before forgetting it")
        self._metrics.forget(self.name)

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Join the election (campaign in the background). Idempotent."""
        if self._task is not None:
            return
        self._closed = False
        await self._store.open()
        self._task = asyncio.create_task(self._campaign(), name=f"podcache-elector:{self.name}")

    async def stop(self, *, resign: bool = True) -> None:
        """Leave the election: step down, let the callbacks finish, then resign.

        The order matters: our work (an async ``on_elected``) is cancelled and
        ``on_revoked`` has run before the lease is handed over, so a successor never
        overlaps with us. ``resign=False`` leaves the lease to run out, as a crashed
        process would (client-go's ``ReleaseOnCancel=false``).
        """
        task, self._task = self._task, None
        if task is None:
            return
        await _cancel(task)
        self._step_down("stopped", lingering=True)
        await self._settle_callbacks()
        if resign:
            await self._release_stale_lease(quiet=False)
        self._closed = True
        self._bump()
        await self._store.close()

    async def resign(self) -> bool:
        """Hand leadership over: step down, resign, campaign again after one retry period.

        Returns False (and does nothing) when neither leading nor holding a lease
        while waiting to claim it (see the module docstring).
        """
        if not (self._leader or self._claim_at is not None) or self._task is None:
            return False
        task, self._task = self._task, None
        await _cancel(task)
        self._step_down("resigned", lingering=True)
        await self._settle_callbacks()
        await self._release_stale_lease(quiet=False)
        self._resume_at = time.monotonic() + self.retry_period  # let the others win first
        self._task = asyncio.create_task(self._campaign(), name=f"podcache-elector:{self.name}")
        return True

    # -- the campaign loop ---------------------------------------------------------------

    async def _campaign(self) -> None:
        while True:
            try:
                if self._leader or self._claim_at is not None:
                    await self._lead_once()
                else:
                    await self._follow_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must not end the campaign; the deadline still holds
                logger.exception("election %s: unexpected error in the campaign loop", self.name)
                await asyncio.sleep(self.retry_period)

    async def _follow_once(self) -> None:
        now = time.monotonic()
        if now < self._resume_at:
            await asyncio.sleep(self._resume_at - now)
            return
        await self._release_stale_lease(quiet=True)
        sent = time.monotonic()
        self._maybe_holding = True
        try:
            won, record = await self._store.try_acquire(
                identity=self.identity, nonce=self._nonce, duration=self.lease_duration,
            )
        except BackendUnavailable as exc:
            # Once per outage at warning level: a follower retries every retry_period.
            log = logger.debug if self._campaign_failing else logger.warning
            log("election %s: cannot campaign: %s", self.name, exc)
            self._campaign_failing = True
            await asyncio.sleep(self.retry_period)
            return
        if self._campaign_failing:
            logger.info("election %s: campaigning again", self.name)
            self._campaign_failing = False
        self._maybe_holding = False
        if won:
            if self._must_wait_out(record):
                self._hold(term=record.term, renewed_at=sent, reason=record.term_restarted)
            else:
                self._elected(term=record.term, renewed_at=sent)
            return
        self._observe(record)
        wait = self.retry_period
        if record.expires_in is not None:
            wait = min(wait, record.expires_in + _EXPIRY_SLACK)
        await self._store.wait_for_change(at_most=wait)

    async def _lead_once(self) -> None:
        now = time.monotonic()
        deadline = self._last_renew + self.renew_deadline
        if now >= deadline:
            logger.warning("election %s: no successful renewal for %.3gs; stepping down",
                           self.name, now - self._last_renew)
            self._step_down("deadline", lingering=True)
            return
        if self._claim_at is not None and now >= self._claim_at:
            self._claim_at = None  # the lease that may have been lost has run out by now
            self._announce()
            return
        next_try = self._last_attempt + self.retry_period
        if now < next_try:
            wake = min(next_try, deadline, self._claim_at or math.inf)
            await asyncio.sleep(wake - now)
            return
        self._last_attempt = now
        try:
            async with asyncio.timeout(deadline - now):  # never wait past the deadline
                term = await self._store.renew(nonce=self._nonce, duration=self.lease_duration)
        except (BackendUnavailable, TimeoutError) as exc:
            self._metrics.renew_failures.labels(election=self.name).inc()
            logger.warning("election %s: renewal failed: %s", self.name, exc or "timed out")
            return
        if term is None:
            self._metrics.renew_failures.labels(election=self.name).inc()
            logger.warning("election %s: the lease is no longer ours; stepping down", self.name)
            self._step_down("lost", lingering=False)
            return
        self._last_renew = now

    async def _release_stale_lease(self, *, quiet: bool) -> None:
        """Resign leases we stepped down from (if they may still exist); retried on failure."""
        while self._stale_nonces:
            try:
                resigned = await self._store.resign(nonce=self._stale_nonces[0])
            except BackendUnavailable as exc:
                if not quiet:
                    logger.warning("election %s: could not resign (the lease will lapse): %s",
                                   self.name, exc)
                return
            self._stale_nonces.pop(0)
            if resigned:
                logger.info("election %s: %s resigned", self.name, self.identity)

    # -- state changes -------------------------------------------------------------------

    def _must_wait_out(self, record: LeaseRecord) -> bool:
        """Whether a won lease may have replaced one lost early (see the module docstring)."""
        if record.term_restarted == "absent":
            return self._term > 0  # we saw this election before: its keys were lost
        return bool(record.term_restarted)

    def _hold(self, *, term: int, renewed_at: float, reason: str) -> None:
        self._holder = self.identity
        self._term = term
        self._last_renew = self._last_attempt = renewed_at
        self._claim_at = time.monotonic() + self.lease_duration
        logger.warning(
            "election %s: %s won term %d with a term counter started afresh (%s): a lease"
            " may have been lost with it; leading only after waiting it out (%.3gs)",
            self.name, self.identity, term, reason, self.lease_duration,
        )
        self._bump()

    def _elected(self, *, term: int, renewed_at: float) -> None:
        self._holder = self.identity
        self._term = term
        self._last_renew = self._last_attempt = renewed_at
        self._announce()

    def _announce(self) -> None:
        self._leader = True
        term = self._term
        labels = {"election": self.name}
        self._metrics.is_leader.labels(**labels).set(1)
        self._metrics.term.labels(**labels).set(term)
        self._metrics.transitions.labels(**labels).inc()
        logger.info("election %s: %s is the leader (term %d)", self.name, self.identity, term)
        self._bump()
        self._elected_task = self._fire(self._on_elected, "on_elected")

    def _step_down(self, reason: str, *, lingering: bool) -> None:
        """Stop leading locally (no I/O). ``lingering``: our lease may still be in the store."""
        holding, self._claim_at = self._claim_at is not None, None
        if lingering and (self._leader or self._maybe_holding or holding):
            # A lease outlives its lease_duration by nothing: older nonces than a few
            # step-downs ago cannot hold anything any more.
            self._stale_nonces = [*self._stale_nonces[-(_MAX_STALE - 1):], self._nonce]
        self._nonce = _new_nonce()  # the next campaign is a new lease, with a new term
        self._maybe_holding = False
        if not self._leader:
            if holding:  # never claimed: no callbacks, no metrics
                self._holder = None
                self._bump()
            return
        self._leader = False
        self._holder = None  # unknown until the store is read again
        labels = {"election": self.name}
        self._metrics.is_leader.labels(**labels).set(0)
        self._metrics.transitions.labels(**labels).inc()
        self._metrics.step_downs.labels(reason=reason, **labels).inc()
        logger.info("election %s: %s stepped down (%s)", self.name, self.identity, reason)
        self._bump()
        elected, self._elected_task = self._elected_task, None
        if elected is not None and not elected.done() and elected is not asyncio.current_task():
            elected.cancel()  # its leadership is over
        self._fire(self._on_revoked, "on_revoked")

    def _observe(self, record: LeaseRecord) -> None:
        self._holder = record.holder
        if record.term != self._term:
            self._term = record.term
            self._metrics.term.labels(election=self.name).set(record.term)
        self._bump()

    def _bump(self) -> None:
        state = LeaderState(leader=self._leader, holder=self._holder, term=self._term)
        if state == self._state and not self._closed:
            return
        self._state = state
        self._version += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    # -- callbacks -----------------------------------------------------------------------

    def _fire(self, callback: Callback | None, what: str) -> asyncio.Future[Any] | None:
        if callback is None:
            return None
        try:
            result = callback()
        except Exception:
            logger.exception("election %s: %s failed", self.name, what)
            return None
        if not inspect.isawaitable(result):
            return None
        future = asyncio.ensure_future(result)
        self._callback_tasks.add(future)
        future.add_done_callback(lambda f: self._callback_done(f, what))
        return future

    def _callback_done(self, future: asyncio.Future[Any], what: str) -> None:
        self._callback_tasks.discard(future)
        if not future.cancelled() and future.exception() is not None:
            logger.error("election %s: %s failed", self.name, what, exc_info=future.exception())

    async def _settle_callbacks(self) -> None:
        pending = list(self._callback_tasks)
        if not pending:
            return
        _, still_running = await asyncio.wait(pending, timeout=_CALLBACK_GRACE)
        for future in still_running:
            logger.warning("election %s: a callback is still running after %ss; cancelling it",
                           self.name, _CALLBACK_GRACE)
            future.cancel()


async def _cancel(task: asyncio.Task[None]) -> None:
    """Stop the campaign task for good (see podcache.tasks), logging how it failed, if it did."""
    if (error := await tasks.cancel_and_wait(task)) is not None:
        logger.error("campaign task failed", exc_info=error)

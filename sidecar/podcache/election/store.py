"""Where an election's lease lives: the interface the elector campaigns through.

A lease names its holder (the elector's identity), carries a term number and
expires by itself. Ownership is proved by a ``nonce`` that is fresh for every
campaign, not by the identity: two electors misconfigured with one identity (or a
restarted pod reusing its name while its predecessor's lease still runs) can never
both believe they lead. Every operation is atomic in the store:

- ``try_acquire``: take the lease only if it is vacant; the term grows by one.
  Idempotent per nonce: if the lease is already held under this nonce (an earlier
  attempt won but its reply was lost), it is ours, extended, same term. A lease taken
  with a term counter started afresh says so (``LeaseRecord.term_restarted``), on the
  idempotent path too.
- ``renew``: extend the lease only if this nonce still holds it (never by
  release-then-reacquire: nobody can slip in between).
- ``resign``: drop the lease only if this nonce holds it; the term stays, so the next
  leader gets term + 1. Watchers are told at once.
- ``wait_for_change``: sleep until a leader is elected or resigns (or a bound passes),
  so followers take over a resigned lease in milliseconds instead of a retry period.
"""

from __future__ import annotations

import abc
import dataclasses


@dataclasses.dataclass(frozen=True)
class LeaseRecord:
    """The store's view of an election at one moment."""

    holder: str | None
    """Identity of the current leader; None when the lease is vacant."""
    term: int
    """Term of the current leader, or of the last one while vacant (0: never held)."""
    expires_in: float | None
    """Seconds left on the current lease; None when vacant."""
    term_restarted: str = ""
    """Set by a won ``try_acquire`` whose lease started the term counter afresh: "absent"
    (no counter: a new election, or its keys were lost with a FLUSHALL or an empty
    restart), "epoch" (a restarted or failed-over server) or "foreign". Then an earlier
    lease may have vanished before it ran out and its leader may still believe it leads
    (see ``podcache.election.elector``). "" otherwise, and always in a store that cannot
    lose leases (memory)."""


class LeaseStore(abc.ABC):
    """The lease of one named election; see the module docstring for the semantics."""

    name: str

    async def open(self) -> None:  # noqa: B027  # optional hook
        """Prepare change notifications before the first campaign (best effort)."""

    @abc.abstractmethod
    async def try_acquire(
        self, *, identity: str, nonce: str, duration: float,
    ) -> tuple[bool, LeaseRecord]:
        """Take the lease if vacant; return whether we did and the record afterwards."""

    @abc.abstractmethod
    async def renew(self, *, nonce: str, duration: float) -> int | None:
        """Extend our lease to ``duration`` from now; its term, or None if not ours."""

    @abc.abstractmethod
    async def resign(self, *, nonce: str) -> bool:
        """Drop our lease and notify watchers; False if it was not ours."""

    @abc.abstractmethod
    async def read(self) -> LeaseRecord:
        """The current holder and term."""

    @abc.abstractmethod
    async def wait_for_change(self, *, at_most: float) -> None:
        """Return on a change notice (elected, resigned) or after ``at_most`` seconds."""

    async def close(self) -> None:  # noqa: B027  # optional hook
        """Release notification resources. Idempotent."""

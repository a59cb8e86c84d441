"""Plain values the socket clients hand back: a lock lease and an election's status.

They are parsed from the sidecar's JSON replies here, once, so the sync client,
the async client and the CLI agree on field names and on what a malformed reply
means (a ``ServerError``, never a ``KeyError`` deep inside a caller).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from podcache.errors import ServerError


@dataclasses.dataclass(frozen=True)
class Lease:
    """A lock held through the sidecar: ``fence`` grows with every acquire of ``name``."""

    name: str
    token: str
    fence: int
    ttl: float
    """Seconds the lease lasts from the moment the sidecar granted it."""
    waited: float = 0.0
    """Seconds the sidecar held the acquire before sending the granting write (a blocking
    wait): the lease is certainly ours until the request's send time + ``waited`` + ``ttl``."""

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "token": self.token, "fence": self.fence,
                "ttl_ms": round(self.ttl * 1000)}


@dataclasses.dataclass(frozen=True)
class LeaderStatus:
    """Who leads an election, as seen by the sidecar answering.

    ``leader`` is true when that sidecar's own pod holds the election; ``holder``
    is the identity (pod name) of whoever holds it, or None while nobody does;
    ``term`` grows on every change of leader.
    """

    leader: bool
    holder: str | None
    term: int

    def as_json(self) -> dict[str, Any]:
        return {"leader": self.leader, "holder": self.holder, "term": self.term}


def parse_lease(name: str, payload: Any) -> Lease:
    data = _mapping(payload, what="lock lease")
    try:
        token = data["token"]
        fence = data["fence"]
        ttl_ms = data["ttl_ms"]
    except KeyError as exc:
        raise _malformed(f"lock lease lacks {exc.args[0]!r}: {payload!r}") from exc
    # Absent from older sidecars: 0 counts the lease from the send, never too long.
    waited_ms = data.get("waited_ms", 0)
    if (not isinstance(token, str) or not _is_int(fence) or not _is_number(ttl_ms)
            or not _is_number(waited_ms)):
        raise _malformed(f"lock lease has fields of the wrong type: {payload!r}")
    return Lease(name=name, token=token, fence=int(fence), ttl=float(ttl_ms) / 1000.0,
                 waited=max(0.0, float(waited_ms) / 1000.0))


def parse_leader_status(payload: Any) -> LeaderStatus:
    data = _mapping(payload, what="leader status")
    leader = data.get("leader")
    holder = data.get("holder")
    term = data.get("term", 0)
    if not isinstance(leader, bool) or not (holder is None or isinstance(holder, str)):
        raise _malformed(f"leader status has fields of the wrong type: {payload!r}")
    if not _is_int(term):
        raise _malformed(f"leader status has a non-integer term: {payload!r}")
    return LeaderStatus(leader=leader, holder=holder or None, term=int(term))


def _mapping(payload: Any, *, what: str) -> Mapping[str, Any]:
    if not isinstance(payload, Mapping):
        raise _malformed(f"expected a JSON object for the {what}, got {payload!r}")
    return payload


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _malformed(message: str) -> ServerError:
    return ServerError(f"malformed reply from the sidecar: {message}",
                       code="malformed_reply", status=200)

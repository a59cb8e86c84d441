"""Status conditions in the standard ``metav1.Condition`` shape.

``kubectl wait --for=condition=Ready cacheconfig/x`` and every dashboard read
these, so they follow the API conventions exactly: ``type``, ``status``
("True"/"False"/"Unknown"), a CamelCase ``reason``, a human ``message``,
``observedGeneration``, and a ``lastTransitionTime`` that moves only when the
status flips — re-reporting the same state must not look like a transition.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

READY = "Ready"
CONFIG_RENDERED = "ConfigRendered"
SERVICE_MONITOR_READY = "ServiceMonitorReady"

Status = Literal["True", "False", "Unknown"]


@dataclasses.dataclass(frozen=True)
class Condition:
    type: str
    status: Status
    reason: str
    message: str

    @classmethod
    def true(cls, type: str, *, reason: str, message: str) -> Condition:
        return cls(type=type, status="True", reason=reason, message=message)

    @classmethod
    def false(cls, type: str, *, reason: str, message: str) -> Condition:
        return cls(type=type, status="False", reason=reason, message=message)


def now() -> datetime.datetime:
    return datetime.datetime.now(tz=datetime.UTC)


def timestamp(moment: datetime.datetime) -> str:
    """RFC 3339 in UTC with second precision, as the apiserver writes it."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def find(conditions: Sequence[Mapping[str, Any]] | None, type: str) -> Mapping[str, Any] | None:
    for condition in conditions or ():
        if condition.get("type") == type:
            return condition
    return None


def merge(
    existing: Sequence[Mapping[str, Any]] | None,
    updates: Iterable[Condition],
    *,
    generation: int | None,
    moment: datetime.datetime,
) -> list[dict[str, Any]]:
    """The full new ``status.conditions`` list: ``existing`` with ``updates`` applied.

    A merge patch replaces lists whole, so callers always write the complete list.
    """
    merged: list[dict[str, Any]] = [dict(condition) for condition in existing or ()]
    for update in updates:
        index = next((i for i, item in enumerate(merged) if item.get("type") == update.type), None)
        current = merged[index] if index is not None else None
        unchanged = current is not None and current.get("status") == update.status
        new: dict[str, Any] = {
            "type": update.type,
            "status": update.status,
            "reason": update.reason,
            "message": update.message,
            "lastTransitionTime": (current or {}).get("lastTransitionTime") if unchanged else None,
        }
        new["lastTransitionTime"] = new["lastTransitionTime"] or timestamp(moment)
        if generation is not None:
            new["observedGeneration"] = generation
        if index is None:
            merged.append(new)
        else:
            merged[index] = new
    return merged

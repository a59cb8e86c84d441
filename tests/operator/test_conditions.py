"""Status conditions (metav1.Condition shape).

Aspects: new conditions get a transition time; re-reporting the same status keeps
it while reason/message/observedGeneration update; a flip moves it; other
conditions are kept in place.
"""

from __future__ import annotations

import datetime

from podcache_operator import conditions

T0 = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.UTC)
T1 = T0 + datetime.timedelta(minutes=5)


def test_new_condition() -> None:
    merged = conditions.merge(
        None,
        [conditions.Condition.true("Ready", reason="Reconciled", message="ok")],
        generation=3,
        moment=T0,
    )
    assert merged == [
        {
            "type": "Ready",
            "status": "True",
            "reason": "Reconciled",
            "message": "ok",
            "lastTransitionTime": "2026-01-01T12:00:00Z",
            "observedGeneration": 3,
        }
    ]


def test_same_status_keeps_transition_time() -> None:
    first = conditions.merge(
        None,
        [conditions.Condition.false("Ready", reason="A", message="a")],
        generation=1,
        moment=T0,
    )
    second = conditions.merge(
        first,
        [conditions.Condition.false("Ready", reason="B", message="b")],
        generation=2,
        moment=T1,
    )
    assert second[0]["lastTransitionTime"] == "2026-01-01T12:00:00Z"
    assert (second[0]["reason"], second[0]["message"], second[0]["observedGeneration"]) == (
        "B",
        "b",
        2,
    )


def test_flip_moves_transition_time() -> None:
    first = conditions.merge(
        None,
        [conditions.Condition.false("Ready", reason="A", message="a")],
        generation=1,
        moment=T0,
    )
    second = conditions.merge(
        first,
        [conditions.Condition.true("Ready", reason="B", message="b")],
        generation=1,
        moment=T1,
    )
    assert second[0]["lastTransitionTime"] == "2026-01-01T12:05:00Z"


def test_other_conditions_are_kept_in_order() -> None:
    first = conditions.merge(
        None,
        [
            conditions.Condition.true("A", reason="R", message=""),
            conditions.Condition.true("B", reason="R", message=""),
        ],
        generation=1,
        moment=T0,
    )
    second = conditions.merge(
        first, [conditions.Condition.false("A", reason="S", message="")], generation=1, moment=T1
    )
    assert [c["type"] for c in second] == ["A", "B"]
    assert second[1] == first[1]
    assert conditions.find(second, "A") == second[0]
    assert conditions.find(second, "C") is None

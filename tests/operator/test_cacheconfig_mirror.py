"""The webhook's CacheConfig mirror applies kopf's raw watch events (unit level; the
standby behaviour it exists for is tested on a real apiserver in
tests/controlplane/test_standby_replica.py)."""

from __future__ import annotations

from typing import Any

from kopf._cogs.clients import watching

from podcache_operator.cacheconfig_mirror import CacheConfigMirror


def body(name: str, image: str = "a", namespace: str = "ns") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": namespace, "managedFields": [{"x": 1}]},
        "spec": {"sidecar": {"image": image}},
    }


def listed(*bodies: dict[str, Any]) -> CacheConfigMirror:
    mirror = CacheConfigMirror()
    for item in bodies:
        mirror.apply({"type": None, "object": item})
    mirror.apply(watching.Bookmark.LISTED)
    return mirror


def test_not_synced_until_the_listing_is_complete() -> None:
    mirror = CacheConfigMirror()
    mirror.apply({"type": None, "object": body("a")})
    assert not mirror.synced
    assert mirror.get("ns", "a") is None
    mirror.apply(watching.Bookmark.LISTED)
    assert mirror.synced
    found = mirror.get("ns", "a")
    assert found is not None
    assert "managedFields" not in found["metadata"]


def test_an_empty_listing_syncs() -> None:
    mirror = listed()
    assert mirror.synced
    assert len(mirror) == 0


def test_events_after_the_listing_update_and_delete() -> None:
    mirror = listed(body("a"), body("b"))
    mirror.apply({"type": "MODIFIED", "object": body("a", image="new")})
    mirror.apply({"type": "DELETED", "object": body("b")})
    mirror.apply({"type": "ADDED", "object": body("c", namespace="other")})
    a = mirror.get("ns", "a")
    assert a is not None
    assert a["spec"]["sidecar"]["image"] == "new"
    assert mirror.get("ns", "b") is None
    assert mirror.get("other", "c") is not None


def test_a_relisting_drops_what_vanished_while_disconnected() -> None:
    mirror = listed(body("a"), body("b"))
    mirror.apply({"type": None, "object": body("b", image="newer")})
    # Until the relisting is complete, the previous copy keeps answering.
    assert mirror.get("ns", "a") is not None
    mirror.apply(watching.Bookmark.LISTED)
    assert mirror.get("ns", "a") is None
    b = mirror.get("ns", "b")
    assert b is not None
    assert b["spec"]["sidecar"]["image"] == "newer"


def test_the_snapshot_is_a_copy() -> None:
    original = body("a")
    mirror = listed(original)
    original["spec"]["sidecar"]["image"] = "changed"
    found = mirror.get("ns", "a")
    assert found is not None
    assert found["spec"]["sidecar"]["image"] == "a"

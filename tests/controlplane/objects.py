"""Generic object access on the e2e cluster through the official client's dynamic API:
create what a YAML document describes, read it back, whatever its kind."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from kubernetes import client, dynamic
from kubernetes.dynamic.exceptions import ResourceNotFoundError


def _resource(api: client.ApiClient, doc: Mapping[str, Any]) -> Any:
    return dynamic.DynamicClient(api).resources.get(api_version=doc["apiVersion"], kind=doc["kind"])


def create(api: client.ApiClient, doc: Mapping[str, Any], namespace: str | None = None) -> Any:
    resource = _resource(api, doc)
    ns = (doc.get("metadata") or {}).get("namespace") or namespace
    return resource.create(body=dict(doc), namespace=ns if resource.namespaced else None)


def read(api: client.ApiClient, doc: Mapping[str, Any]) -> Any:
    resource = _resource(api, doc)
    meta = doc["metadata"]
    return resource.get(
        name=meta["name"], namespace=meta.get("namespace") if resource.namespaced else None
    )


def is_served(api: client.ApiClient, doc: Mapping[str, Any]) -> bool:
    try:
        _resource(api, doc)
    except ResourceNotFoundError:
        return False
    return True


def kinds(docs: Iterable[Mapping[str, Any]]) -> set[str]:
    return {f"{doc['apiVersion']}/{doc['kind']}" for doc in docs}

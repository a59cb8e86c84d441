"""Our CRD's openAPIV3Schema as a validator, the way the API server applies it.

Three steps, in the API server's order: structural defaulting (``default`` values,
recursively), the OpenAPI schema (as JSON Schema, unknown fields refused because the
server would prune them), then the ``x-kubernetes-validations`` CEL rules, evaluated
with cel-python on the defaulted object. Kubernetes-specific CEL libraries are not
available there; our rules only use standard CEL (has, size, duration).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import celpy
import jsonschema
import yaml
from celpy import adapter as cel_adapter

from tests.deploy import chart


def schema(version: str = "v1alpha1") -> dict[str, Any]:
    crd = yaml.safe_load(chart.CRD_FILE.read_text())
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    return dict(served["schema"]["openAPIV3Schema"])


def to_json_schema(node: Any) -> Any:
    """OpenAPI v3 (structural) → JSON Schema: drop the x-kubernetes-* extensions and close
    objects that list properties (the server prunes unknown fields; we refuse them)."""
    if isinstance(node, list):
        return [to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {k: to_json_schema(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if (
        "properties" in converted
        and "additionalProperties" not in converted
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        converted["additionalProperties"] = False
    return converted


def apply_defaults(value: Any, node: dict[str, Any]) -> Any:
    """Fill absent fields that have a ``default``, then descend (defaults of defaults too)."""
    if isinstance(value, dict):
        for name, child in node.get("properties", {}).items():
            if name not in value and "default" in child:
                value[name] = copy.deepcopy(child["default"])
            if name in value:
                value[name] = apply_defaults(value[name], child)
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            for key in value.keys() - node.get("properties", {}).keys():
                value[key] = apply_defaults(value[key], extra)
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        return [apply_defaults(item, node["items"]) for item in value]
    return value


def _rules(
    value: Any, node: dict[str, Any], path: str
) -> Iterator[tuple[str, dict[str, Any], Any]]:
    for rule in node.get("x-kubernetes-validations", []):
        yield path, rule, value
    if isinstance(value, dict):
        for name, child in node.get("properties", {}).items():
            if name in value:
                yield from _rules(value[name], child, f"{path}.{name}")
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        for index, item in enumerate(value):
            yield from _rules(item, node["items"], f"{path}[{index}]")


def cel_violations(obj: dict[str, Any], node: dict[str, Any]) -> list[str]:
    """The messages of the CEL rules the (defaulted) object breaks."""
    environment = celpy.Environment()
    violations = []
    for path, rule, value in _rules(obj, node, "self"):
        program = environment.program(environment.compile(rule["rule"]))
        result = program.evaluate({"self": cel_adapter.json_to_cel(value)})
        if isinstance(result, Exception):
            raise AssertionError(f"CEL rule at {path} failed to evaluate: {rule['rule']}: {result}")
        if not bool(result):
            violations.append(f"{path}: {rule.get('message', rule['rule'])}")
    return violations


def validate(obj: dict[str, Any]) -> list[str]:
    """Raise jsonschema.ValidationError for schema errors; return CEL violations."""
    root = schema()
    defaulted = apply_defaults(copy.deepcopy(obj), root)
    jsonschema.Draft7Validator(to_json_schema(root)).validate(defaulted)
    return cel_violations(defaulted, root)

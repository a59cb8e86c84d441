"""Kubernetes resource quantities ("500m", "1.5Gi", "2e3") as exact decimals.

The operator compares a container's requests with its limits the way the apiserver
does before it admits a pod; ``rendering.parse_quantity`` only reads byte sizes (no
milli-units, no exponents), so the full grammar of ``resource.Quantity`` lives here:
an optional sign, a decimal number, then a binary suffix (Ki..Ei), a decimal suffix
(n, u, m, k, M..E) or an exponent (e3, E-2).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

_GRAMMAR = re.compile(
    r"(?P<number>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?:(?P<binary>Ki|Mi|Gi|Ti|Pi|Ei)|(?P<decimal>[numkMGTPE])|[eE](?P<exponent>[+-]?[0-9]+))?"
)
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
}


def parse(value: object) -> Decimal:
    """The quantity's value in base units; ValueError when it is not a quantity."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"not a quantity: {value!r}")
    text = str(value).strip()
    match = _GRAMMAR.fullmatch(text)
    if match is None:
        raise ValueError(f"not a quantity: {value!r} (e.g. 500m, 64Mi, 1.5G)")
    try:
        number = Decimal(match["number"])
    except InvalidOperation:  # pragma: no cover - the grammar admits only decimals
        raise ValueError(f"not a quantity: {value!r}") from None
    if match["binary"]:
        return number * _BINARY[match["binary"]]
    if match["decimal"]:
        return number * _DECIMAL[match["decimal"]]
    if match["exponent"]:
        return number.scaleb(int(match["exponent"]))
    return number


def requests_over_limits(resources: Mapping[str, Any]) -> list[str]:
    """Each resource whose request exceeds its limit, described as the apiserver would
    refuse it ("cpu: request 1 must be less than or equal to limit 500m")."""
    requests = resources.get("requests") or {}
    limits = resources.get("limits") or {}
    found = []
    for name, request in requests.items():
        if name not in limits:
            continue
        try:
            over = parse(request) > parse(limits[name])
        except ValueError:
            continue  # the CRD's pattern reports a malformed quantity
        if over:
            found.append(
                f"{name}: request {request} must be less than or equal to limit {limits[name]}"
            )
    return found

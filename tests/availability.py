"""The one policy for tests that need a real component (Redis, a control plane).

Under ``CI=true`` a component that cannot be started fails the test: a green CI must
mean the test ran. Elsewhere (a laptop without redis-server or Go) it skips with the
reason, so the rest of the suite stays usable.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(component: str, reason: str) -> NoReturn:
    if in_ci():
        pytest.fail(
            f"{component} is required under CI=true and could not be started: {reason}",
            pytrace=False,
        )
    pytest.skip(f"{component} unavailable: {reason}")

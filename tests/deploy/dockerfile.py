"""A small static reader of the Dockerfile (no Docker engine here to build it).

Joins continuation lines, drops comments and parser directives, and splits the file
into stages. It understands exactly what our Dockerfile uses; it is not a general
Dockerfile parser.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from pathlib import Path

_FROM = re.compile(r"^(?P<image>\S+)(?:\s+AS\s+(?P<name>\S+))?$", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str


@dataclasses.dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[Instruction] = dataclasses.field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [i.arguments for i in self.instructions if i.keyword == keyword]

    def labels(self) -> dict[str, str]:
        found: dict[str, str] = {}
        for arguments in self.all("LABEL"):
            for token in shlex.split(arguments):
                key, _, value = token.partition("=")
                found[key] = value
        return found


@dataclasses.dataclass
class Dockerfile:
    args: list[str]
    stages: list[Stage]


def parse(path: Path) -> Dockerfile:
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # comments may sit between continuation lines
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continuation line"
    parsed = Dockerfile(args=[], stages=[])
    for line in logical:
        keyword, _, arguments = line.partition(" ")
        keyword = keyword.upper()
        arguments = arguments.strip()
        if keyword == "FROM":
            match = _FROM.match(arguments)
            assert match, f"unreadable FROM: {arguments}"
            parsed.stages.append(Stage(image=match["image"], name=match["name"]))
        elif not parsed.stages:
            assert keyword == "ARG", f"{keyword} before the first FROM"
            parsed.args.append(arguments)
        else:
            parsed.stages[-1].instructions.append(Instruction(keyword, arguments))
    return parsed

"""The fast paths are written out in each shell (they are the speed); this checks that the
threaded and the asyncio twins say the same thing once the lock and the loop check are
stripped, so a fix made in one cannot silently miss the other (httpcore's ``unasync --check``
idea, scoped to the regions marked ``# twin: NAME`` ... ``# twin: end``)."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "millpond"
SYNC = [SRC / "_sync" / "pool.py", SRC / "_sync" / "borrowed.py"]
ASYNC = [SRC / "_async" / "pool.py", SRC / "_async" / "borrowed.py"]

_START = re.compile(r"^\s*# twin: (?P<name>[\w-]+)\s*$")


def regions(paths: list[Path]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in paths:
        found.update(file_regions(path))
    return found


def file_regions(path: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in path.read_text().splitlines():
        m = _START.match(line)
        if m and m["name"] == "end":
            assert current is not None, f"{path.name}: '# twin: end' without a start"
            current = None
        elif m:
            assert current is None, f"{path.name}: twin regions do not nest"
            current = found.setdefault(m["name"], [])
        elif current is not None:
            current.append(line)
    assert current is None, f"{path.name}: a twin region is not closed"
    return found


def normalized(lines: list[str], kind: str) -> list[str]:
    """The region as the other shell would write it: dedented, without lock or loop lines,
    ``await``/``async`` and what a return gives back (the sync twins are written inline in
    ``getconn``/``putconn``, the async ones as helpers the ``async with`` path calls too)."""
    lines = textwrap.dedent("\n".join(lines)).splitlines()
    out = []
    with_at: int | None = None  # indentation of a ``with self._lock:`` being stripped
    for line in lines:
        if f"# twin: {kind}-only" in line:
            continue
        depth = len(line) - len(line.lstrip())
        if with_at is not None and line.strip() and depth <= with_at:
            with_at = None
        if kind == "sync" and re.fullmatch(r"\s*with self\._lock:", line):
            with_at = depth
            continue
        if with_at is not None:
            line = line[4:]
        line = re.sub(r"\bawait |\basync ", "", line).rstrip()
        line = re.sub(r"\breturn (True|None)$", "return", line)
        if line:
            out.append(line)
    return out


def test_every_twin_region_exists_in_both_shells() -> None:
    sync, async_ = regions(SYNC), regions(ASYNC)
    assert set(sync) == set(async_), (sorted(sync), sorted(async_))
    assert {"lend-idle", "return-idle"} <= set(sync)


def test_the_twins_say_the_same_thing() -> None:
    sync, async_ = regions(SYNC), regions(ASYNC)
    for name in sync:
        a, b = normalized(sync[name], "sync"), normalized(async_[name], "async")
        assert a, f"twin {name!r} is empty"
        assert a == b, f"twin {name!r} differs:\n" + "\n".join(
            f"sync : {x}\nasync: {y}" for x, y in zip(a, b, strict=False) if x != y
        )


def test_the_check_catches_a_drift(tmp_path: Path) -> None:
    """The comparison is not vacuous: one changed condition is a difference."""
    sync = regions(SYNC)["return-idle"]
    drifted = [line.replace("now < rec.expires", "now <= rec.expires") for line in sync]
    assert normalized(drifted, "sync") != normalized(regions(ASYNC)["return-idle"], "async")

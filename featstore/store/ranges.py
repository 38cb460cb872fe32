"""Half-open row ranges ``[start, end)``: what a feature set has committed, what a writer still owes."""

from __future__ import annotations

from collections.abc import Iterable


def merge_ranges(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sort and merge half-open row ranges (adjacent ones join)."""
    out: list[tuple[int, int]] = []
    for a, b in sorted(r for r in ranges if r[0] < r[1]):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def overlaps(ranges: list[tuple[int, int]], a: int, b: int) -> tuple[int, int] | None:
    """The first range in sorted, disjoint ``ranges`` that intersects [a, b), or None."""
    for r in ranges:
        if r[0] < b and a < r[1]:
            return r
        if r[0] >= b:
            break
    return None


def gaps(ranges: list[tuple[int, int]], n_rows: int) -> list[tuple[int, int]]:
    """The parts of [0, n_rows) that the sorted, merged ``ranges`` leave out."""
    out, position = [], 0
    for a, b in ranges:
        if a > position:
            out.append((position, a))
        position = max(position, b)
    if position < n_rows:
        out.append((position, n_rows))
    return out


def covers(ranges: list[tuple[int, int]], a: int, b: int) -> bool:
    """Whether the sorted, merged ``ranges`` contain all of [a, b)."""
    return any(r[0] <= a and b <= r[1] for r in ranges)


def subtract_ranges(ranges: Iterable[tuple[int, int]], taken: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of ``ranges`` outside the sorted, merged ``taken`` ranges, merged."""
    out = []
    for a, b in merge_ranges(ranges):
        out += [(max(a, g0), min(b, g1)) for g0, g1 in gaps(taken, b) if max(a, g0) < min(b, g1)]
    return merge_ranges(out)

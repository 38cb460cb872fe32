"""argparse types shared by the commands: checked numbers and comma-separated lists, refused with
exit status 2 and a line saying what was expected."""

from __future__ import annotations

import argparse


def floats(text: str) -> list[float]:
    """``"1e-3,1e-2"`` as a list of floats (argparse type)."""
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def positive_floats(text: str) -> list[float]:
    """A non-empty comma-separated list of numbers > 0 (argparse type)."""
    values = floats(text)
    if not values or any(not v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive numbers, got {text!r}")
    return values


def non_negative_floats(text: str) -> list[float]:
    """A non-empty comma-separated list of numbers >= 0 (argparse type)."""
    values = floats(text)
    if not values or any(not v >= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated non-negative numbers, got {text!r}")
    return values


def positive_int(text: str) -> int:
    """An integer >= 1 (argparse type)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value

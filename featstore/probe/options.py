"""Checks of every option of a probe run, made before any work starts, each failing with one clear
``ValueError`` (the CLI's exit status 2) that names the option, the value and what is allowed."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

HEADS = ("linear", "ridge", "logistic", "attentive", "mlp")  # the head kinds, in the order results list them
GRID_HEADS = ("attentive",)  # heads that need a patch grid (a set extracted with pooling ``patch``)


def parse_heads(heads: str | Sequence[str]) -> list[str]:
    """Head kinds from ``"linear,ridge"`` or a list, deduplicated, in :data:`HEADS` order; unknown ones refused."""
    names = [h.strip() for h in (heads.split(",") if isinstance(heads, str) else heads) if str(h).strip()]
    unknown = [h for h in names if h not in HEADS]
    if unknown or not names:
        raise ValueError(f"unknown or no head(s) {unknown}; choose one or more of {', '.join(HEADS)}")
    return [h for h in HEADS if h in names]


def check_grids(heads: Sequence[str], row_shapes: dict[str, tuple]) -> None:
    """Refuse a head that needs patch grids when some selected sets are pooled vectors."""
    pooled = [k for k, shape in row_shapes.items() if len(shape) != 2]
    for h in heads:
        if h in GRID_HEADS and pooled:
            raise ValueError(
                f"head {h!r} needs patch grids (sets extracted with pooling 'patch'), but "
                f"{', '.join(pooled[:6])}{' ...' if len(pooled) > 6 else ''} are pooled; select patch sets with "
                "--keys (e.g. '*/patch') or drop the head"
            )


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _numbers(name: str, values: Sequence[float], *, positive: bool) -> list[float]:
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be numbers, got {values!r}") from None
    if not out:
        raise ValueError(f"{name} must not be empty")
    bad = [v for v in out if not math.isfinite(v) or (v <= 0 if positive else v < 0)]
    if bad:
        raise ValueError(f"{name} must be {'positive' if positive else 'non-negative'} finite numbers, got {bad}")
    return out


def check_options(
    *,
    heads,
    lrs,
    wds,
    alphas,
    cs,
    epochs,
    batch_size,
    seed,
    fractions,
) -> dict[str, Any]:
    """Every option of :func:`featstore.probe.train_probes`, checked and normalised (floats, head list)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    fr = _numbers("fractions", fractions, positive=True)
    if len(fr) != 3 or abs(sum(fr) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be three positive numbers summing to 1 (train, validation, test), got {fr}")
    return {
        "heads": parse_heads(heads),
        "lrs": _numbers("lrs (learning rates)", lrs, positive=True),
        "wds": _numbers("wds (weight decays)", wds, positive=False),
        "alphas": _numbers("alphas (ridge strengths)", alphas, positive=True),
        "cs": _numbers("cs (logistic C values)", cs, positive=True),
        "epochs": _positive_int("epochs", epochs),
        "batch_size": _positive_int("batch_size", batch_size),
        "fractions": fr,
    }

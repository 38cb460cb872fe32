"""featstore compare: linear CKA between every pair of chosen feature sets (layers x encoders), in one
streaming pass over their rows; writes cka.json, cka.csv and a heat map cka.png. Patch grids are
mean-pooled over their tokens first.

    featstore compare datasets/features --keys 'dinov2/*/cls' --keys 'clip/*/cls' --out results/cka
"""

from __future__ import annotations

import argparse

from .arguments import positive_int


def add_compare_command(subparsers) -> None:
    """Add the ``compare`` command to featstore's top-level subparsers."""
    p = subparsers.add_parser(
        "compare",
        help="linear CKA between every pair of feature sets; write CSV, JSON and a heat map",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("store", metavar="STORE", help="the store holding the feature sets")
    p.add_argument("--keys", action="append", default=None, help="glob of feature-set keys (repeatable; default: all)")
    p.add_argument("--out", default="results/cka", help="folder for cka.json, cka.csv, cka.png (default: %(default)s)")
    p.add_argument(
        "--batch-size", type=positive_int, default=4096, help="rows per streamed batch (default: %(default)s)"
    )
    p.add_argument("--device", default="cpu", help="torch device for the sums (default: %(default)s)")
    p.set_defaults(func=_cmd_compare)


def _cmd_compare(args) -> int:
    from ..probe.cka import linear_cka
    from ..probe.cka_report import write_cka

    out = linear_cka(args.store, args.keys or "*", batch_size=args.batch_size, device=args.device)
    write_cka(out, args.out)
    return 0

"""featstore probe: train probes (linear, ridge, logistic, attentive, mlp) on stored features; write a results JSON, CSV,
the split (split.json) and a plot.

    featstore probe datasets/features --dataset datasets/spatial_hf --keys 'dinov2/*' \\
        --task relation --head linear,ridge,logistic --out results/

    featstore probe ... --head ridge --split-file results/split.json   # exactly the same rows again

Under torchrun the heads train with DistributedDataParallel, each rank on its share of every batch:

    torchrun --nproc_per_node=4 -m featstore probe STORE --dataset ... --device cuda
"""

from __future__ import annotations

import argparse

from .arguments import non_negative_floats, positive_floats, positive_int


def _heads(text: str) -> list[str]:
    from ..probe.options import parse_heads

    try:
        return parse_heads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_probe_commands(subparsers) -> None:
    """Add the ``probe`` command to featstore's top-level subparsers."""
    from ..probe import DEFAULT_ALPHAS, DEFAULT_CS, DEFAULT_LRS, DEFAULT_WDS

    p = subparsers.add_parser(
        "probe",
        help="train probes (linear, ridge, logistic, attentive, mlp) on feature sets; write results JSON, CSV, split, plot",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("store", metavar="STORE", nargs="?", default=None, help="the store holding the feature sets")
    p.add_argument("--store", dest="store_alias", default=None, help=argparse.SUPPRESS)  # the old spelling of STORE
    p.add_argument("--dataset", required=True, help="the dataset folder the features were extracted from (required)")
    p.add_argument(
        "--split", default=None, help="the split to use when the folder holds several (default: the only one)"
    )
    p.add_argument(
        "--keys",
        action="append",
        default=None,
        help="glob of feature-set keys, e.g. 'dinov2/*' (repeatable; default: all)",
    )
    p.add_argument(
        "--task",
        default="relation",
        help="relation, binary, or an integer column of the dataset (default: %(default)s)",
    )
    p.add_argument(
        "--head",
        type=_heads,
        default=["linear"],
        help="comma-separated head kinds: linear, ridge, logistic, attentive (patch grids), mlp (default: linear)",
    )
    p.add_argument("--out", default="results", help="folder for the results (default: %(default)s)")
    p.add_argument(
        "--split-file", default=None, help="reuse the split of an earlier run (its split.json; default: a new split)"
    )
    p.add_argument(
        "--lrs",
        type=positive_floats,
        default=list(DEFAULT_LRS),
        help="comma-separated learning rates of the AdamW heads (default: %(default)s)",
    )
    p.add_argument(
        "--wds",
        type=non_negative_floats,
        default=list(DEFAULT_WDS),
        help="comma-separated weight decays of the AdamW heads (default: %(default)s)",
    )
    p.add_argument(
        "--alphas",
        type=positive_floats,
        default=list(DEFAULT_ALPHAS),
        help="comma-separated ridge strengths (default: 51 log-spaced from 1e-3 to 1e7)",
    )
    p.add_argument(
        "--cs",
        type=positive_floats,
        default=list(DEFAULT_CS),
        help="comma-separated logistic C values (default: 10 log-spaced from 1e-4 to 1e4)",
    )
    p.add_argument(
        "--epochs",
        type=positive_int,
        default=10,
        help="AdamW heads: passes over the train split (default: %(default)s)",
    )
    p.add_argument(
        "--batch-size", type=positive_int, default=256, help="AdamW heads: rows per step (default: %(default)s)"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seeds the split, the shuffling and the heads (default: %(default)s)"
    )
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default: %(default)s)")
    p.set_defaults(func=_cmd_probe)


def _cmd_probe(args) -> int:
    from ..distributed import ensure_process_group
    from ..probe import train_probes
    from ..probe.report import write_results

    main = ensure_process_group(args.device).is_main  # under torchrun: every rank trains, rank 0 reports
    if (args.store is None) == (args.store_alias is None):
        raise ValueError("give the store once, as the first argument: featstore probe STORE --dataset DIR ...")
    out = train_probes(
        args.store or args.store_alias,
        args.dataset,
        args.keys or "*",
        args.task,
        heads=args.head,
        split=args.split,
        split_file=args.split_file,
        lrs=args.lrs,
        wds=args.wds,
        alphas=args.alphas,
        cs=args.cs,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
        log=print if main else None,
    )
    if main:
        write_results(out, args.out)
    return 0

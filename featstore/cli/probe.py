"""featstore probe: train linear probes on stored features; write a results JSON, CSV and plot.

    featstore probe datasets/features --dataset datasets/spatial_hf --keys 'dinov2/*' \\
        --task relation --out results/

Under torchrun the heads train with DistributedDataParallel, each rank on its share of every batch:

    torchrun --nproc_per_node=4 -m featstore probe STORE --dataset ... --device cuda
"""

from __future__ import annotations

import argparse


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def add_probe_commands(subparsers) -> None:
    """Add the ``probe`` command to featstore's top-level subparsers."""
    from ..probe import DEFAULT_LRS, DEFAULT_WDS

    p = subparsers.add_parser(
        "probe",
        help="train linear probes on feature sets; write results JSON, CSV and a plot",
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
    p.add_argument("--out", default="results", help="folder for the results (default: %(default)s)")
    p.add_argument(
        "--lrs", type=_floats, default=list(DEFAULT_LRS), help="comma-separated learning rates (default: %(default)s)"
    )
    p.add_argument(
        "--wds", type=_floats, default=list(DEFAULT_WDS), help="comma-separated weight decays (default: %(default)s)"
    )
    p.add_argument("--epochs", type=int, default=10, help="passes over the training rows (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=256, help="rows per training step (default: %(default)s)")
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
        split=args.split,
        lrs=args.lrs,
        wds=args.wds,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
        log=print if main else None,
    )
    if main:
        write_results(out, args.out)
    return 0

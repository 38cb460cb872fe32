"""featstore extract / featstore encoders: run an encoder over a dataset into a store; list encoders.

    featstore extract datasets/features --dataset datasets/spatial_hf --encoder dinov2 --model facebook/dinov2-small \\
        --layers 10,11,last --pooling cls,mean
    featstore encoders

Under torchrun the ranks share the work (same arguments), e.g. on 4 GPUs of one machine:

    torchrun --nproc_per_node=4 -m featstore extract --dataset ... --device cuda ...
"""

from __future__ import annotations

import argparse
import json
import sys

from .store import note_skipped, open_store

COMPACT_DTYPES = ("int8", "float8_e4m3")  # store dtypes that mean a quantised set (featstore.store.quant)


def add_extract_commands(subparsers) -> None:
    """Add the ``extract`` and ``encoders`` commands to featstore's top-level subparsers."""
    x = subparsers.add_parser(
        "extract",
        help="extract encoder features of a dataset into a store",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    x.add_argument(
        "store",
        metavar="STORE",
        nargs="?",
        default=None,
        help="the store to write (created when missing; default: datasets/features)",
    )
    x.add_argument("--out", dest="out_alias", default=None, help=argparse.SUPPRESS)  # the old spelling of STORE
    x.add_argument("--dataset", required=True, help="a dataset folder written by save_to_disk (required)")
    x.add_argument(
        "--split", default=None, help="the split to use when the folder holds several (default: the only one)"
    )
    x.add_argument("--encoder", required=True, help="a registered encoder, see `featstore encoders` (required)")
    x.add_argument("--model", required=True, help="hub id or local save_pretrained folder (required)")
    x.add_argument("--layers", default="last", help="comma-separated layers, 'all' or 'last' (default: %(default)s)")
    x.add_argument("--pooling", default="cls", help="comma-separated: cls, mean, patch (default: %(default)s)")
    x.add_argument("--name", default=None, help="first part of the keys (default: the encoder's name)")
    x.add_argument(
        "--target",
        default="label",
        choices=["label", "relation"],
        help="labels stored with the features (default: %(default)s)",
    )
    x.add_argument("--no-labels", action="store_true", help="store no labels (default: store --target's labels)")
    x.add_argument("--batch-size", type=int, default=32, help="distinct images per forward pass (default: %(default)s)")
    x.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default: %(default)s)")
    x.add_argument(
        "--dtype",
        default="float32",
        help="the model's compute dtype: float32, bfloat16, float16; or int8 / float8_e4m3, which mean "
        "--store-dtype int8 / float8_e4m3 (default: %(default)s)",
    )
    x.add_argument(
        "--store-dtype",
        default=None,
        help="dtype of the stored features: float16, bfloat16, float32, or int8 / float8_e4m3 for compact "
        "storage (float16 quantised, see docs/compact-storage.md) (default: float16)",
    )
    x.add_argument(
        "--num-workers", type=int, default=2, help="image-decoding DataLoader workers (default: %(default)s)"
    )
    x.add_argument("--commit-every", type=int, default=8, help="commit rows every N batches (default: %(default)s)")
    x.add_argument(
        "--overwrite", action="store_true", help="replace feature sets written with other settings, or broken ones"
    )
    x.add_argument("--no-export-pt", action="store_true", help="do not write .pt exports (default: write them)")
    x.add_argument("--no-progress", action="store_true", help="no progress bar on stderr (default: a bar)")
    x.set_defaults(func=_cmd_extract)

    e = subparsers.add_parser(
        "encoders",
        help="list the registered encoders and the plugins they come from",
        description="List every registered encoder: name, plugin, description, aliases.",
    )
    e.add_argument("--json", action="store_true", help="print a JSON list instead of a table (default: a table)")
    e.set_defaults(func=_cmd_encoders)


def store_of(args) -> str:
    """STORE, or the old ``--out`` spelling of it (not both)."""
    if args.store is not None and args.out_alias is not None:
        raise ValueError(f"the store is given twice ({args.store} and --out {args.out_alias}); give only STORE")
    return args.store or args.out_alias or "datasets/features"


def _cmd_extract(args) -> int:
    from ..extraction import extract

    compute_dtype, store_dtype = args.dtype, args.store_dtype or "float16"
    if args.dtype in COMPACT_DTYPES:  # `extract --dtype int8`: a compact store, the model in float32
        if args.store_dtype not in (None, args.dtype):
            raise ValueError(f"--dtype {args.dtype} means --store-dtype {args.dtype}, not {args.store_dtype}; give one")
        compute_dtype, store_dtype = "float32", args.dtype

    result = extract(
        args.dataset,
        args.encoder,
        args.model,
        store_of(args),
        layers=args.layers,
        pooling=args.pooling,
        name=args.name,
        split=args.split,
        target=None if args.no_labels else args.target,
        batch_size=args.batch_size,
        device=args.device,
        dtype=compute_dtype,
        store_dtype=store_dtype,
        num_workers=args.num_workers,
        overwrite=args.overwrite,
        export_pt=not args.no_export_pt,
        progress=not args.no_progress,
        commit_every=args.commit_every,
    )
    from ..distributed import current_ranks

    if current_ranks().is_main:  # under torchrun: one summary, of the whole job
        print(result.summary())
        note_skipped("extract", open_store(str(result.store)))
    return 0


def _cmd_encoders(args) -> int:
    from ..encoders import get_encoders

    entries = get_encoders()
    if args.json:
        print(
            json.dumps(
                [
                    {"name": e.name, "plugin": e.plugin, "aliases": list(e.aliases), "description": e.description}
                    for e in entries.values()
                ],
                indent=1,
            )
        )
        return 0
    if not entries:
        print("no encoders registered (FEATSTORE_LOAD_PLUGINS may exclude them)", file=sys.stderr)
        return 1
    for e in entries.values():
        aliases = f" (also: {', '.join(e.aliases)})" if e.aliases else ""
        print(f"{e.name:12} {e.plugin:32} {e.description}{aliases}")
    return 0

"""featstore dataset: make, import, validate and split spatial-relation datasets.

featstore dataset synth --out datasets/spatial_hf --n 2000 --seed 0 --size 224
featstore dataset import whatsup ROOT --subset A --out datasets/whatsup_a
featstore dataset import table FILE --images DIR --out DIR
featstore dataset importers
featstore dataset validate datasets/spatial_hf
featstore dataset split datasets/spatial_hf --out datasets/spatial_split --seed 0
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def add_dataset_commands(subparsers) -> None:
    """Add the ``dataset`` command group to featstore's top-level subparsers."""
    d = subparsers.add_parser(
        "dataset",
        help="make, import, validate and split spatial-relation datasets",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = d.add_subparsers(dest="dataset_command", required=True)

    s = sub.add_parser("synth", help="render the synthetic two-object dataset (the built-in default)")
    s.add_argument("--out", default="datasets/spatial_hf", help="dataset folder to write (default: %(default)s)")
    s.add_argument("--n", type=int, default=2000, help="rows = images (default: %(default)s)")
    s.add_argument("--seed", type=int, default=0, help="seeds the scenes (default: %(default)s)")
    s.add_argument("--size", type=int, default=224, help="image side in pixels (default: %(default)s)")
    s.add_argument(
        "--distractors",
        type=float,
        default=0.5,
        help="probability of 1-2 distractor objects per image (default: %(default)s)",
    )
    s.add_argument("--workers", type=int, default=None, help="rendering processes (default: one per CPU)")
    s.add_argument("--overwrite", action="store_true", help="replace a dataset featstore wrote there before")
    s.add_argument("--no-progress", action="store_true", help="no progress bar on stderr (default: a bar)")
    s.set_defaults(func=_cmd_synth)

    i = sub.add_parser(
        "import",
        help="import a dataset with a registered importer (see `featstore dataset importers`)",
        description="featstore dataset import NAME SOURCE --out DIR [options of NAME]; "
        "`featstore dataset import NAME --help` lists NAME's options.",
    )
    i.add_argument("importer", help="importer name, e.g. table or whatsup")
    i.add_argument("args", nargs=argparse.REMAINDER, help="SOURCE --out DIR and the importer's options")
    i.set_defaults(func=_cmd_import)

    li = sub.add_parser("importers", help="list the registered importers (built-in and from plugins)")
    li.set_defaults(func=_cmd_importers)

    v = sub.add_parser("validate", help="check every row against the schema; exit 1 listing every problem")
    v.add_argument("path", help="a folder written by save_to_disk (a dataset or a dataset dict of splits)")
    v.add_argument("--no-files", action="store_true", help="do not check the image files (default: check them)")
    v.add_argument(
        "--no-decode", action="store_true", help="check that image files exist, but do not decode them (faster)"
    )
    v.add_argument("--no-progress", action="store_true", help="no progress bar on stderr (default: a bar)")
    v.add_argument("--json", action="store_true", help="print the summary as JSON")
    v.set_defaults(func=_cmd_validate)

    p = sub.add_parser("split", help="split by image into train/validation/test (deterministic, seeded)")
    p.add_argument("path", help="the dataset folder to split")
    p.add_argument("--out", required=True, help="folder for the DatasetDict (train/, validation/, test/)")
    p.add_argument("--seed", type=int, default=0, help="seeds which images go where (default: %(default)s)")
    p.add_argument(
        "--fractions",
        type=float,
        nargs=3,
        default=(0.8, 0.1, 0.1),
        metavar=("TRAIN", "VAL", "TEST"),
        help="shares of the images in each split (default: 0.8 0.1 0.1)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a dataset featstore wrote there before")
    p.set_defaults(func=_cmd_split)


def _cmd_synth(args) -> int:
    from ..spatial import validate
    from ..spatial.synth import generate

    t0 = time.perf_counter()
    ds = generate(
        args.out,
        n=args.n,
        seed=args.seed,
        size=args.size,
        distractors=args.distractors,
        workers=args.workers,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    dt = time.perf_counter() - t0
    summary = validate(ds)
    print(
        f"wrote {summary['rows']} rows to {args.out} in {dt:.1f} s ({summary['rows'] / dt:.0f} images/s); "
        f"relations {summary['relations']}, labels {summary['labels']}"
    )
    return 0


def importer_parser(name: str, importer) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"featstore dataset import {name}",
        description=importer.help + (f" (plugin {importer.plugin})" if importer.plugin else ""),
    )
    p.add_argument("source", help="the file or folder to import")
    p.add_argument("--out", required=True, help="dataset folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace a dataset featstore wrote there before")
    if importer.add_arguments is not None:
        importer.add_arguments(p)
    return p


def _cmd_import(args) -> int:
    from ..spatial import save_to_disk, validate
    from ..spatial.importers import get_importers

    importers = get_importers()
    if args.importer not in importers:
        raise ValueError(
            f"no importer {args.importer!r}; registered: {', '.join(importers) or 'none'} "
            "(plugins add more; see `featstore dataset importers`)"
        )
    importer = importers[args.importer]
    opts = vars(importer_parser(args.importer, importer).parse_args(args.args))
    source, out, overwrite = opts.pop("source"), opts.pop("out"), opts.pop("overwrite")
    result = importer(source, **opts)
    for line in result.notes():
        print(f"featstore dataset import {args.importer}: {line}", file=sys.stderr)
    summary = validate(result.dataset, root=out)
    save_to_disk(result.dataset, out, overwrite=overwrite)
    print(
        f"imported {summary['rows']} rows ({summary['images']} images) from {source} to {out}; "
        f"relations {summary['relations']}, labels {summary['labels']}"
    )
    return 0


def _cmd_importers(args) -> int:
    from ..spatial.importers import get_importers

    for name, imp in get_importers().items():
        print(f"{name:12} {imp.help}  [{imp.plugin}]")
    return 0


def _cmd_validate(args) -> int:
    import datasets

    from ..spatial import DatasetValidationError, load_from_disk, validate

    ds = load_from_disk(args.path)
    parts = ds.items() if isinstance(ds, datasets.DatasetDict) else [(None, ds)]
    summaries, failed = {}, False
    for name, part in parts:
        where = args.path + (f" [{name}]" if name else "")
        try:
            summaries[name or "dataset"] = validate(
                part, check_files=not args.no_files, decode=not args.no_decode, progress=not args.no_progress
            )
        except DatasetValidationError as exc:
            failed = True
            print(f"featstore dataset validate: error: {where}: {len(exc.problems)} problem(s):", file=sys.stderr)
            for problem in exc.problems:
                print(f"  {problem}", file=sys.stderr)
    if args.json:
        print(json.dumps(summaries, indent=1))
    else:
        for name, s in summaries.items():
            print(
                f"{args.path}{'' if name == 'dataset' else f' [{name}]'}: ok, {s['rows']} rows, {s['images']} images, "
                f"relations {s['relations']}, labels {s['labels']}"
            )
    return 1 if failed else 0


def _cmd_split(args) -> int:
    import datasets

    from ..spatial import SpatialDatasetError, load_from_disk, save_to_disk, split, validate

    ds = load_from_disk(args.path)
    if isinstance(ds, datasets.DatasetDict):
        raise SpatialDatasetError(f"{args.path} is already split ({', '.join(ds)}); split the full dataset instead")
    validate(ds, check_files=False)
    parts = split(ds, seed=args.seed, fractions=args.fractions)
    save_to_disk(parts, args.out, overwrite=args.overwrite)
    sizes = ", ".join(f"{name} {len(part)}" for name, part in parts.items())
    print(f"split {len(ds)} rows of {args.path} by image (seed {args.seed}) into {args.out}: {sizes}")
    return 0

"""The ``featstore`` command line: demo, info, verify, export-pt, import-pt, dataset, extract, probe."""

from __future__ import annotations

import argparse
import json
import os
import sys

from .dataset_cli import add_dataset_commands
from .extract_cli import add_extract_commands
from .probe_cli import add_probe_commands
from .errors import FeatureStoreError


def _cmd_demo(args) -> int:
    from .demo import run_demo

    models = {enc: getattr(args, enc) for enc in ("dinov2", "clip", "qwen") if getattr(args, enc)}
    run_demo(args.out, n_rows=args.rows, seed=args.seed, models=models, layers=args.layers, task=args.task,
             epochs=args.epochs, device=args.device, encoders=args.encoders.split(","))
    return 0


def _cmd_info(args) -> int:
    from .store import FeatureStore

    store = FeatureStore.open(args.root, strict=False)
    rows = []
    for key in store.keys():
        r = store.info(key)
        rows.append({
            "key": key, "shape": list(r.shape), "dtype": r.dtype, "rows_committed": r.rows_committed,
            "complete": r.complete, "labels": r.has_labels, "metadata": r.metadata,
            "problem": str(store.problems[key]) if key in store.problems else None,
        })
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{store.root}: {len(rows)} feature set(s)")
    for r in rows:
        state = "complete" if r["complete"] else f"{r['rows_committed']}/{r['shape'][0]} rows committed"
        problem = f"  PROBLEM: {r['problem']}" if r["problem"] else ""
        print(f"  {r['key']:32} {str(tuple(r['shape'])):>20} {r['dtype']:>9}  {state}{problem}")
        provenance = ", ".join(
            f"{k}={r['metadata'][k]}" for k in ("encoder", "model", "revision", "layer", "pooling") if k in r["metadata"]
        )
        if provenance:
            print(f"  {'':32} {provenance}")
    return 1 if store.problems else 0


def _cmd_verify(args) -> int:
    from .store import FeatureStore

    store = FeatureStore.open(args.root, strict=False)
    summary = store.verify(args.keys or None)
    print(
        f"{store.root}: {summary['feature_sets']} feature set(s) ok, {summary['bytes_checked'] / 1e6:.1f} MB checked"
        + (f", {summary['rows_without_checksum']} committed rows not yet checksummed" if summary["rows_without_checksum"] else "")
    )
    return 0


def _cmd_export(args) -> int:
    from .store import FeatureStore

    print(FeatureStore.open(args.root)[args.key].export_pt(args.out))
    return 0


def _cmd_import(args) -> int:
    from .store import FeatureStore

    fs = FeatureStore.create(args.root).import_pt(args.file, args.key, dtype=args.dtype)
    print(f"imported {args.file} as {fs!r}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="featstore", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="the main job: synthetic dataset, tiny random-init encoders, extraction, probes")
    d.add_argument("--out", default="datasets/demo", help="folder to (re)create (default: %(default)s)")
    d.add_argument("--rows", type=int, default=4000, help="rows of the synthetic dataset (default: %(default)s)")
    d.add_argument("--seed", type=int, default=0)
    for enc in ("dinov2", "clip", "qwen"):
        d.add_argument(f"--{enc}", default=None, metavar="MODEL",
                       help=f"a real {enc} checkpoint (hub id or folder) instead of the tiny random-init one")
    d.add_argument("--encoders", default="dinov2,clip,qwen", help="which encoders run (default: %(default)s)")
    d.add_argument("--layers", default="all", help="layers to extract from each encoder (default: %(default)s)")
    d.add_argument("--task", default="relation", help="probe task (default: %(default)s)")
    d.add_argument("--epochs", type=int, default=10)
    d.add_argument("--device", default="cpu")
    d.set_defaults(func=_cmd_demo)

    i = sub.add_parser("info", help="list a store's feature sets")
    i.add_argument("root")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=_cmd_info)

    v = sub.add_parser("verify", help="recompute checksums; exit 1 naming any damaged feature set")
    v.add_argument("root")
    v.add_argument("keys", nargs="*")
    v.set_defaults(func=_cmd_verify)

    e = sub.add_parser("export-pt", help="write a feature set in the seed .pt format")
    e.add_argument("root")
    e.add_argument("key")
    e.add_argument("--out", default=None, help="default: beside the safetensors file")
    e.set_defaults(func=_cmd_export)

    m = sub.add_parser("import-pt", help="import a seed-format .pt file as a feature set")
    m.add_argument("file")
    m.add_argument("root")
    m.add_argument("key")
    m.add_argument("--dtype", default=None)
    m.set_defaults(func=_cmd_import)
    add_dataset_commands(sub)
    add_extract_commands(sub)
    add_probe_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from .distributed import shutdown

    args = build_parser().parse_args(argv)
    where = f" (rank {os.environ.get('RANK', '?')})" if os.environ.get("WORLD_SIZE", "1") not in ("", "1") else ""
    try:
        return args.func(args)
    except FeatureStoreError as exc:
        print(f"featstore {args.command}{where}: error: {exc}", file=sys.stderr)
        return 1
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"featstore {args.command}{where}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        shutdown()  # the torch.distributed process group, if a command started one under torchrun


if __name__ == "__main__":
    sys.exit(main())

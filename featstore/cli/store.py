"""``featstore info``, ``verify``, ``export-pt`` and ``import-pt``: a store's contents, checks and the
seed's ``.pt`` format, from the shell."""

from __future__ import annotations

import json
from typing import Any


def add_store_commands(sub) -> None:
    """Add the store commands to the ``featstore`` parser's subcommands."""
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


def _cmd_info(args) -> int:
    from ..store import FeatureStore

    store = FeatureStore.open(args.root, strict=False)
    rows: list[dict[str, Any]] = []
    for key in store.keys():
        rec = store.info(key)
        rows.append(
            {
                "key": key,
                "shape": list(rec.shape),
                "dtype": rec.dtype,
                "rows_committed": rec.rows_committed,
                "complete": rec.complete,
                "labels": rec.has_labels,
                "metadata": rec.metadata,
                "problem": str(store.problems[key]) if key in store.problems else None,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{store.root}: {len(rows)} feature set(s)")
    for r in rows:
        state = "complete" if r["complete"] else f"{r['rows_committed']}/{r['shape'][0]} rows committed"
        problem = f"  PROBLEM: {r['problem']}" if r["problem"] else ""
        print(f"  {r['key']:32} {tuple(r['shape'])!s:>20} {r['dtype']:>9}  {state}{problem}")
        provenance = ", ".join(
            f"{k}={r['metadata'][k]}"
            for k in ("encoder", "model", "revision", "layer", "pooling")
            if k in r["metadata"]
        )
        if provenance:
            print(f"  {'':32} {provenance}")
    return 1 if store.problems else 0


def _cmd_verify(args) -> int:
    from ..store import FeatureStore

    store = FeatureStore.open(args.root, strict=False)
    summary = store.verify(args.keys or None)
    print(
        f"{store.root}: {summary['feature_sets']} feature set(s) ok, {summary['bytes_checked'] / 1e6:.1f} MB checked"
        + (
            f", {summary['rows_without_checksum']} committed rows not yet checksummed"
            if summary["rows_without_checksum"]
            else ""
        )
    )
    return 0


def _cmd_export(args) -> int:
    from ..store import FeatureStore

    print(FeatureStore.open(args.root)[args.key].export_pt(args.out))
    return 0


def _cmd_import(args) -> int:
    from ..store import FeatureStore

    fs = FeatureStore.create(args.root).import_pt(args.file, args.key, dtype=args.dtype)
    print(f"imported {args.file} as {fs!r}")
    return 0

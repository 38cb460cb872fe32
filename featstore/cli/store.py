"""``featstore info``, ``verify``, ``delete``, ``export-pt`` and ``import-pt``: a store's contents, its
checks, removing feature sets, and the ``.pt`` export format, from the shell. Each takes the store
first: ``featstore COMMAND STORE ...``."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

STORE_HELP = "the store: a folder holding featstore.json"


def add_store_argument(parser, **kwargs) -> None:
    """The STORE argument every command that works on a store takes first (one name and form for all)."""
    parser.add_argument("store", metavar="STORE", help=kwargs.pop("help", STORE_HELP), **kwargs)


def add_store_commands(sub) -> None:
    """Add the store commands to the ``featstore`` parser's subcommands."""
    i = sub.add_parser(
        "info",
        help="list a store's feature sets, shapes, progress and problems",
        description="List the feature sets of STORE: key, shape, dtype, committed rows or 'complete', "
        "provenance. A broken set is listed with its problem, and the status is then 1.",
    )
    add_store_argument(i)
    i.add_argument("--json", action="store_true", help="print a JSON list instead of a table (default: a table)")
    i.set_defaults(func=_cmd_info)

    v = sub.add_parser(
        "verify",
        help="recompute checksums; exit 1 naming any damaged feature set",
        description="Recompute the checksums of every feature set of STORE (or of the KEYs given): "
        "headers, row blocks, labels, .pt exports.",
    )
    add_store_argument(v)
    v.add_argument("keys", nargs="*", metavar="KEY", help="feature-set keys to check (default: every set)")
    v.set_defaults(func=_cmd_verify)

    d = sub.add_parser(
        "delete",
        help="remove feature sets (broken ones too): manifest entry first, then the files",
        description="Remove each KEY from STORE: its manifest entry (atomically), then its .safetensors "
        "file and .pt export. Works on broken sets (a missing or damaged file). Every KEY must exist, "
        "else nothing is removed.",
    )
    add_store_argument(d)
    d.add_argument("keys", nargs="+", metavar="KEY", help="feature-set keys to remove")
    d.set_defaults(func=_cmd_delete)

    e = sub.add_parser(
        "export-pt",
        help="write a feature set in the .pt export format",
        description="Write feature set KEY of STORE as a .pt export: {'features', 'labels', 'metadata'}, "
        "loadable with torch.load(weights_only=True); prints its path.",
    )
    add_store_argument(e)
    e.add_argument("key", metavar="KEY", help="the feature set to export")
    e.add_argument("--out", default=None, help="the file to write (default: <key>.pt beside its safetensors file)")
    e.set_defaults(func=_cmd_export)

    m = sub.add_parser(
        "import-pt",
        help="import a file in the .pt export format as a feature set",
        description="Import FILE (the .pt export format, loaded with torch.load(weights_only=True) only) "
        "as the finished feature set KEY of STORE, which is created when missing.",
    )
    add_store_argument(m, help="the store to import into (created when missing)")
    m.add_argument("key", metavar="KEY", help="the key of the new feature set, e.g. dinov2/layer_10")
    m.add_argument("file", metavar="FILE", help="the .pt file to import")
    m.add_argument("--dtype", default=None, help="store the features as this dtype (default: the file's dtype)")
    m.set_defaults(func=_cmd_import)


def open_store(root: str):
    """The store at ``root``, broken sets included (listed in ``store.problems``)."""
    from ..store import FeatureStore

    return FeatureStore.open(root, strict=False)


def note_skipped(command: str, store, keys=None) -> None:
    """Say on stderr which broken sets a command left alone (of ``keys``, default all)."""
    skipped = [k for k in (keys if keys is not None else store.problems) if k in store.problems]
    if skipped:
        print(
            f"featstore {command}: skipped {len(skipped)} broken feature set(s): {', '.join(skipped)} "
            f"(`featstore verify {store.root}` says what is wrong; `featstore delete {store.root} KEY` removes one)",
            file=sys.stderr,
        )


def _stored(rec) -> dict[str, Any]:
    """What a set stores: ``stored_bytes`` (its codes or rows, and its scales), and ``quant`` (scheme,
    logical dtype, the logical rows' bytes) or None."""
    from ..store.header import itemsize

    layout = rec.layout
    stored = layout.features_bytes + layout.scales_bytes
    if rec.quant is None:
        return {"stored_bytes": stored, "quant": None}
    logical = math.prod(rec.shape) * itemsize(rec.quant.dtype)
    return {
        "stored_bytes": stored,
        "quant": {"scheme": rec.quant.scheme, "dtype": rec.quant.dtype, "logical_bytes": logical},
    }


def _cmd_info(args) -> int:
    store = open_store(args.store)
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
                **_stored(rec),
            }
        )
    if args.json:
        print(json.dumps(rows, indent=1))
        return 1 if store.problems else 0
    print(f"{store.root}: {len(rows)} feature set(s)")
    for r in rows:
        state = "complete" if r["complete"] else f"{r['rows_committed']}/{r['shape'][0]} rows committed"
        problem = f"  PROBLEM: {r['problem']}" if r["problem"] else ""
        print(f"  {r['key']:32} {tuple(r['shape'])!s:>20} {r['dtype']:>9}  {state}{problem}")
        if r["quant"] is not None:
            q = r["quant"]
            print(
                f"  {'':32} quantised: {q['scheme']} codes + float32 scales of {q['dtype']} rows, "
                f"{r['stored_bytes'] / 1e6:.2f} MB stored ({q['dtype']} rows: {q['logical_bytes'] / 1e6:.2f} MB)"
            )
        provenance = ", ".join(
            f"{k}={r['metadata'][k]}"
            for k in ("encoder", "model", "revision", "layer", "pooling")
            if k in r["metadata"]
        )
        if provenance:
            print(f"  {'':32} {provenance}")
    if store.problems:
        print(
            f"featstore info: {len(store.problems)} broken feature set(s); `featstore delete {store.root} KEY` "
            "removes one",
            file=sys.stderr,
        )
    return 1 if store.problems else 0


def _cmd_verify(args) -> int:
    store = open_store(args.store)
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


def _cmd_delete(args) -> int:
    store = open_store(args.store)
    for key in args.keys:
        store.info(key)  # every key exists, or nothing is removed
    for key in dict.fromkeys(args.keys):
        file = store.info(key).file
        store.delete(key)
        print(f"deleted {key} ({file}) from {store.root}")
    return 0


def _cmd_export(args) -> int:
    store = open_store(args.store)
    print(store[args.key].export_pt(args.out))
    return 0


def _cmd_import(args) -> int:
    from ..store import FeatureStore
    from ..store.format import check_key

    if args.store.endswith(".pt") and Path(args.store).is_file() and not Path(args.file).is_file():
        raise ValueError(
            f"{args.store} is a .pt file, but the store comes first: featstore import-pt STORE KEY FILE "
            f"(here: featstore import-pt {args.key} {args.file} {args.store})"
        )
    check_key(args.key)
    if not Path(args.file).is_file():
        what = "is a folder, not a .pt file" if Path(args.file).is_dir() else "does not exist"
        raise ValueError(f"{args.file} {what}; give the path of a .pt file to import")
    fs = FeatureStore.create(args.store, strict=False).import_pt(args.file, args.key, dtype=args.dtype)
    print(f"imported {args.file} as {fs!r}")
    return 0

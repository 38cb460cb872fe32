"""``featstore convert SRC DST --dtype int8``: a new store holding SRC's feature sets as another dtype
(compact int8 / float8_e4m3, or back to float16), provenance carried over and the conversion recorded."""

from __future__ import annotations

from .store import add_store_argument


def add_convert_command(sub) -> None:
    """Add ``convert`` to the ``featstore`` parser's subcommands."""
    c = sub.add_parser(
        "convert",
        help="copy a store's feature sets into a new store as another dtype (e.g. compact int8)",
        description="Write every complete feature set of STORE (or the --keys given) into the new store DST "
        "as --dtype: int8 or float8_e4m3 (quantised, one float32 scale per vector, see "
        "docs/compact-storage.md), or a plain dtype such as float16 (a quantised set is dequantised). "
        "Each set keeps its provenance; its metadata lists the conversion under 'conversions'. DST must "
        "not exist yet or be an empty folder.",
    )
    add_store_argument(c, help="the source store (SRC): a folder holding featstore.json")
    c.add_argument("dst", metavar="DST", help="the new store to write (a new or empty folder)")
    c.add_argument("--dtype", required=True, help="int8, float8_e4m3, float16, bfloat16 or float32 (required)")
    c.add_argument(
        "--keys", nargs="+", metavar="KEY", default=None, help="sets to convert (default: every complete set)"
    )
    c.set_defaults(func=_cmd_convert)


def _cmd_convert(args) -> int:
    from ..store.convert import convert_store

    store = convert_store(args.store, args.dst, args.dtype, keys=args.keys)
    for key in store.keys():
        fs = store[key]
        print(f"{key}: {fs!r} -> {store.root}")
    return 0

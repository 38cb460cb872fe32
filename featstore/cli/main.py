"""The ``featstore`` command line: demo, info, verify, export-pt, import-pt, dataset, extract, probe, compare."""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import FeatureStoreError
from .compare import add_compare_command
from .dataset import add_dataset_commands
from .demo import add_demo_command
from .extract import add_extract_commands
from .probe import add_probe_commands
from .store import add_store_commands


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="featstore", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    add_demo_command(sub)
    add_store_commands(sub)
    add_dataset_commands(sub)
    add_extract_commands(sub)
    add_probe_commands(sub)
    add_compare_command(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from ..distributed import shutdown

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

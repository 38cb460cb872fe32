"""The ``featstore`` command line: every command, and the one place where errors become one line and
an exit status (see :data:`EXIT_CODES`)."""

from __future__ import annotations

import argparse
import os
import sys
from importlib.metadata import PackageNotFoundError, version

from ..errors import ExtractionInterrupted, FeatureStoreError
from .compare import add_compare_command
from .convert import add_convert_command
from .dataset import add_dataset_commands
from .demo import add_demo_command
from .extract import add_extract_commands
from .probe import add_probe_commands
from .store import add_store_commands

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 0, 1, 2, 130, 141
EXIT_CODES = {
    EXIT_OK: "the work was done",
    EXIT_FAILED: "the work failed (a featstore error, or an operating-system error such as a full disk)",
    EXIT_USAGE: "usage: a bad or missing argument, a path that does not exist",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C, SIGINT)",
    EXIT_BROKEN_PIPE: "the reader of the output went away (`featstore info --json | head`)",
}

DESCRIPTION = """\
featstore: extract per-layer features of vision encoders into safetensors files, and train probes on them.

Every command that works on a store takes it as its first argument, STORE (a folder holding
featstore.json). `featstore COMMAND --help` describes a command and its options, with defaults.
Exit status: 0 ok, 1 the work failed, 2 usage, 130 interrupted.
"""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the descriptions' line breaks; wide enough for featstore's option names."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)


def featstore_version() -> str:
    """The installed featstore's version."""
    try:
        return version("featstore")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """The ``featstore`` parser with every command."""
    p = argparse.ArgumentParser(prog="featstore", description=DESCRIPTION, formatter_class=HelpFormatter)
    p.add_argument("--version", action="version", version=f"featstore {featstore_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")
    add_demo_command(sub)
    add_store_commands(sub)
    add_dataset_commands(sub)
    add_extract_commands(sub)
    add_probe_commands(sub)
    add_compare_command(sub)
    add_convert_command(sub)
    return p


def error_line(exc: BaseException) -> str:
    """The one-line message of an error: featstore's own message, or the path and the reason of an
    operating-system error (never its ``[Errno N]``)."""
    if isinstance(exc, FileNotFoundError) and exc.filename is not None:
        return f"{exc.filename} does not exist"
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror[0].lower()}{exc.strerror[1:]}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    """Run one ``featstore`` command; returns its exit status."""
    from ..distributed import shutdown

    args = build_parser().parse_args(argv)
    rank = f" (rank {os.environ.get('RANK', '?')})" if os.environ.get("WORLD_SIZE", "1") not in ("", "1") else ""
    sub = getattr(args, "dataset_command", None)
    prog = f"featstore {args.command}{f' {sub}' if sub else ''}{rank}"

    def fail(message: str, status: int) -> int:
        print(f"{prog}: {message}", file=sys.stderr)
        return status

    finished = False
    try:
        status = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        finished = status == 0
        return status
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the flush at exit does not complain again
        return EXIT_BROKEN_PIPE
    except ExtractionInterrupted as exc:
        return fail(f"interrupted: {exc}", EXIT_INTERRUPTED)
    except KeyboardInterrupt:
        what = "rows committed before it stay committed; rerun the same command to resume"
        return fail(f"interrupted; {what}" if args.command == "extract" else "interrupted", EXIT_INTERRUPTED)
    except FeatureStoreError as exc:
        return fail(f"error: {error_line(exc)}", EXIT_FAILED)
    except (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, ValueError) as exc:
        return fail(f"error: {error_line(exc)}", EXIT_USAGE)
    except OSError as exc:
        return fail(f"error: {error_line(exc)}", EXIT_FAILED)
    finally:
        shutdown(wait_for_ranks=finished)  # the torch.distributed process group, if a command started one


if __name__ == "__main__":
    sys.exit(main())

"""Shared pieces of the reliability scripts: paths, JSON results, checking a store against a reference."""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"
TEST_HELPERS = (TESTS, TESTS / "store")  # _encoder_models.py; crash_writer.py, malformed_corpus.py
for _folder in TEST_HELPERS:
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))


def child_env(**extra: str) -> dict[str, str]:
    """Environment of a killed child: one thread, offline hub, no crash point unless asked."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    env.pop("FEATSTORE_CRASH_AT", None)
    env.update(extra)
    return env


def safetensors_bytes(root: Path) -> dict[str, bytes]:
    """Every feature-set file of a store, by path relative to the root."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.safetensors"))}


def check_against_reference(root: Path, reference) -> int:
    """The store a killed writer left opens (strict), verifies, and every committed row and every
    header equals the reference store's. Returns the rows committed in it. Raises on any problem."""
    from featstore import FeatureStore

    if not (root / "featstore.json").exists():
        return 0  # killed before the store existed: nothing was promised
    store = FeatureStore.open(root)
    store.verify()
    rows = 0
    for key in store.keys():
        part, ref = store.get(key, allow_incomplete=True), reference[key]
        if part.path.read_bytes()[: part.header.data_start] != ref.path.read_bytes()[: ref.header.data_start]:
            raise AssertionError(f"{key}: header differs from the reference")
        for a, b in part.committed_ranges:
            if not np.array_equal(part[a:b].view(-1).numpy(), ref[a:b].view(-1).numpy()):
                raise AssertionError(f"{key}: committed rows {a}..{b} differ from the reference")
            rows += b - a
        if part.complete and part.labels is not None and not np.array_equal(part.labels, ref.labels):
            raise AssertionError(f"{key}: labels differ from the reference")
    return rows


def add_output_options(parser) -> None:
    """The options every reliability script has: --json, --workdir, --quiet."""
    parser.add_argument("--json", default=None, help="write the figures here")
    parser.add_argument("--workdir", default=None, help="where the stores go (a fresh temp folder inside it)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def progress_logger(quiet: bool):
    """A print to stderr for progress lines, or a no-op with --quiet."""
    return (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))


def write_results(path: str | None, name: str, command: str, results: dict) -> None:
    """Print the results and, with ``path``, write them as JSON with the command and the date."""
    doc = {
        "benchmark": name,
        "command": command,
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        **results,
    }
    text = json.dumps(doc, indent=1)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text + "\n")
    print(text)

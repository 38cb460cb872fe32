"""A writer process for the crash tests: fills a feature set chunk by chunk (resuming if needed).

Usage: python crash_writer.py ROOT N_ROWS CHUNK [--slow SECONDS]. Kill it at any moment; running it
again continues from the committed rows and must end bit-identical to an uninterrupted run.
"""

import sys
import time

import numpy as np

from featstore import FeatureStore

KEY, DIM = "enc/layer_7", 48


def chunk_rows(start: int, stop: int) -> np.ndarray:
    return np.random.default_rng([7, start]).standard_normal((stop - start, DIM)).astype(np.float16)


def fill(root: str, n_rows: int, chunk: int, slow: float = 0.0, announce: bool = False) -> None:
    """Create or resume the feature set and write its missing chunks in a fixed shuffled order
    (with ``announce``, print "writing" once the writer is open: its imports are done)."""
    labels = np.arange(n_rows) % 4
    store = FeatureStore.create(root)
    if KEY in store and store.info(KEY).complete:
        return  # finished by an earlier run
    writer = store.create_feature_set(KEY, n_rows, (DIM,), "float16", {"model": "test"}, labels, resume=True)
    starts = np.random.default_rng(1).permutation(range(0, n_rows, chunk))  # any order
    missing = writer.missing_ranges()
    if announce:
        print("writing", flush=True)
    for start in starts:
        stop = min(n_rows, start + chunk)
        if any(a <= start and stop <= b for a, b in missing):
            writer.write(int(start), chunk_rows(start, stop))
            writer.commit()
            time.sleep(slow)
    writer.finish()


def main() -> None:
    root, n_rows, chunk = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    slow = float(sys.argv[5]) if len(sys.argv) > 5 and sys.argv[4] == "--slow" else 0.0
    fill(root, n_rows, chunk, slow, announce=True)


if __name__ == "__main__":
    main()

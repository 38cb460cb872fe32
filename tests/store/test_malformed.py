"""Malformed input: every case of tests/store/malformed_corpus.py fails with a featstore error that names
the file and the field, allocates nothing sized by the untrusted numbers, and never runs code.

Timings (the issue asks for < 10 ms a case) are measured by benchmarks/reliability/malformed.py.
"""

from __future__ import annotations

import re
import shutil
import tracemalloc

import pytest
import torch
from malformed_corpus import CASES, make_valid_store

from featstore import FeatureStoreError

torch.set_num_threads(1)

# Building the TorchScript cases warns that torch.jit is deprecated; loading them, that torch.load saw TorchScript.
pytestmark = [
    pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:'torch.load' received a zip file:UserWarning"),
]

PEAK_LIMIT = 1 << 20  # bytes of Python allocations while one case fails


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 60 and len({c.name for c in CASES}) == len(CASES)


@pytest.fixture(scope="module")
def valid_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("valid") / "store"
    make_valid_store(root)
    return root


@pytest.mark.damages_store  # the cases make files writable to damage them
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_malformed_input_is_a_clear_error(case, valid_store, tmp_path):
    root = tmp_path / "store"
    shutil.copytree(valid_store, root, symlinks=True)
    canary = tmp_path / "canary"
    call = case.make(root, canary)

    tracemalloc.start()
    try:
        with pytest.raises(FeatureStoreError) as info:
            call()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    message = str(info.value)
    assert isinstance(info.value, case.error), f"{type(info.value).__name__}: {message}"
    assert re.search(case.file, message), f"message does not name the file: {message}"
    assert re.search(case.field, message), f"message does not name the field ({case.field}): {message}"
    assert peak < PEAK_LIMIT, f"{peak} bytes allocated while failing"
    assert not canary.exists(), "code from the file ran"

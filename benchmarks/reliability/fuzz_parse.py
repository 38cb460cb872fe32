"""atheris fuzz target for featstore's parsing of untrusted bytes: safetensors headers and manifests.

The first input byte picks the parser; the rest is the file. Any exception other than a featstore
error (FeatureStoreError) is a finding, and so is a hang or a crash. Run through
benchmarks/reliability/fuzzing.py (which also writes the seed corpus), or by hand:
    python benchmarks/reliability/fuzz_parse.py -runs=100000 CORPUS_DIR
"""

from __future__ import annotations

import sys
import types

import atheris

from featstore import format as fmt
from featstore.errors import FeatureStoreError


def _instrument_module(module) -> int:
    """Add coverage instrumentation to every function and method defined in ``module``.

    (atheris.instrument_imports skips modules found by the editable install's import hook, and
    instrument_all() would instrument torch too.) Module-level names are rebound, so calls inside the
    module reach the instrumented versions. Returns how many functions were instrumented."""
    count = 0
    for name, value in list(vars(module).items()):
        if isinstance(value, types.FunctionType) and value.__module__ == module.__name__:
            setattr(module, name, atheris.instrument_func(value))
            count += 1
        elif isinstance(value, type) and value.__module__ == module.__name__:
            for attr, member in list(vars(value).items()):
                func = member.__func__ if isinstance(member, (classmethod, staticmethod)) else member
                if isinstance(func, types.FunctionType):
                    wrapped = atheris.instrument_func(func)
                    setattr(value, attr, type(member)(wrapped) if func is not member else wrapped)
                    count += 1
    return count


INSTRUMENTED = _instrument_module(fmt)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    body = data[1:]
    try:
        if data[0] & 1:
            header = fmt.parse_header("fuzz.safetensors", body, len(body))
            assert header.data_start + sum(t.end - t.begin for t in header.tensors.values()) == len(body)
        else:
            fmt.parse_manifest(body, "fuzz/featstore.json")
    except FeatureStoreError:
        pass


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()

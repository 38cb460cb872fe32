"""atheris fuzz target for featstore's parsing of untrusted bytes: safetensors headers and manifests.

The first input byte picks the parser; the rest is the file. Any exception other than a featstore
error (FeatureStoreError) is a finding, and so is a hang or a crash. Run through
benchmarks/reliability/fuzzing.py (which also writes the seed corpus), or by hand:
    python benchmarks/reliability/fuzz_parse.py -runs=100000 CORPUS_DIR
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["featstore.format", "json"]):
    from featstore import format as fmt
    from featstore.errors import FeatureStoreError


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

"""atheris fuzz target for featstore's parsing of untrusted bytes: safetensors headers and manifests.

The first input byte picks the parser and the mode. Raw modes pass the rest of the input as the
file's bytes (finds byte-level bugs: lengths, encodings, syntax). Structured modes take a valid
header or manifest and replace a few fields, chosen by the input, with JSON values the input builds
(lists where strings belong, huge or negative numbers, nesting, unknown keys): byte mutations alone
rarely produce such well-formed but wrong JSON. Any exception other than a featstore error
(FeatureStoreError) is a finding, and so is a hang or a crash. Run through
tests/store/fuzzing.py (which also writes the seed corpus), or by hand:
    python tests/store/fuzz_parse.py -runs=100000 CORPUS_DIR
"""

from __future__ import annotations

import json
import struct
import sys
import types

import atheris

from featstore.errors import FeatureStoreError
from featstore.store import format as fmt


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


_HEADER = {
    "__metadata__": {"format": "pt"},
    "features": {"dtype": "F16", "shape": [10, 4], "data_offsets": [0, 80]},
    "labels": {"dtype": "I64", "shape": [10], "data_offsets": [80, 160]},
}
_RECORD = {
    "file": "enc/layer_1.safetensors",
    "dtype": "float16",
    "shape": [10, 4],
    "labels": True,
    "rows_committed": 10,
    "committed": [[0, 10]],
    "complete": True,
    "metadata": {"seed": 0},
    "created_at": 1.0,
    "finished_at": 2.0,
    "checksum": {"algorithm": "crc32", "block_rows": 4, "blocks": [1, 2, 3], "labels": 4, "header": 5},
}
_MANIFEST = {"format": "featstore", "format_version": 1, "feature_sets": {"enc/layer_1": _RECORD}}
_WORDS = [
    "features",
    "labels",
    "dtype",
    "shape",
    "data_offsets",
    "F16",
    "I64",
    "BOOL",
    "float16",
    "int64",
    "file",
    "committed",
    "checksum",
    "blocks",
    "block_rows",
    "header",
    "format",
    "featstore",
    "../x",
    "/x",
    "a\\b",
    "",
]


def _value(fdp: atheris.FuzzedDataProvider, depth: int = 0):
    """A JSON value built from the input: numbers at the edges, words of the format, lists, objects."""
    kind = fdp.ConsumeIntInRange(0, 9 if depth < 3 else 5)
    if kind == 0:
        return fdp.ConsumeIntInRange(-3, 300)
    if kind == 1:
        return fdp.PickValueInList([2**31, 2**32, 2**53 + 1, 2**62, 2**63, 2**64, 2**64 + 80, -(2**63), 10**30])
    if kind == 2:
        return fdp.PickValueInList(_WORDS)
    if kind == 3:
        return fdp.PickValueInList([None, True, False, 0.5, 1e308, -0.0])
    if kind == 4:
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 12))
    if kind == 5:
        return []
    if kind in (6, 7):
        return [_value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 4))]
    return {fdp.PickValueInList(_WORDS): _value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 3))}


def _mutate(obj, fdp: atheris.FuzzedDataProvider):
    """Replace, delete or add a few fields anywhere in the nested ``obj`` (a deep copy is changed)."""
    obj = json.loads(json.dumps(obj))
    for _ in range(fdp.ConsumeIntInRange(1, 4)):
        node = obj
        while isinstance(node, (dict, list)) and node and fdp.ConsumeBool():
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            child = node[fdp.PickValueInList(keys)]
            if not isinstance(child, (dict, list)):
                break
            node = child
        if isinstance(node, dict):
            keys = list(node) + _WORDS
            key = fdp.PickValueInList(keys)
            if key in node and fdp.ConsumeIntInRange(0, 4) == 0:
                del node[key]
            else:
                node[key] = _value(fdp)
        elif isinstance(node, list):
            if node and fdp.ConsumeBool():
                node[fdp.ConsumeIntInRange(0, len(node) - 1)] = _value(fdp)
            else:
                node.append(_value(fdp))
    return obj


def _check_header(body: bytes) -> None:
    header = fmt.parse_header("fuzz.safetensors", body, len(body))
    # what parse_header promises: the tensors tile the data section exactly
    assert header.data_start + sum(t.end - t.begin for t in header.tensors.values()) == len(body)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode, body = data[0] % 4, data[1:]
    try:
        if mode == 0:
            _check_header(body)
        elif mode == 1:
            fmt.parse_manifest(body, "fuzz/featstore.json")
        else:
            fdp = atheris.FuzzedDataProvider(body)
            if mode == 2:
                text = json.dumps(_mutate(_HEADER, fdp)).encode()
                _check_header(struct.pack("<Q", len(text)) + text + b"\0" * fdp.ConsumeIntInRange(0, 200))
            else:
                fmt.parse_manifest(json.dumps(_mutate(_MANIFEST, fdp)).encode(), "fuzz/featstore.json")
    except FeatureStoreError:
        pass


def main() -> None:
    _instrument_module(fmt)  # only when fuzzing: importing this file (tests do) changes nothing
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()

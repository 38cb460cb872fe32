"""Opening a damaged store: every problem is a featstore error at open that names the file."""

from __future__ import annotations

import json
import os
import struct

import pytest
import torch
from _util import damaged_store, edit_manifest, make_store

from featstore import CorruptFileError, FeatureStore, FormatError, FormatVersionError

torch.set_num_threads(1)
pytestmark = pytest.mark.damages_store  # the tests make files writable to damage them


def _rewrite_header(fn):
    def mutate(path, manifest):
        raw = path.read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8 : 8 + n])
        fn(header)
        body = json.dumps(header).encode().ljust(n)
        path.write_bytes(raw[:8] + body + raw[8 + n :])

    return mutate


CASES = {
    "truncated": (lambda p, m: os.truncate(p, os.path.getsize(p) - 3), CorruptFileError, "trailing|truncated"),
    "too short": (lambda p, m: os.truncate(p, 5), CorruptFileError, "too short"),
    "huge header length": (
        lambda p, m: p.write_bytes(struct.pack("<Q", 1 << 60) + p.read_bytes()[8:]),
        CorruptFileError,
        "header length",
    ),
    "header longer than file": (
        lambda p, m: p.write_bytes(struct.pack("<Q", 10**6) + p.read_bytes()[8:]),
        CorruptFileError,
        "only",
    ),
    "not json": (
        lambda p, m: p.write_bytes(p.read_bytes()[:8] + b"{nope" + p.read_bytes()[13:]),
        CorruptFileError,
        "not valid JSON",
    ),
    "not utf8": (
        lambda p, m: p.write_bytes(p.read_bytes()[:8] + b"{\xff" + p.read_bytes()[10:]),
        CorruptFileError,
        "UTF-8",
    ),
    "trailing bytes": (lambda p, m: p.write_bytes(p.read_bytes() + b"xx"), CorruptFileError, "trailing bytes"),
    "missing file": (lambda p, m: p.unlink(), FormatError, "is missing"),
    "dtype disagrees": (edit_manifest(lambda e, o: e.update(dtype="float32")), FormatError, "dtype"),
    "shape disagrees": (edit_manifest(lambda e, o: e.update(shape=[10, 2])), FormatError, "shape"),
    "path leaves root": (
        edit_manifest(lambda e, o: e.update(file="../x.safetensors")),
        FormatError,
        "leaves the store root",
    ),
    "absolute path": (edit_manifest(lambda e, o: e.update(file="/etc/passwd")), FormatError, "leaves the store root"),
    "newer format": (edit_manifest(lambda e, o: o.update(format_version=99)), FormatVersionError, "upgrade featstore"),
    "bad committed ranges": (edit_manifest(lambda e, o: e.update(committed=[[0, 99]])), FormatError, "committed"),
    "unknown dtype in header": (
        _rewrite_header(lambda h: h["features"].update(dtype="Q9")),
        CorruptFileError,
        "unknown dtype",
    ),
    "offsets disagree with shape": (
        _rewrite_header(lambda h: h["features"].update(shape=[10, 5])),
        CorruptFileError,
        "span",
    ),
    "header bit flip": (
        _rewrite_header(lambda h: h["__metadata__"].update({"featstore.key": "enc/layer_2"})),
        CorruptFileError,
        "checksum",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_damage_is_a_clear_error_at_open(tmp_path, case):
    mutate, error, message = CASES[case]
    damaged_store(tmp_path, mutate)
    with pytest.raises(error, match=message) as info:
        FeatureStore.open(tmp_path)
    assert "layer_1" in str(info.value) or "featstore.json" in str(info.value) or "x.safetensors" in str(info.value)


def test_non_strict_open_lists_problems_and_keeps_the_rest(tmp_path):
    store, _, _ = make_store(tmp_path, key="enc/ok", n_rows=10, row_shape=(4,))
    make_store(tmp_path, key="enc/bad", n_rows=10, row_shape=(4,))
    os.chmod(tmp_path / "enc" / "bad.safetensors", 0o644)
    os.truncate(tmp_path / "enc" / "bad.safetensors", 100)
    store = FeatureStore.open(tmp_path, strict=False)
    assert list(store.problems) == ["enc/bad"]
    assert store["enc/ok"][0].shape == (4,)
    with pytest.raises(CorruptFileError, match="bad.safetensors"):
        store["enc/bad"]


def test_symlink_out_of_the_root_is_refused(tmp_path):
    outside = tmp_path / "outside"
    make_store(outside, n_rows=4, row_shape=(2,))
    root = tmp_path / "root"
    make_store(root, n_rows=4, row_shape=(2,))
    target = root / "enc" / "layer_1.safetensors"
    os.chmod(target, 0o644)
    target.unlink()
    target.symlink_to(outside / "enc" / "layer_1.safetensors")
    with pytest.raises(FormatError, match="outside the store root"):
        FeatureStore.open(root)


def test_not_a_store(tmp_path):
    with pytest.raises(FormatError, match="not a featstore store"):
        FeatureStore.open(tmp_path)
    (tmp_path / "featstore.json").write_text("[1, 2")
    with pytest.raises(CorruptFileError, match="featstore.json"):
        FeatureStore.open(tmp_path)

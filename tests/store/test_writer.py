"""Writing: preallocated safetensors files, any-order row ranges, commits, finish, resume, conflicts."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
import torch
from _util import make_store, rows_for
from safetensors.torch import load_file

from featstore import (
    FeatureStore,
    IncompleteFeatureSetError,
    VerificationError,
    WriterConflictError,
)
from featstore.store import format as fmt

torch.set_num_threads(1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("row_shape", [(24,), (5, 12), (3,), ()])
def test_round_trip_is_bit_exact_with_safetensors(tmp_path, dtype, row_shape):
    store, data, labels = make_store(tmp_path, n_rows=37, row_shape=row_shape, dtype=dtype)
    loaded = load_file(tmp_path / "enc" / "layer_1.safetensors")
    assert loaded["features"].dtype == dtype
    assert torch.equal(loaded["features"].view(torch.uint8), data.view(torch.uint8))
    assert torch.equal(loaded["labels"], torch.from_numpy(labels))
    fs = store["enc/layer_1"]
    assert torch.equal(fs.to_torch().view(torch.uint8), data.view(torch.uint8))
    assert fs.shape == (37, *row_shape) and fs.dtype == dtype and len(fs) == 37


def test_data_section_is_page_aligned_and_header_repeats_provenance(tmp_path):
    make_store(tmp_path, row_shape=(7,))
    header, raw = fmt.read_header(tmp_path / "enc" / "layer_1.safetensors")
    assert header.data_start % 4096 == 0 and len(raw) == header.data_start
    assert header.metadata["featstore.key"] == "enc/layer_1"
    assert json.loads(header.metadata["featstore.metadata"]) == {"seed": 0}


def test_rows_in_any_order_and_commit_is_recorded(tmp_path):
    store = FeatureStore.create(tmp_path)
    data = rows_for(0, 100, (8,))
    w = store.create_feature_set("a/b", 100, (8,), "float16")
    for start in (60, 0, 30, 90):
        w.write(start, data[start : start + (10 if start == 90 else 30)])
        w.commit()
    assert w.committed_ranges == [(0, 100)]
    w.finish()
    assert torch.equal(FeatureStore.open(tmp_path)["a/b"][:], data)
    entry = json.loads((tmp_path / "featstore.json").read_text())["feature_sets"]["a/b"]
    assert entry["complete"] and entry["rows_committed"] == 100
    assert all(isinstance(c, int) for c in entry["checksum"]["blocks"])


def test_committed_rows_are_never_written_again(tmp_path):
    store = FeatureStore.create(tmp_path)
    w = store.create_feature_set("a/b", 10, (4,), "float32")
    w.write(0, torch.zeros(5, 4))
    w.write(0, torch.ones(5, 4))  # not committed yet: may be rewritten
    w.commit()
    with pytest.raises(WriterConflictError, match="overlap committed rows 0..5"):
        w.write(4, torch.ones(2, 4))
    w.write(5, torch.ones(5, 4))
    w.finish()
    assert torch.equal(FeatureStore.open(tmp_path)["a/b"][:5], torch.ones(5, 4))


def test_write_rejects_bad_rows(tmp_path):
    w = FeatureStore.create(tmp_path).create_feature_set("a/b", 10, (4,), "float16")
    with pytest.raises(ValueError, match=r"shape \(k, 4\)"):
        w.write(0, torch.zeros(2, 5, dtype=torch.float16))
    with pytest.raises(TypeError, match="stores float16, got float32"):
        w.write(0, torch.zeros(2, 4))
    with pytest.raises(IndexError, match="outside its 10 rows"):
        w.write(9, torch.zeros(2, 4, dtype=torch.float16))


def test_finish_requires_every_row_and_makes_the_file_read_only(tmp_path):
    store = FeatureStore.create(tmp_path)
    w = store.create_feature_set("a/b", 10, (4,), "float16")
    w.write(0, torch.zeros(6, 4, dtype=torch.float16))
    with pytest.raises(IncompleteFeatureSetError, match=r"\(6, 10\)"):
        w.finish()
    w.write(6, torch.zeros(4, 4, dtype=torch.float16))
    w.finish()
    mode = os.stat(tmp_path / "a" / "b.safetensors").st_mode
    assert not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    with pytest.raises(WriterConflictError, match="already complete"):
        store.create_feature_set("a/b", 10, (4,), "float16", resume=True)


def test_incomplete_set_is_resumable_and_readable_only_where_committed(tmp_path):
    store = FeatureStore.create(tmp_path)
    data = rows_for(0, 40, (4,))
    w = store.create_feature_set("a/b", 40, (4,), "float16", {"m": 1})
    w.write(10, data[10:20])
    w.commit()
    w.close()
    reopened = FeatureStore.open(tmp_path)
    with pytest.raises(IncompleteFeatureSetError, match="10 of 40 rows committed"):
        reopened["a/b"]
    part = reopened.get("a/b", allow_incomplete=True)
    assert torch.equal(part[10:20], data[10:20])
    with pytest.raises(IncompleteFeatureSetError, match="row 3 is not committed"):
        part[[12, 3]]
    with pytest.raises(WriterConflictError, match="pass resume=True"):
        reopened.create_feature_set("a/b", 40, (4,), "float16", {"m": 1})
    with pytest.raises(WriterConflictError, match="its metadata is"):
        reopened.create_feature_set("a/b", 40, (4,), "float16", {"m": 2}, resume=True)
    w = reopened.create_feature_set("a/b", 40, (4,), "float16", {"m": 1}, resume=True)
    assert w.missing_ranges() == [(0, 10), (20, 40)]
    for a, b in w.missing_ranges():
        w.write(a, data[a:b])
    w.finish()
    assert torch.equal(FeatureStore.open(tmp_path)["a/b"][:], data)


def test_two_writers_on_one_set_one_wins(tmp_path):
    store = FeatureStore.create(tmp_path)
    first = store.create_feature_set("a/b", 10, (4,), "float16")
    with pytest.raises(WriterConflictError, match="being written by another process"):
        FeatureStore.open(tmp_path).create_feature_set("a/b", 10, (4,), "float16", resume=True)
    first.write(0, torch.zeros(10, 4, dtype=torch.float16))
    first.finish()
    assert FeatureStore.open(tmp_path)["a/b"].complete


def test_context_manager_commits_and_finishes_or_keeps_progress(tmp_path):
    store = FeatureStore.create(tmp_path)
    with store.create_feature_set("a/full", 4, (2,), "float32") as w:
        w.write(0, torch.ones(4, 2))
    assert FeatureStore.open(tmp_path).info("a/full").complete
    with store.create_feature_set("a/half", 4, (2,), "float32") as w:
        w.write(0, torch.ones(2, 2))
    info = FeatureStore.open(tmp_path).info("a/half")
    assert not info.complete and info.committed == [(0, 2)]
    with pytest.raises(RuntimeError), store.create_feature_set("a/half", 4, (2,), "float32", resume=True) as w:
        w.write(2, torch.ones(2, 2))
        raise RuntimeError("boom")
    assert FeatureStore.open(tmp_path).info("a/half").committed == [(0, 2)]


def test_orphan_file_from_a_crash_during_creation_is_rebuilt(tmp_path):
    store = FeatureStore.create(tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "b.safetensors").write_bytes(b"")
    store.create_feature_set("a/b", 4, (2,), "float32").close()
    (tmp_path / "a" / "c.safetensors").write_bytes(b"user data, not ours")
    with pytest.raises(WriterConflictError, match="not a featstore file"):
        store.create_feature_set("a/c", 4, (2,), "float32")
    assert (tmp_path / "a" / "c.safetensors").read_bytes() == b"user data, not ours"


@pytest.mark.damages_store
def test_verify_detects_a_flipped_bit_and_names_the_set(tmp_path):
    store, _, _ = make_store(tmp_path, key="enc/layer_3", n_rows=200, row_shape=(64,))
    assert store.verify()["feature_sets"] == 1
    path = tmp_path / "enc" / "layer_3.safetensors"
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.seek(4096 + 5000)
        byte = f.read(1)
        f.seek(4096 + 5000)
        f.write(bytes([byte[0] ^ 0x10]))
    with pytest.raises(VerificationError, match="enc/layer_3") as info:
        FeatureStore.open(tmp_path).verify()
    assert "rows 0..200" in info.value.problems[0]


def test_labels_checksum_and_bad_labels(tmp_path):
    store = FeatureStore.create(tmp_path)
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
        store.create_feature_set("a/b", 4, (2,), "float32", labels=[1, 2])
    with pytest.raises(ValueError, match="labels must be integers"):
        store.create_feature_set("a/b", 2, (2,), "float32", labels=np.array([0.5, 1.0]))


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", "../x", "a/./b", "bad key"])
def test_bad_keys_are_refused(tmp_path, key):
    with pytest.raises(ValueError, match="key"):
        FeatureStore.create(tmp_path).create_feature_set(key, 1, (1,), "float32")


def test_zero_rows_and_empty_rows(tmp_path):
    store = FeatureStore.create(tmp_path)
    with store.create_feature_set("a/empty", 0, (4,), "float32"):
        pass
    with store.create_feature_set("a/zero_width", 3, (0,), "float32") as w:
        w.write(0, torch.empty(3, 0))
    store = FeatureStore.open(tmp_path)
    assert store["a/empty"].shape == (0, 4) and store["a/empty"][:].shape == (0, 4)
    assert store["a/zero_width"][[0, 2]].shape == (2, 0)
    assert load_file(tmp_path / "a" / "empty.safetensors")["features"].shape == (0, 4)


def test_delete_removes_entry_file_and_export_but_not_while_written(tmp_path):
    store, _, _ = make_store(tmp_path, key="enc/gone", n_rows=8, row_shape=(2,))
    make_store(tmp_path, key="enc/kept", n_rows=8, row_shape=(2,))
    store = FeatureStore.open(tmp_path)
    store["enc/gone"].export_pt()
    store.delete("enc/gone")
    assert not (tmp_path / "enc" / "gone.safetensors").exists() and not (tmp_path / "enc" / "gone.pt").exists()
    reopened = FeatureStore.open(tmp_path)
    assert reopened.keys() == ["enc/kept"] and reopened.verify()["feature_sets"] == 1
    busy = store.create_feature_set("enc/busy", 4, (2,), "float32")
    with pytest.raises(WriterConflictError, match="being written"):
        FeatureStore.open(tmp_path).delete("enc/busy")
    busy.close()
    FeatureStore.open(tmp_path).delete("enc/busy")
    assert "enc/busy" not in FeatureStore.open(tmp_path)

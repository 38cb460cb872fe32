"""Manifest: the one owner of featstore.json (read, lock, atomic replace), and what the store sees of it."""

import json
import multiprocessing as mp

import numpy as np
import pytest

from featstore import FeatureStore, Manifest
from featstore.errors import FormatError, WriterConflictError
from featstore.store.manifest import LOCK_NAME, MANIFEST_NAME


def _make(root, key="enc/a", rows=6):
    store = FeatureStore.create(root)
    with store.create_feature_set(key, rows, (2,), "float32") as w:
        w.write(0, np.arange(rows * 2, dtype=np.float32).reshape(rows, 2))
    return store


def test_create_read_put_remove(tmp_path):
    m = Manifest(tmp_path)
    assert not m.exists()
    with pytest.raises(FormatError, match="is not a featstore store"):
        m.read()
    m.create()
    m.create()  # a second create keeps what is there
    assert m.exists() and m.read() == {} and (tmp_path / LOCK_NAME).exists()
    _make(tmp_path)
    record = m.get("enc/a")
    assert record is not None and record.complete and record.rows_committed == 6
    record.metadata = {"note": "changed"}
    m.put(record)
    assert m.read()["enc/a"].metadata == {"note": "changed"}
    with pytest.raises(WriterConflictError, match="created by another process meanwhile"):
        m.put(record, must_be_new=True)
    m.remove("enc/a")
    m.remove("enc/a")  # removing what is gone is no error
    assert m.read() == {}


def test_put_keeps_other_entries_as_on_disk(tmp_path):
    """put() re-reads the file under the lock: an entry another writer added meanwhile survives."""
    _make(tmp_path, "enc/a")
    stale = Manifest(tmp_path).get("enc/a")
    _make(tmp_path, "enc/b")  # written after `stale` was read
    Manifest(tmp_path).put(stale)
    assert sorted(Manifest(tmp_path).read()) == ["enc/a", "enc/b"]


def _put_many(root: str, key: str, n: int) -> None:
    m = Manifest(root)
    record = m.get(key)
    for i in range(n):
        record.metadata = {"writer": key, "i": i}
        m.put(record)


def test_concurrent_puts_lose_no_entry(tmp_path):
    """Two processes replacing different entries 50 times each: both entries end with their last value."""
    _make(tmp_path, "enc/a")
    _make(tmp_path, "enc/b")
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_put_many, args=(str(tmp_path), k, 50)) for k in ("enc/a", "enc/b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    records = Manifest(tmp_path).read()
    assert records["enc/a"].metadata == {"writer": "enc/a", "i": 49}
    assert records["enc/b"].metadata == {"writer": "enc/b", "i": 49}
    json.loads((tmp_path / MANIFEST_NAME).read_text())  # whole, valid JSON


def test_a_store_sees_its_own_writer_commit(tmp_path):
    """A set opened before a writer of the same store commits more rows is reopened on the next get()."""
    store = FeatureStore.create(tmp_path)
    writer = store.create_feature_set("enc/a", 6, (2,), "float32")
    writer.write(0, np.zeros((3, 2), np.float32))
    writer.commit()
    early = store.get("enc/a", allow_incomplete=True)
    assert early.rows_committed == 3
    writer.write(3, np.ones((3, 2), np.float32))
    writer.finish()
    late = store.get("enc/a", allow_incomplete=True)
    assert late is not early and late.complete and late[5].tolist() == [1.0, 1.0]
    assert store.info("enc/a").complete

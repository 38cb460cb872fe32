"""Everything featstore writes is covered: the .pt export beside a set (checksum.export) and every
field of a manifest entry, the timestamps included (checksum.entry); version-1 stores still open."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest
import torch
from _util import make_store

from featstore import FeatureStore
from featstore.errors import VerificationError
from featstore.extraction.writers import write_exports
from featstore.store.format import Manifest
from featstore.store.manifest import PLAIN_FORMAT_VERSION

torch.set_num_threads(1)


def _manifest(root):
    return json.loads((root / "featstore.json").read_text())


def _write_manifest(root, obj):
    (root / "featstore.json").write_text(json.dumps(obj, indent=1))


@pytest.mark.damages_store
def test_export_checksum_recorded_verified_and_rewritten(tmp_path):
    store, data, _ = make_store(tmp_path / "s", key="enc/l1", n_rows=16, row_shape=(4,))
    target = store["enc/l1"].export_pt()
    entry = _manifest(tmp_path / "s")["feature_sets"]["enc/l1"]
    assert entry["checksum"]["export"] == {
        "crc32": entry["checksum"]["export"]["crc32"],
        "bytes": target.stat().st_size,
    }
    assert FeatureStore.open(tmp_path / "s").verify()["bytes_checked"] > target.stat().st_size

    tampered = torch.load(target, weights_only=True)
    tampered["features"] = torch.zeros_like(tampered["features"])  # valid, same size, features zeroed
    torch.save(tampered, target)
    with pytest.raises(VerificationError, match=r"enc/l1: its \.pt export .*l1\.pt fails its checksum"):
        FeatureStore.open(tmp_path / "s").verify()

    store = FeatureStore.open(tmp_path / "s")
    os.utime(target)  # newer than the set: an mtime rule would have kept it
    write_exports(store, SimpleNamespace(keys={("l1", "cls"): "enc/l1"}), True)
    assert torch.equal(torch.load(target, weights_only=True)["features"], data)
    FeatureStore.open(tmp_path / "s").verify()

    target.unlink()  # a deleted export is no damage
    FeatureStore.open(tmp_path / "s").verify()


def test_export_elsewhere_is_not_recorded(tmp_path):
    store, _, _ = make_store(tmp_path / "s", key="enc/l1", n_rows=4, row_shape=(2,))
    store["enc/l1"].export_pt(tmp_path / "copy.pt")
    assert _manifest(tmp_path / "s")["feature_sets"]["enc/l1"]["checksum"]["export"] is None


@pytest.mark.parametrize("field", ["created_at", "finished_at", "block_rows"])
def test_every_entry_field_is_covered(tmp_path, field):
    make_store(tmp_path / "s", key="enc/l1", n_rows=4, row_shape=(2,))
    obj = _manifest(tmp_path / "s")
    entry = obj["feature_sets"]["enc/l1"]
    if field == "block_rows":
        entry["checksum"]["block_rows"] += 1  # still one block: nothing else notices
    else:
        entry[field] += 1.0
    _write_manifest(tmp_path / "s", obj)
    with pytest.raises(VerificationError, match=r"enc/l1: its entry in .*featstore.json fails its checksum"):
        FeatureStore.open(tmp_path / "s").verify()


def test_version_1_store_opens_and_is_upgraded_by_its_first_change(tmp_path):
    root = tmp_path / "s"
    make_store(root, key="enc/old", n_rows=4, row_shape=(2,))
    obj = _manifest(root)
    obj["format_version"] = 1
    for entry in obj["feature_sets"].values():  # what featstore 0.1 wrote: no entry or export checksum
        entry["checksum"].pop("entry")
        entry["checksum"].pop("export")
    _write_manifest(root, obj)
    store = FeatureStore.open(root)
    assert store.verify()["feature_sets"] == 1 and store["enc/old"][0].shape == (2,)

    with store.create_feature_set("enc/new", n_rows=2, row_shape=(2,), dtype="float32") as w:
        w.write(0, torch.zeros(2, 2))
    obj = _manifest(root)
    assert obj["format_version"] == PLAIN_FORMAT_VERSION == 2  # 3 only while it lists a quantised set
    assert "entry" not in obj["feature_sets"]["enc/old"]["checksum"]  # an old entry stays as it was
    assert isinstance(obj["feature_sets"]["enc/new"]["checksum"]["entry"], int)
    assert FeatureStore.open(root).verify()["feature_sets"] == 2
    assert Manifest(root).read()["enc/old"].entry_crc32 is None

"""A damaged manifest entry that still parses is caught at open: the manifest has no checksum of its
own, so each entry is held to a strict schema and to what the file's header repeats (key, provenance)."""

from __future__ import annotations

import pytest
from _util import damaged_store, edit_manifest

from featstore import FeatureStore, FormatError

pytestmark = pytest.mark.damages_store


def _rename(e, o):
    o["feature_sets"]["enc/layer_9"] = o["feature_sets"].pop("enc/layer_1")


CASES = {
    "key renamed": (_rename, "holds feature set 'enc/layer_1' but the manifest lists it as 'enc/layer_9'"),
    "metadata changed": (lambda e, o: e.update(metadata={"seed": 1}), "provenance metadata"),
    "unknown field": (lambda e, o: e.update(rows_committet=10), r"unknown field\(s\) \['rows_committet'\]"),
    "unknown checksum field": (lambda e, o: e["checksum"].update(labelz=1), r"checksum\.labelz"),
    "rows_committed disagrees": (lambda e, o: e.update(rows_committed=3), "'rows_committed' is 3"),
    "checksum algorithm": (lambda e, o: e["checksum"].update(algorithm="crc33"), "checksum.algorithm"),
    "labels checksum dropped": (lambda e, o: e["checksum"].update(labels=None), "checksum.labels"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_damaged_manifest_entry_is_a_clear_error_at_open(tmp_path, case):
    edit, message = CASES[case]
    damaged_store(tmp_path, edit_manifest(edit))
    with pytest.raises(FormatError, match=message) as info:
        FeatureStore.open(tmp_path)
    assert "layer_1" in str(info.value) or "featstore.json" in str(info.value)

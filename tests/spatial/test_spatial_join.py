"""The split by image, and features joined back to dataset rows (both directions)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from _util import rows_for

from featstore import FeatureStore, cli, spatial
from featstore.spatial.split import image_counts

datasets = pytest.importorskip("datasets")  # the GPU machines have no `datasets`: skip there

torch.set_num_threads(1)


def _dataset(n_images=30, rows_per_image=3):
    n = n_images * rows_per_image
    return datasets.Dataset.from_dict(
        {
            "image_path": [f"images/{i // rows_per_image:03d}.png" for i in range(n)],
            "spatial_relation": [spatial.RELATIONS[i % 4] for i in range(n)],
            "label": [(i // 4) % 2 for i in range(n)],
            "captions": [[f"claim {i}"] for i in range(n)],
        }
    )


# ---- split --------------------------------------------------------------------------------------
def test_split_keeps_each_image_in_one_split_and_is_deterministic():
    ds = _dataset()
    idx = spatial.split_indices(ds, seed=1)
    assert sorted(np.concatenate(list(idx.values())).tolist()) == list(range(len(ds)))
    images = {name: {ds[int(i)]["image_path"] for i in rows} for name, rows in idx.items()}
    assert not (
        images["train"] & images["validation"]
        or images["train"] & images["test"]
        or images["validation"] & images["test"]
    )
    assert [len(images[s]) for s in spatial.SPLITS] == [24, 3, 3]
    again = spatial.split_indices(ds, seed=1)
    assert all(np.array_equal(idx[s], again[s]) for s in spatial.SPLITS)
    assert not np.array_equal(spatial.split_indices(ds, seed=2)["test"], idx["test"])
    # the row order does not matter: the same images land in the same splits
    shuffled = ds.shuffle(seed=0)
    moved = spatial.split_indices(shuffled, seed=1)
    assert {shuffled[int(i)]["image_path"] for i in moved["test"]} == images["test"]


def test_split_returns_a_dataset_dict_with_row_index():
    ds = _dataset(10, 2)
    parts = spatial.split(ds, seed=0, fractions=(0.6, 0.2, 0.2))
    assert list(parts) == ["train", "validation", "test"] and [len(p) for p in parts.values()] == [12, 4, 4]
    for part in parts.values():
        for row in part:
            assert ds[row["row_index"]]["captions"] == row["captions"]
    assert spatial.split(parts["train"])["train"][0]["row_index"] in range(len(ds))  # a split of a split keeps it


def test_split_fractions():
    assert image_counts(10, (0.8, 0.1, 0.1)) == [8, 1, 1]
    assert image_counts(3, (0.98, 0.01, 0.01)) == [1, 1, 1]  # every non-empty share gets an image when it can
    assert image_counts(2, (0.98, 0.01, 0.01)) == [2, 0, 0]  # too few images: plain rounding
    assert image_counts(5, (1.0, 0.0, 0.0)) == [5, 0, 0]
    assert image_counts(3, (0.0, 0.5, 0.5)) == [0, 1, 2]
    for bad in [(0.5, 0.5), (0.8, 0.3, 0.1), (1.2, -0.1, -0.1), "abc"]:
        with pytest.raises(ValueError, match="fractions must be"):
            spatial.split_indices(_dataset(3, 1), fractions=bad)


def test_split_from_the_command_line(tmp_path, capsys):
    from featstore.spatial.synth import generate

    generate(tmp_path / "ds", n=40, size=32, workers=1, progress=False)
    assert cli.main(["dataset", "split", str(tmp_path / "ds"), "--out", str(tmp_path / "parts"), "--seed", "3"]) == 0
    assert "train 32, validation 4, test 4" in capsys.readouterr().out
    parts = datasets.load_from_disk(str(tmp_path / "parts"))
    spatial.validate(parts["test"])  # relative image paths were rewritten to reach ../ds/images from test/
    assert parts["test"][0]["image_path"].startswith("../../ds/images/")
    assert cli.main(["dataset", "validate", str(tmp_path / "parts")]) == 0
    assert cli.main(["dataset", "split", str(tmp_path / "parts"), "--out", str(tmp_path / "again")]) == 1
    assert "is already split" in capsys.readouterr().err


# ---- features joined back -----------------------------------------------------------------------
@pytest.fixture
def store_and_data(tmp_path):
    ds = _dataset(10, 2)
    targets = spatial.row_targets(ds)
    store = FeatureStore.create(tmp_path / "store")
    data = rows_for(0, len(ds), (8,), torch.float16)
    with store.create_feature_set(
        "enc/layer_1",
        len(ds),
        (8,),
        "float16",
        labels=targets.labels("relation"),
        metadata={"pooling": "cls", **targets.metadata("relation")},
    ) as w:
        w.write(0, data)
    with store.create_feature_set("enc/grid", len(ds), (2, 3), "float32") as w:
        w.write(0, torch.arange(len(ds) * 6, dtype=torch.float32).view(len(ds), 2, 3))
    return ds, FeatureStore.open(tmp_path / "store"), data


def test_row_targets_are_ready_for_create_feature_set():
    ds = _dataset(2, 2)
    t = spatial.row_targets(ds)
    assert t.label.dtype == np.int64 and t.label.tolist() == [0, 0, 0, 0]
    assert t.relation.tolist() == [0, 1, 2, 3] and t.relations == spatial.RELATIONS
    meta = t.metadata("label")["spatial_targets"]
    assert meta["classes"] == ["false", "true"] and meta["rows"] == 4
    with pytest.raises(ValueError, match="target must be one of"):
        t.labels("colour")
    bad = ds.map(lambda r: {"label": 5})
    with pytest.raises(spatial.DatasetValidationError):
        spatial.row_targets(bad)


def test_with_features_serves_row_i_from_the_store(store_and_data):
    ds, store, data = store_and_data
    joined = spatial.with_features(ds, store, key="enc/layer_1")
    sample = joined[7]
    assert torch.equal(sample["features"], data[7]) and sample["captions"] == ["claim 7"] and sample["row_index"] == 7
    batch = joined[2:5]
    assert torch.equal(batch["features"], data[2:5]) and batch["label"] == ds[2:5]["label"]
    for i, sample in enumerate(joined):  # the seed README's loop
        assert torch.equal(sample["features"], data[i])
    assert "features" not in joined.with_format(None).column_names  # served, not copied into Arrow
    grid = spatial.with_features(ds, store["enc/grid"], dtype=torch.float64)
    assert grid[1]["features"].shape == (2, 3) and grid[1]["features"].dtype == torch.float64
    assert grid[1]["features"][0, 0].item() == 6


def test_with_features_on_splits_and_in_dataloader_workers(store_and_data):
    ds, store, data = store_and_data
    test = spatial.split(ds, seed=0)["test"]
    joined = spatial.with_features(test, store["enc/layer_1"])
    for row in joined:
        assert torch.equal(row["features"], data[row["row_index"]])
    clone = pickle.loads(pickle.dumps(joined))
    assert torch.equal(clone[0]["features"], joined[0]["features"])
    loader = torch.utils.data.DataLoader(joined, batch_size=2, num_workers=1)
    first = next(iter(loader))
    assert torch.equal(first["features"], data[first["row_index"]])


def test_with_features_refuses_a_dataset_that_does_not_belong(store_and_data):
    ds, store, _ = store_and_data
    with pytest.raises(
        spatial.DatasetAlignmentError, match="the dataset has 5 rows but feature set 'enc/layer_1' has 20"
    ):
        spatial.with_features(ds.select(range(5)), store, key="enc/layer_1")
    reordered = ds.select(list(range(19, -1, -1))).flatten_indices()
    with pytest.raises(spatial.DatasetAlignmentError, match="disagree on") as info:
        spatial.with_features(reordered, store, key="enc/layer_1")
    assert info.value.problems[0].row == 0 and "stores 0, the dataset gives 3" in str(info.value.problems[0])
    assert len(spatial.with_features(reordered, store, key="enc/layer_1", check_labels=False)) == 20
    far = ds.add_column("row_index", np.arange(100, 120))
    with pytest.raises(spatial.DatasetAlignmentError, match="run from 100 to 119"):
        spatial.with_features(far, store["enc/layer_1"])
    with pytest.raises(ValueError, match="pass key="):
        spatial.with_features(ds, store)
    with pytest.raises(ValueError, match="already has a 'captions' column"):
        spatial.with_features(ds, store["enc/layer_1"], column="captions")
    with pytest.raises(TypeError, match="features must be"):
        spatial.with_features(ds, 42)

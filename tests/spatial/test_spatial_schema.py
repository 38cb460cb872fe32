"""The spatial dataset schema: validation reports every problem at once, load/save keep paths valid."""

from __future__ import annotations

import os

import pytest
import torch

from featstore import FeatureStoreError, spatial

datasets = pytest.importorskip("datasets")  # the GPU machines have no `datasets`: skip there

torch.set_num_threads(1)


def _images(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(b"not really a png; validate only checks that the file exists")


def _good(tmp_path, n=4):
    _images(tmp_path / "images", [f"{i}.png" for i in range(n)])
    return datasets.Dataset.from_dict(
        {
            "image_path": [f"images/{i}.png" for i in range(n)],
            "spatial_relation": list(spatial.RELATIONS)[:n],
            "label": [i % 2 for i in range(n)],
            "captions": [[f"caption {i}"] for i in range(n)],
        }
    )


def test_good_dataset_validates_with_a_summary(tmp_path):
    summary = spatial.validate(_good(tmp_path), root=tmp_path)
    assert summary == {
        "rows": 4,
        "images": 4,
        "relations": {"bottom": 1, "left": 1, "right": 1, "top": 1},
        "labels": {"0": 2, "1": 2},
    }


def test_every_bad_row_and_field_is_reported_at_once(tmp_path):
    _images(tmp_path / "images", ["ok.png"])
    ds = datasets.Dataset.from_dict(
        {
            "image_path": ["images/ok.png", "images/missing.png", "images/ok.png", "", "images/ok.png"],
            "spatial_relation": ["left", "above", "diagonal", "top", "behind"],
            "label": [1, 2, 0, -1, 1],
            "captions": [["a"], ["b"], [], ["c", "  "], ["d"]],
        }
    )
    with pytest.raises(spatial.DatasetValidationError) as info:
        spatial.validate(ds, root=tmp_path)
    exc = info.value
    assert isinstance(exc, FeatureStoreError)
    got = {(p.row, p.field) for p in exc.problems}
    assert got == {
        (1, "image_path"),
        (1, "spatial_relation"),
        (1, "label"),
        (2, "spatial_relation"),
        (2, "captions"),
        (3, "image_path"),
        (3, "label"),
        (3, "captions"),
        (4, "spatial_relation"),
    }
    text = str(exc)
    assert "row 1, field 'spatial_relation': unknown relation 'above'; write 'top' instead" in text
    assert "missing.png does not exist" in text and "is 2, not 0 or 1" in text
    assert "row 2, field 'captions': is an empty list" in text
    assert "--keep-other" in text  # 'behind' is a depth relation: says how such rows can be kept


def test_missing_columns_and_wrong_types_are_reported(tmp_path):
    ds = datasets.Dataset.from_dict({"image_path": ["x.png"], "label": [0.5], "captions": ["one string"]})
    with pytest.raises(spatial.DatasetValidationError) as info:
        spatial.validate(ds, root=tmp_path, check_files=False)
    fields = [(p.row, p.field) for p in info.value.problems]
    assert (None, "spatial_relation") in fields and (None, "label") in fields and (None, "captions") in fields
    assert "cast_column('label'" in str(info.value)


def test_validate_wants_one_split(tmp_path):
    dd = datasets.DatasetDict({"train": _good(tmp_path)})
    with pytest.raises(TypeError, match=r"pass one split, e.g. ds\['train'\]"):
        spatial.validate(dd)


def test_extra_relations_are_allowed_only_when_the_info_lists_them(tmp_path):
    cols = {"image_path": ["a.png"], "spatial_relation": ["front"], "label": [1], "captions": [["a in front of b"]]}
    plain = datasets.Dataset.from_dict(cols)
    with pytest.raises(spatial.DatasetValidationError):
        spatial.validate(plain, check_files=False)
    flagged = datasets.Dataset.from_dict(
        cols, info=spatial.make_info({"kind": "test"}, extra_relations=["front", "behind"])
    )
    assert spatial.dataset_relations(flagged) == ("left", "right", "top", "bottom", "front", "behind")
    assert spatial.validate(flagged, check_files=False)["relations"] == {"front": 1}


def test_normalize_relation():
    assert spatial.normalize_relation(" Above ") == "top"
    assert spatial.normalize_relation("left of") == "left"
    assert spatial.normalize_relation("under") == "bottom"
    assert spatial.normalize_relation("in front of") == "front"
    assert spatial.normalize_relation("sideways") is None and spatial.normalize_relation(3) is None


def test_save_and_load_as_the_seed_readme_shows(tmp_path):
    ds = _good(tmp_path)
    spatial.save_to_disk(ds, tmp_path)  # relative paths are relative to the dataset folder: saved beside images/
    loaded = datasets.load_from_disk(str(tmp_path))
    assert spatial.dataset_root(loaded) == tmp_path.resolve()
    assert spatial.validate(loaded)["rows"] == 4  # resolves images/ against the folder it was loaded from
    assert spatial.load_from_disk(tmp_path, validate_rows=True)[0]["image_path"] == "images/0.png"
    assert spatial.image_paths(loaded)[0] == tmp_path.resolve() / "images" / "0.png"


def test_saving_elsewhere_rewrites_relative_paths(tmp_path):
    src = tmp_path / "a" / "ds"
    spatial.save_to_disk(_good(src), src)
    loaded = spatial.load_from_disk(src)
    dst = tmp_path / "b" / "copy"
    spatial.save_to_disk(loaded.select([1, 2]), dst)
    moved = spatial.load_from_disk(dst)
    assert moved[0]["image_path"] == os.path.join("..", "..", "a", "ds", "images", "1.png")
    assert spatial.validate(moved)["images"] == 2
    with pytest.raises(spatial.SpatialDatasetError, match="the folder it is read from"):
        spatial.save_to_disk(loaded, src, overwrite=True)


def test_output_folders_are_never_clobbered(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    spatial.save_to_disk(_good(tmp_path / "src"), out)  # other files may be there: they are left alone
    with pytest.raises(spatial.SpatialDatasetError, match="already holds a dataset"):
        spatial.save_to_disk(_good(tmp_path / "src"), out)
    spatial.save_to_disk(_good(tmp_path / "src", n=3), out, overwrite=True)  # a dataset featstore wrote: replaced
    assert len(datasets.load_from_disk(str(out))) == 3 and (out / "notes.txt").read_text() == "mine"
    with pytest.raises(spatial.SpatialDatasetError, match="is not a folder"):
        spatial.save_to_disk(_good(tmp_path / "src"), out / "notes.txt")


def test_load_errors_name_the_folder(tmp_path):
    with pytest.raises(spatial.SpatialDatasetError, match="is not a folder"):
        spatial.load_from_disk(tmp_path / "nope")
    with pytest.raises(spatial.SpatialDatasetError, match="holds no saved dataset"):
        spatial.load_from_disk(tmp_path)


def test_load_with_validation_names_the_split(tmp_path):
    bad = datasets.Dataset.from_dict(
        {"image_path": ["x.png"], "spatial_relation": ["up"], "label": [1], "captions": [["c"]]}
    )
    datasets.DatasetDict({"train": bad}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(spatial.DatasetValidationError, match=r"split 'train'") as info:
        spatial.load_from_disk(tmp_path / "dd", validate_rows=True, check_files=False)
    assert [(p.row, p.field) for p in info.value.problems] == [(0, "spatial_relation")]


def test_featstore_import_does_not_pull_in_the_spatial_modules():
    import subprocess
    import sys

    code = "import sys, featstore; assert 'featstore.spatial' not in sys.modules and 'datasets' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "FEATSTORE_PUREPYTHON": "1"})


def test_plugin_manager_and_spatial_import_without_datasets():
    """GPU machines lack `datasets`: the spatial modules and the plugin manager must import anyway."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['datasets'] = None\n"
        "import featstore.spatial, featstore.spatial.synth, featstore.plugins\n"
        "names = featstore.plugins.plugin_names(); assert 'featstore.spatial.importers' in names, names\n"
        "s = featstore.spatial.synth.plan_scene(0, 0); assert s.label in (0, 1)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "FEATSTORE_LOAD_PLUGINS": ""})

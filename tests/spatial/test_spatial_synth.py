"""The synthetic generator: balanced, deterministic to the byte, and its labels match its geometry."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from featstore import spatial
from featstore.spatial import scenes, synth

torch.set_num_threads(1)


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "ds"
    return out, synth.generate(out, n=48, seed=3, size=64, workers=1, progress=False)


def test_schema_and_validation(small):
    out, ds = small
    summary = spatial.validate(ds)
    assert summary["rows"] == summary["images"] == 48
    assert ds[0]["image_path"] == "images/000000.png" and (out / "images" / "000000.png").is_file()
    assert spatial.dataset_meta(ds)["source"] == {
        "kind": "synth",
        "generator": "featstore.spatial_synth",
        "version": synth.GENERATOR_VERSION,
        "n": 48,
        "seed": 3,
        "size": 64,
        "distractors": 0.5,
    }
    assert Image.open(out / "images" / "000007.png").size == (64, 64)


def test_balanced_over_relations_and_labels(small):
    _, ds = small
    pairs = Counter(zip(ds["spatial_relation"], ds["label"]))
    assert pairs == {(r, lab): 6 for r in spatial.RELATIONS for lab in (0, 1)}
    for n in range(1, 41):  # any prefix is balanced to within one row
        rel = Counter(scenes.row_plan(0, i)[0] for i in range(n))
        lab = Counter(scenes.row_plan(0, i)[1] for i in range(n))
        assert max(rel.values()) - min(rel.get(r, 0) for r in spatial.RELATIONS) <= 1
        assert abs(lab[0] - lab[1]) <= 1


def test_same_seed_same_bytes_whatever_the_worker_count(small, tmp_path):
    out, _ = small
    again = tmp_path / "again"
    synth.generate(again, n=48, seed=3, size=64, workers=2, progress=False)
    assert _hashes(again) == _hashes(out)
    other = tmp_path / "other"
    synth.generate(other, n=48, seed=4, size=64, workers=1, progress=False)
    assert _hashes(other)["images/000000.png"] != _hashes(out)["images/000000.png"]


def test_rows_do_not_depend_on_n(small, tmp_path):
    out, ds = small
    prefix = synth.generate(tmp_path / "prefix", n=10, seed=3, size=64, workers=1, progress=False)
    assert prefix[:10]["captions"] == ds[:10]["captions"]
    assert _hashes(tmp_path / "prefix" / "images") == {
        k: v for k, v in _hashes(out / "images").items() if int(k[:6]) < 10
    }


def test_geometry_matches_the_label():
    size = 224
    for i in range(400):
        s = synth.plan_scene(7, i, size)
        a, b = s.subject.box, s.reference.box
        assert scenes.holds(s.relation, a, b) == bool(s.label)
        assert scenes.holds(spatial.OPPOSITE[s.relation], a, b) == (not s.label)  # false rows: the opposite side
        others = [r for r in spatial.RELATIONS if r not in (s.relation, spatial.OPPOSITE[s.relation])]
        assert not any(scenes.holds(r, a, b) for r in others)  # never diagonal: the other axis overlaps
        # roles by colour: the image alone tells the subject (warm) from the reference (cool) and distractors
        assert s.subject.colour in scenes.SUBJECT_COLOURS and s.reference.colour in scenes.REFERENCE_COLOURS
        for d in s.distractors:
            assert d.colour in scenes.DISTRACTOR_COLOURS
            assert scenes.boxes_clear(d.box, [a, b], 0)
        for box in [a, b] + [d.box for d in s.distractors]:
            assert 0 <= box[0] < box[2] <= size and 0 <= box[1] < box[3] <= size


def test_captions_name_both_objects_and_the_relation():
    words = {"left": "left", "right": "right", "top": ("above", "higher"), "bottom": ("below", "lower", "beneath")}
    for i in range(64):
        s = synth.plan_scene(1, i)
        assert len(s.captions) == scenes.CAPTIONS_PER_ROW == len(set(s.captions))
        for c in s.captions:
            assert c.index(s.subject.name) < c.index(s.reference.name, len(s.subject.name))
            assert any(w in c for w in np.atleast_1d(words[s.relation]))
        assert s.captions[0].startswith(("a ", "an "))
    assert (
        scenes.captions(
            __import__("random").Random(0),
            "left",
            synth.SceneObject("circle", "orange", (0, 0, 0), 0, (0, 0, 1, 1)),
            synth.SceneObject("square", "blue", (0, 0, 0), 0, (2, 0, 3, 1)),
        )[0]
        == "an orange circle to the left of a blue square"
    )


def test_the_pixels_show_the_planned_objects():
    for i in range(24):
        s = synth.plan_scene(5, i, 128)
        img = np.asarray(synth.render(s)).astype(int)
        for obj in (s.subject, s.reference):
            x0, y0, x1, y1 = obj.box
            cx, cy = int((x0 + x1) / 2), int((y0 + y1) / 2)
            assert np.abs(img[cy, cx] - np.array(obj.fill)).max() <= 2, (i, obj)
        assert np.abs(img[0, 0] - np.array(s.background[1])).max() <= 40  # a corner shows the background


def test_distractors_can_be_switched_off():
    assert all(not synth.plan_scene(0, i, distractors=0.0).distractors for i in range(50))
    assert sum(bool(synth.plan_scene(0, i, distractors=1.0).distractors) for i in range(50)) >= 45


def test_bad_arguments_and_existing_output(tmp_path, small):
    for kwargs, msg in (
        ({"n": 0}, "n must be an integer >= 1"),
        ({"size": 16}, "size must be"),
        ({"distractors": 2}, "probability"),
        ({"seed": 1.5}, "seed must be an integer"),
    ):
        with pytest.raises(ValueError, match=msg):
            synth.generate(tmp_path / "x", progress=False, **{"n": 4, **kwargs})
    out, _ = small
    with pytest.raises(spatial.SpatialDatasetError, match="already holds a dataset"):
        synth.generate(out, n=4, size=64, progress=False)
    redo = tmp_path / "redo"
    synth.generate(redo, n=8, size=64, workers=1, progress=False)
    ds = synth.generate(redo, n=4, size=64, workers=1, progress=False, overwrite=True)
    assert len(ds) == 4 and len(list((redo / "images").iterdir())) == 4

"""The built-in importers (table, whatsup) on small fixture folders in their documented layouts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from featstore import cli, spatial
from featstore.spatial.importers.table import import_table
from featstore.spatial.importers.whatsup import caption_relation, filename_relation, import_whatsup

datasets = pytest.importorskip("datasets")  # the GPU machines have no `datasets`: skip there

torch.set_num_threads(1)


def _touch(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\xff\xd8 fixture image")
    return str(path)


def make_whatsup(root: Path, broken: bool = False) -> Path:
    """A miniature What'sUp folder: every subset's annotation file and images, optionally with bad entries."""
    a = [
        {"image_path": f"data/controlled_images/{name}.jpeg", "caption_options": opts}
        for name, opts in [
            (
                "mug_left_of_plate",
                [
                    "A mug to the left of a plate",
                    "A mug to the right of a plate",
                    "A mug on a plate",
                    "A mug under a plate",
                ],
            ),
            (
                "mug_on_plate",
                [
                    "A mug on a plate",
                    "A mug under a plate",
                    "A mug to the left of a plate",
                    "A mug to the right of a plate",
                ],
            ),
            (
                "mug_under_table",
                [
                    "A mug under a table",
                    "A mug on a table",
                    "A mug to the left of a table",
                    "A mug to the right of a table",
                ],
            ),
        ]
    ]
    b = [
        {"image_path": f"data/controlled_clevr/{name}.jpeg", "caption_options": opts}
        for name, opts in [
            (
                "cube_right_of_sphere",
                [
                    "A cube to the right of a sphere",
                    "A cube to the left of a sphere",
                    "A cube in front of a sphere",
                    "A cube behind a sphere",
                ],
            ),
            (
                "cube_in-front_of_sphere",
                [
                    "A cube in front of a sphere",
                    "A cube behind a sphere",
                    "A cube to the left of a sphere",
                    "A cube to the right of a sphere",
                ],
            ),
        ]
    ]
    for e in a:
        _touch(root / "controlled_images" / Path(e["image_path"]).name)
    for e in b:
        _touch(root / "controlled_clevr" / Path(e["image_path"]).name)
    coco_one = [[139, "A photo of a dog on the left", "A photo of a dog on the right"]]
    coco_two = [
        [285, "A cup to the left of a plate", "A cup to the right of a plate"],
        [632, "A cat above a sofa", "A cat below a sofa"],
    ]
    vg_one = [[2417, "A photo of a car on the bottom", "A photo of a car on the top"]]
    vg_two = [
        [2418, "A man in front of a car", "A man behind a car"],
        [2419, "A lamp on a desk", "A lamp under a desk"],
    ]
    for i in (139, 285, 632):
        _touch(root / "val2017" / f"{i:012d}.jpg")
    for i in (2417, 2418, 2419):
        _touch(root / "vg_images" / f"{i}.jpg")
    if broken:
        a += [
            42,  # entry 3: not an object
            {
                "image_path": "data/controlled_images/mug_left_of_bowl.jpeg",
                "caption_options": ["A mug to the left of a bowl", "x"],
            },
            {
                "image_path": "data/controlled_images/mug_beside_plate.jpeg",
                "caption_options": ["A mug beside a plate", "A mug on a plate"],
            },
            {"image_path": "data/controlled_images/mug_left_of_plate.jpeg"},
        ]
        _touch(root / "controlled_images" / "mug_beside_plate.jpeg")
        coco_two += [
            [285, "A cup to the left of a plate"],
            ["abc", "A cup above a plate", "A cup below a plate"],
            [999, "A cup above a plate", "A cup below a plate"],
        ]
    files = {
        "controlled_images_dataset.json": a,
        "controlled_clevr_dataset.json": b,
        "coco_qa_one_obj.json": coco_one,
        "coco_qa_two_obj.json": coco_two,
        "vg_qa_one_obj.json": vg_one,
        "vg_qa_two_obj.json": vg_two,
    }
    for name, content in files.items():
        (root / name).write_text(json.dumps(content))
    return root


def _rows(ds):
    return [(Path(r["image_path"]).name, r["spatial_relation"], r["label"], r["captions"][0]) for r in ds]


# ---- What'sUp -----------------------------------------------------------------------------------
def test_whatsup_a_maps_prepositions_and_keeps_every_caption(tmp_path):
    root = make_whatsup(tmp_path / "whatsup")
    result = import_whatsup(root, "A")
    rows = _rows(result.dataset)
    assert len(rows) == 12 and sum(r[2] for r in rows) == 3
    assert rows[:4] == [
        ("mug_left_of_plate.jpeg", "left", 1, "A mug to the left of a plate"),
        ("mug_left_of_plate.jpeg", "right", 0, "A mug to the right of a plate"),
        ("mug_left_of_plate.jpeg", "top", 0, "A mug on a plate"),
        ("mug_left_of_plate.jpeg", "bottom", 0, "A mug under a plate"),
    ]
    assert rows[4][1:3] == ("top", 1) and rows[8][1:3] == ("bottom", 1)
    # image paths: the JSON's data/controlled_images/... prefix is resolved to ROOT/controlled_images/, absolute
    assert result.dataset[0]["image_path"] == str((root / "controlled_images" / "mug_left_of_plate.jpeg").resolve())
    assert spatial.validate(result.dataset)["relations"] == {"bottom": 3, "left": 3, "right": 3, "top": 3}
    assert spatial.dataset_meta(result.dataset)["source"]["subset"] == "A"


def test_whatsup_b_skips_depth_relations_unless_asked(tmp_path):
    root = make_whatsup(tmp_path / "w")
    result = import_whatsup(root, "B")
    assert [r[1:3] for r in _rows(result.dataset)] == [("right", 1), ("left", 0), ("left", 0), ("right", 0)]
    assert list(result.skipped.values()) == [4] and "--keep-other" in next(iter(result.skipped))
    kept = import_whatsup(root, "B", keep_other=True)
    assert len(kept.dataset) == 8 and not kept.skipped
    assert spatial.dataset_relations(kept.dataset)[4:] == ("front", "behind")
    assert spatial.validate(kept.dataset)["relations"] == {"behind": 2, "front": 2, "left": 2, "right": 2}
    assert spatial.row_targets(kept.dataset).relation.max() == 5
    true_only = import_whatsup(root, "B", keep_other=True, true_only=True)
    assert [r[1:3] for r in _rows(true_only.dataset)] == [("right", 1), ("front", 1)]


@pytest.mark.parametrize(
    "subset,expected",
    [
        ("coco-one", [("000000000139.jpg", "left", 1), ("000000000139.jpg", "right", 0)]),
        (
            "coco-two",
            [
                ("000000000285.jpg", "left", 1),
                ("000000000285.jpg", "right", 0),
                ("000000000632.jpg", "top", 1),
                ("000000000632.jpg", "bottom", 0),
            ],
        ),
        ("vg-one", [("2417.jpg", "bottom", 1), ("2417.jpg", "top", 0)]),
        ("vg-two", [("2419.jpg", "top", 1), ("2419.jpg", "bottom", 0)]),
    ],
)
def test_whatsup_qa_subsets(tmp_path, subset, expected):
    root = make_whatsup(tmp_path / "w")
    result = import_whatsup(root, subset)
    assert [r[:3] for r in _rows(result.dataset)] == expected
    spatial.validate(result.dataset)
    assert bool(result.skipped) == (subset == "vg-two")  # the in-front/behind pair is skipped and counted


def test_whatsup_reports_every_bad_entry_with_its_position(tmp_path):
    root = make_whatsup(tmp_path / "w", broken=True)
    (root / "controlled_images" / "mug_left_of_plate.jpeg").unlink()  # entries 0 and 6 lose their image
    with pytest.raises(spatial.DatasetImportError) as info:
        import_whatsup(root, "A")
    where = sorted({(p.row, p.field) for p in info.value.problems}, key=lambda x: (x[0], x[1] or ""))
    assert where == [
        (0, "image_path"),
        (3, None),
        (4, "caption_options"),
        (4, "image_path"),
        (5, "image_path"),
        (6, "caption_options"),
    ]
    text = str(info.value)
    assert "controlled_images_dataset.json: 6 problem(s) in 5 entries (0-based positions in the JSON list)" in text
    assert "entry 3: is a JSON int" in text and "carries no preposition" in text and "--skip-bad" in text
    assert "entry 4, field 'caption_options': caption 1 'x' names no single relation" in text

    result = import_whatsup(root, "A", skip_bad=True)  # the good entries only; the bad ones are reported
    assert sorted({p.row for p in result.problems}) == [0, 3, 4, 5, 6]
    assert len(result.dataset) == 8 and any("entry 3" in line for line in result.notes())

    with pytest.raises(spatial.DatasetImportError) as info:
        import_whatsup(root, "coco-two")
    assert {(p.row, p.field) for p in info.value.problems} == {(2, None), (3, "image_id"), (4, "image_id")}
    assert "000000000999.jpg does not exist" in str(info.value)


def test_whatsup_file_level_errors(tmp_path):
    with pytest.raises(spatial.DatasetImportError, match="is not a folder"):
        import_whatsup(tmp_path / "nope", "A")
    root = make_whatsup(tmp_path / "w")
    with pytest.raises(spatial.DatasetImportError, match="unknown What'sUp subset 'C'"):
        import_whatsup(root, "C")
    (root / "vg_qa_one_obj.json").unlink()
    with pytest.raises(spatial.DatasetImportError, match=r"vg_qa_one_obj.json does not exist.*vg_images/"):
        import_whatsup(root, "vg-one")
    (root / "coco_qa_one_obj.json").write_text("[[139, 'single quotes']]")
    with pytest.raises(spatial.DatasetImportError, match="is not valid JSON"):
        import_whatsup(root, "coco-one")
    (root / "coco_qa_one_obj.json").write_text('{"not": "a list"}')
    with pytest.raises(spatial.DatasetImportError, match="holds a JSON dict"):
        import_whatsup(root, "coco-one")


def test_relation_words():
    assert filename_relation("data/controlled_images/beer-bottle_on_armchair.jpeg") == "top"
    assert filename_relation("x/cube_in-front_of_sphere.jpeg") == "front"
    assert filename_relation("dog_under_table.jpeg") == "bottom" and filename_relation("a_behind_b.png") == "behind"
    assert caption_relation("A photo of a dog on the left") == "left"
    assert caption_relation("A lamp on top of a desk") == "top" and caption_relation("A lamp on a desk") == "top"
    assert (
        caption_relation("A cup beneath a shelf") == "bottom" and caption_relation("A man in front of a car") == "front"
    )
    assert caption_relation("A dog left of a cat and above it") is None and caption_relation("A dog") is None


def test_whatsup_from_the_command_line(tmp_path, capsys):
    root = make_whatsup(tmp_path / "w")
    out = tmp_path / "out"
    assert cli.main(["dataset", "import", "whatsup", str(root), "--subset", "B", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "imported 4 rows (2 images)" in captured.out and "skipped 4 row(s)" in captured.err
    assert len(datasets.load_from_disk(str(out))) == 4
    assert cli.main(["dataset", "validate", str(out), "--no-decode"]) == 0  # the fixture images are placeholders
    assert cli.main(["dataset", "import", "whatsup", str(root), "--subset", "B", "--out", str(out)]) == 1
    assert "already holds a dataset" in capsys.readouterr().err
    broken = make_whatsup(tmp_path / "broken", broken=True)
    assert (
        cli.main(["dataset", "import", "whatsup", str(broken), "--subset", "coco-two", "--out", str(tmp_path / "b")])
        == 1
    )
    assert "entry 3, field 'image_id'" in capsys.readouterr().err and not (tmp_path / "b").exists()
    assert cli.main(["dataset", "import", "nosuch", "x", "--out", str(tmp_path / "c")]) == 2
    assert "no importer 'nosuch'; registered: table, whatsup" in capsys.readouterr().err


# ---- CSV / JSONL --------------------------------------------------------------------------------
def _table_rows():
    return [
        {
            "image_path": "a.png",
            "spatial_relation": "left",
            "label": 1,
            "captions": ["a cup left of a plate", "the cup is left of the plate"],
        },
        {"image_path": "sub/b.png", "spatial_relation": "above", "label": "0", "captions": "a cup above a plate"},
    ]


def test_table_jsonl_and_csv(tmp_path):
    images = tmp_path / "imgs"
    _touch(images / "a.png"), _touch(images / "sub" / "b.png")
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in _table_rows()) + "\n\n")
    csv_file = tmp_path / "rows.csv"
    csv_file.write_text(
        "image_path,spatial_relation,label,captions,note\n"
        'a.png,left,1,"[""a cup left of a plate"", ""the cup is left of the plate""]",x\n'
        "sub/b.png,above,0,a cup above a plate,y\n"
    )
    for source in (jsonl, csv_file):
        result = import_table(source, images=images)
        ds = result.dataset
        assert ds["spatial_relation"] == ["left", "top"] and ds["label"] == [1, 0]
        assert ds["captions"] == [["a cup left of a plate", "the cup is left of the plate"], ["a cup above a plate"]]
        assert ds[1]["image_path"] == str((images / "sub" / "b.png").resolve())
        spatial.validate(ds)
    assert import_table(csv_file, images=images).remarks == ["ignored column(s) not in the schema: note"]


def test_table_reports_every_bad_record_with_its_line(tmp_path):
    _touch(tmp_path / "a.png")
    lines = [
        json.dumps(_table_rows()[0]),
        "{not json",
        json.dumps({"image_path": "missing.png", "spatial_relation": "diagonal", "label": 3, "captions": []}),
        "[1, 2]",
        json.dumps({"image_path": "a.png", "label": 1, "captions": ["c"]}),
    ]
    (tmp_path / "t.jsonl").write_text("\n".join(lines))
    with pytest.raises(spatial.DatasetImportError) as info:
        import_table(tmp_path / "t.jsonl")
    got = {(p.row, p.field) for p in info.value.problems}
    assert got == {
        (2, None),
        (3, "image_path"),
        (3, "spatial_relation"),
        (3, "label"),
        (3, "captions"),
        (4, None),
        (5, "spatial_relation"),
    }
    assert "t.jsonl: 7 problem(s) in 4 entries (1-based line numbers)" in str(info.value)
    assert "line 2: is not valid JSON" in str(info.value)
    assert len(import_table(tmp_path / "t.jsonl", skip_bad=True).dataset) == 1

    (tmp_path / "t.csv").write_text("image_path,label,captions\na.png,1,c\n")
    with pytest.raises(spatial.DatasetImportError, match="header lacks column.s. spatial_relation"):
        import_table(tmp_path / "t.csv")
    (tmp_path / "u.csv").write_text(
        "image_path,spatial_relation,label,captions\na.png,left,1,c,extra\na.png,left,yes,\n"
    )
    with pytest.raises(spatial.DatasetImportError) as info:
        import_table(tmp_path / "u.csv")
    assert {(p.row, p.field) for p in info.value.problems} == {(2, None), (3, "label"), (3, "captions")}
    with pytest.raises(spatial.DatasetImportError, match="--format csv"):
        import_table(tmp_path / "a.png")
    with pytest.raises(spatial.DatasetImportError, match="images folder"):
        import_table(tmp_path / "t.csv", images=tmp_path / "nowhere")


def test_table_from_the_command_line(tmp_path, capsys):
    images = tmp_path / "imgs"
    _touch(images / "a.png"), _touch(images / "sub" / "b.png")
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in _table_rows()))
    out = tmp_path / "out"
    argv = ["dataset", "import", "table", str(tmp_path / "rows.jsonl"), "--images", str(images), "--out", str(out)]
    assert cli.main(argv) == 0
    assert "imported 2 rows (2 images)" in capsys.readouterr().out
    assert spatial.validate(datasets.load_from_disk(str(out)))["labels"] == {"0": 1, "1": 1}

"""On the demo task (the synthetic spatial dataset, the demo's tiny DINOv2), a ridge probe on int8 and
float8 copies of the float16 patch grids scores within 0.5 points of the float16 one (issue 13)."""

import torch

from featstore import FeatureStore, extract
from featstore.demo.tiny_models import make_dinov2
from featstore.probe import train_probes
from featstore.spatial.synth import generate
from featstore.store.convert import convert_store

torch.set_num_threads(1)
N_ROWS, IMAGE_SIZE = 800, 56  # a 4x4 grid of 64-d tokens: ridge's flat view is 1024-d, seconds to solve


def flat_accuracy(root) -> float:
    data = root.parent / "data"
    out = train_probes(FeatureStore.open(root), str(data), "*", "relation", heads=("ridge",), seed=0)
    return next(r["test_acc"] for r in out["results"] if r["view"] == "flat")


def test_probe_accuracy_of_compact_sets_matches_float16(tmp_path, hub_offline):
    data, f16 = tmp_path / "data", tmp_path / "f16"
    generate(data, n=N_ROWS, seed=0, size=IMAGE_SIZE, progress=False)
    model = make_dinov2(tmp_path / "model", image_size=IMAGE_SIZE)
    extract(str(data), "dinov2", str(model), f16, layers="0", pooling="patch", export_pt=False, progress=False)
    reference = flat_accuracy(f16)
    assert reference > 0.5  # the grid keeps where the objects are (chance is 0.25): a probe worth comparing
    for scheme in ("int8", "float8_e4m3"):
        convert_store(f16, tmp_path / scheme, scheme)
        assert abs(flat_accuracy(tmp_path / scheme) - reference) <= 0.005, scheme

"""Per-row vs per-token scales for int8 / float8 patch grids: the reconstruction error on the demo's
features (the synthetic spatial dataset through the demo's tiny random-init DINOv2, an 8x8 grid of
64-d tokens). Backs the choice in docs/compact-storage.md. Run: python benchmarks/quant_granularity.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

from featstore import FeatureStore, extract
from featstore.demo.run import IMAGE_SIZE
from featstore.demo.tiny_models import make_dinov2
from featstore.spatial.synth import generate
from featstore.store.quant import quantise


def measure(x: torch.Tensor) -> dict[str, dict[str, float]]:
    """Relative Frobenius error and the worst token's relative error, for per-token and per-row scales."""

    def errors(y: torch.Tensor) -> dict[str, float]:
        per_token = (y - x).norm(dim=-1) / x.norm(dim=-1).clamp_min(1e-12)
        return {"rel_error": float((y - x).norm() / x.norm()), "worst_token": float(per_token.max())}

    out = {}
    for scheme in ("int8", "float8_e4m3"):
        codes, scales = quantise(x, scheme)
        token = codes.float() * scales.unsqueeze(-1)
        codes, scales = quantise(x.reshape(len(x), -1), scheme)
        row = (codes.float() * scales.unsqueeze(-1)).view_as(x)
        out[scheme] = {f"per_token_{k}": v for k, v in errors(token).items()}
        out[scheme].update({f"per_row_{k}": v for k, v in errors(row).items()})
    return out


def main(n_rows: int = 400) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate(root / "data", n=n_rows, seed=0, size=IMAGE_SIZE, progress=False)
        model = make_dinov2(root / "model", image_size=IMAGE_SIZE)
        extract(
            str(root / "data"),
            "dinov2",
            str(model),
            root / "f",
            layers="0,last",
            pooling="patch",
            export_pt=False,
            progress=False,
        )
        store = FeatureStore.open(root / "f")
        for key in store.keys():
            x = store[key][:].float()
            norms = x.norm(dim=-1)
            spread = float((norms.max(1).values / norms.min(1).values.clamp_min(1e-12)).median())
            print(f"{key} {tuple(x.shape)}: token-norm max/min within a row (median) {spread:.2f}")
            for scheme, figures in measure(x).items():
                print("  " + scheme + ": " + ", ".join(f"{k} {v:.5f}" for k, v in figures.items()))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 400)

"""Writing a CKA matrix (:func:`featstore.probe.cka.linear_cka`): ``cka.json``, ``cka.csv`` and a heat-map
``cka.png`` (matplotlib, optional), and the matrix as a printed table."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path


def cka_table(out: dict) -> str:
    """The matrix as text: one row per set, columns numbered as the rows."""
    keys = out["keys"]
    width = max(len(k) for k in keys)
    lines = [f"{'':{width}} " + " ".join(f"{i:>6}" for i in range(len(keys)))]
    for i, (k, row) in enumerate(zip(keys, out["matrix"])):
        lines.append(f"{k:{width}} " + " ".join(f"{v:6.3f}" for v in row) + f"  [{i}]")
    lines.append(f"linear CKA over {out['n_rows']} rows; {out['grids']}")
    return "\n".join(lines)


def write_cka(out: dict, folder, log: Callable[[str], None] = print) -> dict[str, Path]:
    """Write ``cka.json``, ``cka.csv`` (a header row of keys, then one row per key) and, with matplotlib,
    ``cka.png`` to ``folder``; print the table. Returns the paths written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "cka.json", "csv": folder / "cka.csv"}
    paths["json"].write_text(json.dumps(out, indent=1) + "\n")
    with open(paths["csv"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["key"] + out["keys"])
        for k, row in zip(out["keys"], out["matrix"]):
            w.writerow([k] + row)
    log(cka_table(out))
    try:
        import matplotlib
    except ImportError:
        log("matplotlib is not installed: no heat map written (pip install 'featstore[plot]')")
    else:
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        n = len(out["keys"])
        fig, ax = plt.subplots(figsize=(2.5 + 0.45 * n, 2 + 0.4 * n))
        im = ax.imshow(out["matrix"], vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(n), out["keys"], rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(n), out["keys"], fontsize=7)
        for i in range(n):
            for j in range(n):
                v = out["matrix"][i][j]
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="w" if v < 0.6 else "k")
        fig.colorbar(im, ax=ax, label="linear CKA")
        fig.tight_layout()
        paths["png"] = folder / "cka.png"
        fig.savefig(paths["png"], dpi=120)
        plt.close(fig)
    log("wrote " + ", ".join(str(p) for p in paths.values()))
    return paths

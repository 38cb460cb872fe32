"""Writing probe results: a JSON file, a CSV file, the split (``split.json``), a printed table and a PNG plot
(matplotlib, optional), each with a head column (linear, ridge, logistic) beside the view."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable
from pathlib import Path

CSV_FIELDS = (
    "key",
    "encoder",
    "layer",
    "pooling",
    "head",
    "view",
    "dim",
    "params",
    "best_lr",
    "best_wd",
    "best_alpha",
    "best_c",
    "val_acc",
    "test_acc",
    "ci_low",
    "ci_high",
    "n_test",
    "chance",
)


def _natural(s: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(s))]


def _layer_order(layer: str) -> tuple:
    """layer_0, layer_1, ..., layer_10, then named layers (last, last_layer, visual_features)."""
    m = re.fullmatch(r"(?:layer_)?(\d+)", str(layer))
    return (0, int(m.group(1)), "") if m else (1, 0, str(layer))


def _sorted(results: list[dict]) -> list[dict]:
    return sorted(
        results, key=lambda r: (r["encoder"], _layer_order(r["layer"]), str(r["pooling"]), r["head"], r["view"])
    )


def setting(r: dict) -> str:
    """A result's best setting in a few characters: ``lr=0.01 wd=0``, ``alpha=10`` or ``C=0.1``."""
    if r.get("best_alpha") is not None:
        return f"alpha={r['best_alpha']:.3g}"
    if r.get("best_c") is not None:
        return f"C={r['best_c']:.3g}"
    return f"lr={r['best_lr']:.2g} wd={r['best_wd']:.2g}"


def same_as_mean(r: dict, results: list[dict]) -> bool:
    """Whether ``r`` is a patch grid's ``mean`` view with exactly the numbers of the same head on the
    ``mean`` pooling's vector of the same encoder and layer (the same probe, computed twice): shown once."""
    if (r["pooling"], r["view"]) != ("patch", "mean"):
        return False
    return any(
        (o["encoder"], o["layer"], o["pooling"], o["head"], o["view"])
        == (r["encoder"], r["layer"], "mean", r["head"], "vector")
        and (o["val_acc"], o["test_acc"]) == (r["val_acc"], r["test_acc"])
        for o in results
    )


def distinct(results: list[dict]) -> list[dict]:
    """The results less the patch/mean rows that repeat a mean row (see :func:`same_as_mean`)."""
    return [r for r in results if not same_as_mean(r, results)]


def table(out: dict) -> str:
    """The results as a fixed-width text table, one line per (feature set, head); a patch/mean row
    that repeats the mean row is left out (the CSV and JSON keep it)."""
    rels = out["settings"]["relations"]
    short = [r[:7] for r in rels]
    results = distinct(_sorted(out["results"]))
    lw = max([12] + [len(str(r["layer"])) for r in results])
    ew = max([10] + [len(str(r["encoder"])) for r in results])
    head = (
        f"{'encoder':{ew}} {'layer':{lw}} {'pooling':8} {'head':9} {'view':6} {'best setting':16} {'val':>6} "
        f"{'test':>6} {'95% CI':>13}" + "".join(f" {s:>7}" for s in short)
    )
    lines = [head, "-" * len(head)]
    for r in results:
        per = "".join(f" {r['per_relation'][n]['acc']:7.3f}" if n in r["per_relation"] else f" {'-':>7}" for n in rels)
        lines.append(
            f"{r['encoder']!s:{ew}} {r['layer']!s:{lw}} {str(r['pooling'])[:8]:8} {r['head']:9} "
            f"{r['view']:6} {setting(r):16} {r['val_acc']:6.3f} {r['test_acc']:6.3f} "
            f"{r['ci_low']:6.3f}-{r['ci_high']:5.3f}{per}"
        )
    s = out["settings"]
    chance = out["results"][0]["chance"] if out["results"] else float("nan")
    lines.append(
        f"task {s['task']}: {s['rows']['train']}/{s['rows']['validation']}/{s['rows']['test']} train/val/test rows, "
        f"chance {chance:.3f}; per-relation columns are test accuracies; 95% CI: Wilson interval"
        + (
            "; a mean vector = the patch grid's mean view (the same probe)"
            if len(results) < len(out["results"])
            else ""
        )
    )
    return "\n".join(lines)


def write_csv(out: dict, path: Path) -> None:
    rels = out["settings"]["relations"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(list(CSV_FIELDS) + [f"acc_{r}" for r in rels] + [f"n_{r}" for r in rels])
        for r in _sorted(out["results"]):
            per = r["per_relation"]
            w.writerow(
                ["" if r.get(k) is None else r[k] for k in CSV_FIELDS]
                + [per[n]["acc"] if n in per else "" for n in rels]
                + [per[n]["n"] if n in per else 0 for n in rels]
            )


def plot(out: dict, path: Path, title: str | None = None) -> None:
    """Test accuracy per layer, one panel per encoder, one line per (pooling, view, head), 95% Wilson
    interval bars: a colour per (pooling, view), a line style and marker per head; ``title`` (default:
    the task) heads the figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = distinct(_sorted(out["results"]))
    merged = {(r["encoder"], r["layer"]) for r in _sorted(out["results"]) if same_as_mean(r, out["results"])}
    encoders = sorted({r["encoder"] for r in results})
    inputs_all = sorted({(r["pooling"], r["view"]) for r in results})
    colour = {inp: f"C{i % 10}" for i, inp in enumerate(inputs_all)}  # one colour per (pooling, view) everywhere
    style = {
        "linear": ("-", "o"),
        "ridge": ("--", "s"),
        "logistic": (":", "^"),
        "attentive": ("-.", "D"),
        "mlp": ((0, (5, 1)), "v"),
    }
    fig, axes = plt.subplots(1, len(encoders), figsize=(4.5 * len(encoders), 3.6), squeeze=False, sharey=True)
    for ax, enc in zip(axes[0], encoders):
        rows = [r for r in results if r["encoder"] == enc]
        layers = sorted({r["layer"] for r in rows}, key=_layer_order)
        for line in sorted({(r["pooling"], r["view"], r["head"]) for r in rows}):
            pts = [r for r in rows if (r["pooling"], r["view"], r["head"]) == line]
            xs = [layers.index(r["layer"]) for r in pts]
            ys = [r["test_acc"] for r in pts]
            err = [[r["test_acc"] - r["ci_low"] for r in pts], [r["ci_high"] - r["test_acc"] for r in pts]]
            label = f"{line[0]} {line[1]} ({line[2]})"
            if line[:2] == ("mean", "vector") and any(e == enc for e, _ in merged):
                label = f"mean vector ({line[2]}; = patch mean)"
            ls, mk = style.get(line[2], ("-.", "x"))
            ax.errorbar(xs, ys, yerr=err, marker=mk, linestyle=ls, capsize=3, label=label, color=colour[line[:2]])
        if rows:
            ax.axhline(rows[0]["chance"], color="grey", linestyle=":", linewidth=1, label="chance")
        ax.set_xticks(range(len(layers)), layers, rotation=30, ha="right", rotation_mode="anchor")
        ax.set_title(enc)
        ax.set_xlabel("layer")
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel(f"test accuracy ({out['settings']['task']})")
    s = out["settings"]
    fig.suptitle(title or f"probes, task {s['task']}", fontsize=10)
    fig.text(
        0.99,
        0.01,
        "error bars: 95% Wilson intervals; dotted: chance",
        ha="right",
        va="bottom",
        fontsize=7,
        color="grey",
    )
    fig.tight_layout()
    fig.align_xlabels(axes[0])  # one height for every panel's "layer", whatever its tick labels
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_results(out: dict, folder, log: Callable[[str], None] = print, title: str | None = None) -> dict[str, Path]:
    """Write ``probe_results.json`` (everything but the split), ``split.json`` (``out["split"]``: the task,
    each split's rows and their targets), ``probe_results.csv`` and (with matplotlib) ``probe_accuracy.png``
    to ``folder`` (``title`` heads the plot); print the table. Returns the paths written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "probe_results.json", "csv": folder / "probe_results.csv"}
    paths["json"].write_text(json.dumps({k: v for k, v in out.items() if k != "split"}, indent=1) + "\n")
    if "split" in out:
        paths["split"] = folder / "split.json"
        paths["split"].write_text(json.dumps(out["split"]) + "\n")
    write_csv(out, paths["csv"])
    log(table(out))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        log(
            "matplotlib is not installed: no plot written (pip install 'featstore[plot]'); the JSON and CSV are complete"
        )
    else:
        paths["png"] = folder / "probe_accuracy.png"
        plot(out, paths["png"], title)
    log("wrote " + ", ".join(str(p) for p in paths.values()))
    return paths

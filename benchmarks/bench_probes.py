"""featstore's closed-form and L-BFGS heads against scikit-learn, and attentive vs flat linear heads (issue 14).

Two stores, in one run:

  synthetic   ``--sets`` feature sets of ``--rows`` x ``--dim`` float16 rows (default 3 x 50000 x 768), a
              4-class integer column planted with a different strength per set, one image per row;
  demo        the demo's tiny random-init DINOv2 (``featstore demo --encoders dinov2``: 4000 rows of 112 px
              images, every layer, cls / mean / patch pooling; patch grids of 8x8 tokens x 64).

On each, the same split (featstore's, by image, 70/15/15, seed 0) for everyone:

  ridge       featstore ``heads="ridge"`` over its 51 default strengths, all sets and views in one run (one
              streaming pass, reads from the store included) vs ``RidgeClassifierCV(alphas=the same 51)``
              per set and view (its efficient leave-one-out mode; the arrays in memory before its clock
              starts), each scored on test;
  logistic    featstore ``heads="logistic"`` over 10 C values (warm-started) vs, per set and view,
              ``StandardScaler`` + ``LogisticRegression(C, warm_start=True)`` over the same C values,
              best C on validation, scored on test;
  attentive   (demo patch grids) featstore ``attentive`` vs ``linear`` on the flattened grid, trained together.

Repetitions interleaved; medians reported. Torch and BLAS use the default threads on both sides.

    .venv/bin/python benchmarks/bench_probes.py              # the issue's sizes
    .venv/bin/python benchmarks/bench_probes.py --quick      # 8000 rows, 1 repetition (smoke run)

Writes benchmarks/results/probes.{json,md} (``probes-quick.*`` with --quick).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gather import command_line, machine_info, md_table

import featstore
from featstore.probe import DEFAULT_ALPHAS, DEFAULT_CS, train_probes
from featstore.probe.heads import view_input, views

RESULTS = Path(__file__).resolve().parent / "results"


def synthetic(root: Path, rows: int, dim: int, n_sets: int):
    import datasets

    rng = np.random.default_rng(0)
    cls = rng.integers(0, 4, rows)
    ds = datasets.Dataset.from_dict({"image_path": [f"img_{i}.png" for i in range(rows)], "cls": cls.tolist()})
    store = featstore.FeatureStore.create(root / "store")
    for s in range(n_sets):
        means = rng.standard_normal((4, dim)).astype(np.float32)
        strength = 0.02 + 0.02 * s  # weak to strong: the accuracy is neither chance nor 1
        with store.create_feature_set(f"synth/layer_{s}", rows, (dim,), "float16", {"layer": f"layer_{s}"}) as w:
            for lo in range(0, rows, 8192):
                hi = min(rows, lo + 8192)
                x = rng.standard_normal((hi - lo, dim)).astype(np.float32) + strength * means[cls[lo:hi]]
                w.write(lo, x.astype(np.float16))
    return featstore.FeatureStore.open(root / "store"), ds, "cls"


def demo(root: Path):
    from featstore.demo import run_demo

    run_demo(root / "demo", encoders=("dinov2",), epochs=1, log=lambda _m: None)
    return featstore.FeatureStore.open(root / "demo" / "features"), str(root / "demo" / "spatial_hf"), "relation"


def arrays(store, split: dict, max_dim: int = 4096):
    """Per (key, view): (x_train, y_train, x_val, y_val, x_test, y_test) as float64 arrays."""
    rows = {s: np.asarray(split["rows"][s]) for s in ("train", "validation", "test")}
    ys = {s: np.asarray(split["targets"][s]) for s in rows}
    out = {}
    for key in store.keys():
        fs = store[key]
        for v in views(fs):
            x = {s: view_input(fs[rows[s]], v).double().numpy() for s in rows}
            if x["train"].shape[1] <= max_dim:
                out[key, v] = (x["train"], ys["train"], x["validation"], ys["validation"], x["test"], ys["test"])
    return out


def sk_ridge(data):
    from sklearn.linear_model import RidgeClassifierCV

    accs = {}
    for kv, (xt, yt, _xv, _yv, xs, ys) in data.items():
        accs[kv] = float(RidgeClassifierCV(alphas=DEFAULT_ALPHAS).fit(xt, yt).score(xs, ys))
    return accs


def sk_logistic(data):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    accs = {}
    for kv, (xt, yt, xv, yv, xs, ys) in data.items():
        scaler = StandardScaler().fit(xt)
        xt, xv, xs = scaler.transform(xt), scaler.transform(xv), scaler.transform(xs)
        model = LogisticRegression(warm_start=True, max_iter=200)
        best, best_val = 0.0, -1.0
        for c in sorted(DEFAULT_CS):
            model.set_params(C=c).fit(xt, yt)
            val = model.score(xv, yv)
            if val > best_val:
                best_val, best = val, float(model.score(xs, ys))
        accs[kv] = best
    return accs


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def compare(name: str, store, ds, task: str, reps: int, logistic_reps: int, logistic_keys=("*",)) -> dict:
    import fnmatch

    first = train_probes(store, ds, "*", task, heads="ridge")
    data = arrays(store, first["split"])
    ldata = {kv: v for kv, v in data.items() if any(fnmatch.fnmatchcase(kv[0], p) for p in logistic_keys)}
    split_file = Path(tempfile.mkdtemp()) / "split.json"
    split_file.write_text(json.dumps(first["split"]))
    res: dict = {
        "store": name,
        "sets": len(store.keys()),
        "views": len(data),
        "logistic_views": len(ldata),
        "logistic_keys": list(logistic_keys),
        "rows": first["settings"]["rows"],
    }
    times: dict[str, list[float]] = {k: [] for k in ("fs_ridge", "sk_ridge", "fs_logistic", "sk_logistic")}
    for rep in range(max(reps, logistic_reps)):
        jobs = []
        if rep < reps:
            jobs += [
                ("fs_ridge", lambda: train_probes(store, ds, "*", task, heads="ridge", split_file=split_file)),
                ("sk_ridge", lambda: sk_ridge(data)),
            ]
        if rep < logistic_reps:
            jobs += [
                (
                    "fs_logistic",
                    lambda: train_probes(store, ds, list(logistic_keys), task, heads="logistic", split_file=split_file),
                ),
                ("sk_logistic", lambda: sk_logistic(ldata)),
            ]
        if rep % 2:
            jobs.reverse()  # interleaved, in turn first
        for label, job in jobs:
            t, out = timed(job)
            times[label].append(t)
            res[label + "_acc"] = (
                {f"{r['key']}:{r['view']}": r["test_acc"] for r in out["results"]}
                if isinstance(out, dict) and "results" in out
                else {f"{k}:{v}": a for (k, v), a in out.items()}
            )
    for label, ts in times.items():
        res[label + "_s"] = statistics.median(ts) if ts else None
        res[label + "_all_s"] = ts
    for head in ("ridge", "logistic"):
        fs_acc, sk_acc = res[f"fs_{head}_acc"], res[f"sk_{head}_acc"]
        common = sorted(set(fs_acc) & set(sk_acc))
        res[f"{head}_speedup"] = res[f"sk_{head}_s"] / res[f"fs_{head}_s"]
        res[f"{head}_max_acc_gap"] = max(abs(fs_acc[k] - sk_acc[k]) for k in common)
        res[f"{head}_mean_acc"] = {
            "featstore": statistics.mean(fs_acc[k] for k in common),
            "sklearn": statistics.mean(sk_acc[k] for k in common),
        }
    return res


def attentive(store, ds) -> dict:
    t, out = timed(
        lambda: train_probes(
            store, ds, "*/patch", "relation", heads="linear,attentive", lrs=(1e-3, 1e-2, 1e-1), epochs=10
        )
    )
    rows = []
    for key in sorted({r["key"] for r in out["results"]}):
        att = next(r for r in out["results"] if r["key"] == key and r["head"] == "attentive")
        flat = next(r for r in out["results"] if r["key"] == key and r["view"] == "flat" and r["head"] == "linear")
        rows.append(
            {
                "key": key,
                "attentive_acc": att["test_acc"],
                "flat_acc": flat["test_acc"],
                "attentive_params": att["params"],
                "flat_params": flat["params"],
            }
        )
    best_att = max(r["attentive_acc"] for r in rows)
    best_flat = max(r["flat_acc"] for r in rows)
    return {
        "seconds": t,
        "sets": rows,
        "best_attentive": best_att,
        "best_flat": best_flat,
        "param_ratio": rows[0]["flat_params"] / rows[0]["attentive_params"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=50000)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--sets", type=int, default=3)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--logistic-reps", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="8000 rows, one repetition")
    p.add_argument("--no-demo", action="store_true")
    p.add_argument("--only-demo", action="store_true", help="skip the synthetic store")
    p.add_argument("--demo-dir", default=None, help="an existing `featstore demo --encoders dinov2` folder to reuse")
    p.add_argument("--demo-logistic-keys", default="*", help="comma-separated globs: the demo sets logistic runs on")
    a = p.parse_args()
    if a.quick:
        a.rows, a.reps, a.logistic_reps = 8000, 1, 1
    root = Path(tempfile.mkdtemp(prefix="bench-probes-"))
    out: dict = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command_line(),
        "machine": machine_info(),
        "torch_threads": torch.get_num_threads(),
        "alphas": len(DEFAULT_ALPHAS),
        "cs": len(DEFAULT_CS),
    }
    if not a.only_demo:
        store, ds, task = synthetic(root, a.rows, a.dim, a.sets)
        out["synthetic"] = compare(f"synthetic {a.sets} x {a.rows} x {a.dim}", store, ds, task, a.reps, a.logistic_reps)
        print(json.dumps({k: v for k, v in out["synthetic"].items() if not k.endswith("_acc")}, indent=1), flush=True)
    if not a.no_demo:
        if a.demo_dir:
            d = Path(a.demo_dir)
            dstore, dds, dtask = featstore.FeatureStore.open(d / "features"), str(d / "spatial_hf"), "relation"
        else:
            dstore, dds, dtask = demo(root)
        lkeys = tuple(k for k in a.demo_logistic_keys.split(",") if k)
        out["demo"] = compare("demo (dinov2, 4000 rows)", dstore, dds, dtask, a.reps, a.logistic_reps, lkeys)
        out["attentive"] = attentive(dstore, dds)
        print(json.dumps({k: v for k, v in out["demo"].items() if not k.endswith("_acc")}, indent=1), flush=True)
        print(json.dumps(out["attentive"], indent=1), flush=True)
    name = "probes-quick" if a.quick else "probes-demo" if a.only_demo else "probes"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(out, indent=1) + "\n")
    (RESULTS / f"{name}.md").write_text(report(out) + "\n")
    print(report(out))


def report(out: dict) -> str:
    lines = [
        "# featstore ridge / logistic vs scikit-learn; attentive vs flat linear (issue 14)",
        "",
        f"`{out['command']}` on {out['when']}. Machine: {out['machine'].get('cpu', '?')}, "
        f"{out['machine'].get('cpus', '?')} CPUs, SHARED with two other engineers' jobs while it ran: "
        "timings are noisy; medians of interleaved repetitions, ratios from the same run.",
        "",
        f"ridge: {out['alphas']} strengths; logistic: {out['cs']} C values. featstore's times include reading the "
        "store and scoring validation and test; scikit-learn's start with the arrays in memory.",
        "",
    ]
    rows = []
    for sec in ("synthetic", "demo"):
        if sec not in out:
            continue
        r = out[sec]
        for head in ("ridge", "logistic"):
            rows.append(
                [
                    r["store"],
                    head,
                    str(r["views"] if head == "ridge" else r.get("logistic_views", r["views"])),
                    f"{r[f'fs_{head}_s']:.2f}",
                    f"{r[f'sk_{head}_s']:.2f}",
                    f"{r[f'{head}_speedup']:.2f}x",
                    f"{r[f'{head}_mean_acc']['featstore']:.4f}",
                    f"{r[f'{head}_mean_acc']['sklearn']:.4f}",
                    f"{100 * r[f'{head}_max_acc_gap']:.2f}",
                ]
            )
    lines += md_table(
        [
            "store",
            "head",
            "sets x views",
            "featstore s",
            "sklearn s",
            "speed-up",
            "featstore acc (mean)",
            "sklearn acc (mean)",
            "max gap (points)",
        ],
        rows,
    )
    if "attentive" in out:
        at = out["attentive"]
        lines += [
            "",
            f"attentive vs flat linear on the demo's patch grids ({at['seconds']:.1f} s for both, trained "
            "together): best attentive {:.3f}, best flat linear {:.3f}; {:.1f}x fewer parameters per head.".format(
                at["best_attentive"], at["best_flat"], at["param_ratio"]
            ),
            "",
        ]
        lines += md_table(
            ["set", "attentive", "flat linear", "attentive params", "flat params"],
            [
                [
                    s["key"],
                    f"{s['attentive_acc']:.3f}",
                    f"{s['flat_acc']:.3f}",
                    str(s["attentive_params"]),
                    str(s["flat_params"]),
                ]
                for s in at["sets"]
            ],
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()

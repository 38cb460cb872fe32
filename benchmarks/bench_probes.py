"""featstore's closed-form and L-BFGS heads against scikit-learn, and attentive vs flat linear heads (issue 14).

Two stores, in one run:

  synthetic   ``--sets`` feature sets of ``--rows`` x ``--dim`` float16 rows (default 3 x 50000 x 768), a
              4-class integer column planted with a different strength per set, one image per row;
  demo        the demo's store: tiny random-init encoders, 4000 rows of 112 px images, every layer, cls / mean
              / patch pooling (patch grids of 8x8 or 7x7 tokens x 64). ``--demo-dir`` reuses the folder of a
              ``featstore demo`` run (all three encoders); without it the bench builds a DINOv2-only demo.

On each, the same split (featstore's, by image, 70/15/15, seed 0) for everyone:

  ridge       featstore ``heads="ridge"`` over its 51 default strengths, all sets and views in one run (one
              streaming pass, reads from the store included) vs ``RidgeClassifierCV(alphas=the same 51)``
              per set and view (its efficient leave-one-out mode; the arrays in memory before its clock
              starts), each scored on test. Also per view: the strength each chose (featstore: best on
              validation; sklearn: best by leave-one-out on train) and featstore's test accuracy at
              sklearn's strength, which separates a different choice of strength from a different solution;
  logistic    featstore ``heads="logistic"`` over 10 C values (warm-started) vs, per set and view,
              ``StandardScaler`` + ``LogisticRegression(C, warm_start=True)`` over the same C values,
              best C on validation, scored on test;
  attentive   (demo patch grids) featstore ``attentive`` vs ``linear`` on the flattened grid, trained together.

Repetitions interleaved; medians reported. Torch and BLAS use the default threads on both sides, or
``--threads N`` on both. ``--heads ridge,attentive`` leaves logistic out (a few minutes on the demo store).

    .venv/bin/python benchmarks/bench_probes.py              # the issue's sizes
    .venv/bin/python benchmarks/bench_probes.py --quick      # 8000 rows, 1 repetition (smoke run)
    .venv/bin/featstore demo --out /tmp/d && .venv/bin/python benchmarks/bench_probes.py --only-demo --demo-dir /tmp/d
    .venv/bin/python benchmarks/bench_probes.py --only-demo --demo-dir /tmp/d --heads ridge,attentive  # no logistic

Writes benchmarks/results/probes.{json,md} (``probes-quick.*`` with --quick, ``probes-demo.*`` with --only-demo;
a run without every head adds them to the name: ``probes-demo-attentive-ridge.*``).
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
from _machine import cpu_busy_share
from bench_gather import command_line, machine_info
from probes_report import report

import featstore
from featstore.probe import DEFAULT_ALPHAS, DEFAULT_CS, train_probes
from featstore.probe.heads import view_input, views

RESULTS = Path(__file__).resolve().parent / "results"
ATTENTIVE_LRS = (1e-3, 1e-2, 1e-1)  # one grid for both heads, chosen per head on validation
ATTENTIVE_EPOCHS = 10


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


def sk_ridge(data, chosen: dict):
    """RidgeClassifierCV per view (its efficient leave-one-out on train picks the strength); the strength it
    chose per view goes into ``chosen``."""
    from sklearn.linear_model import RidgeClassifierCV

    accs = {}
    for kv, (xt, yt, _xv, _yv, xs, ys) in data.items():
        model = RidgeClassifierCV(alphas=DEFAULT_ALPHAS).fit(xt, yt)
        accs[kv], chosen[kv] = float(model.score(xs, ys)), float(model.alpha_)
    return accs


def sk_ridge_val(data):
    """scikit-learn's ridge with featstore's selection rule: ``Ridge(solver="svd")`` fit on train with one
    target column per (strength, class) (its SVD solver takes a strength per target: one SVD per view), the
    first strength best on validation, its test accuracy. Targets coded as RidgeClassifier codes them."""
    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import LabelBinarizer

    a = np.asarray(DEFAULT_ALPHAS)
    accs = {}
    for kv, (xt, yt, xv, yv, xs, ys) in data.items():
        lb = LabelBinarizer(pos_label=1, neg_label=-1).fit(yt)
        y = lb.transform(yt).astype(np.float64)
        k = y.shape[1]
        model = Ridge(alpha=np.repeat(a, k), solver="svd").fit(xt, np.tile(y, (1, len(a))))

        def decide(x):
            out = model.predict(x).reshape(len(x), len(a), k)
            idx = (out[..., 0] > 0).astype(int) if k == 1 else out.argmax(2)
            return lb.classes_[idx]  # (rows, alphas)

        best = int(np.argmax((decide(xv) == yv[:, None]).mean(0)))
        accs[kv] = float((decide(xs)[:, best] == ys).mean())
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
    read_s, data = timed(lambda: arrays(store, first["split"]))
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
        "sk_read_s": read_s,  # reading the store into scikit-learn's float64 arrays: outside its clock
    }
    times: dict[str, list[float]] = {k: [] for k in ("fs_ridge", "sk_ridge", "fs_logistic", "sk_logistic")}
    cpu: dict[str, list[float]] = {k: [] for k in times}
    sk_alphas: dict = {}
    fs_ridge_out: list[dict] = []
    for rep in range(max(reps, logistic_reps)):
        jobs = []
        if rep < reps:
            jobs += [
                ("fs_ridge", lambda: train_probes(store, ds, "*", task, heads="ridge", split_file=split_file)),
                ("sk_ridge", lambda: sk_ridge(data, sk_alphas)),
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
            c0 = time.process_time()  # CPU seconds of this process: steadier than wall time on a shared machine
            t, out = timed(job)
            times[label].append(t)
            cpu[label].append(time.process_time() - c0)
            if label == "fs_ridge":
                fs_ridge_out[:] = [out]
            res[label + "_acc"] = (
                {f"{r['key']}:{r['view']}": r["test_acc"] for r in out["results"]}
                if isinstance(out, dict) and "results" in out
                else {f"{k}:{v}": a for (k, v), a in out.items()}
            )
    for label, ts in times.items():
        res[label + "_s"] = statistics.median(ts) if ts else None
        res[label + "_all_s"] = ts
        res[label + "_cpu_s"] = statistics.median(cpu[label]) if cpu[label] else None
        res[label + "_all_cpu_s"] = cpu[label]
    val_s, sk_val = timed(lambda: sk_ridge_val(data))
    common = sorted(set(res["fs_ridge_acc"]) & {f"{k}:{v}" for k, v in sk_val})
    sk_val_acc = {f"{k}:{v}": a for (k, v), a in sk_val.items()}
    res["sk_ridge_val"] = {
        "seconds": val_s,
        "acc": sk_val_acc,
        "mean_acc": statistics.mean(sk_val_acc[k] for k in common),
        "max_acc_gap": max(abs(res["fs_ridge_acc"][k] - sk_val_acc[k]) for k in common),
        "mean_acc_featstore": statistics.mean(res["fs_ridge_acc"][k] for k in common),
    }
    res["ridge_strengths"] = strength_choices(fs_ridge_out[0], res, sk_alphas)
    res["ridge_same_strength_max_gap"] = max(abs(r["fs_acc_at_sk_alpha"] - r["sk_acc"]) for r in res["ridge_strengths"])
    for head in ("ridge", "logistic") if logistic_reps else ("ridge",):
        fs_acc, sk_acc = res[f"fs_{head}_acc"], res[f"sk_{head}_acc"]
        common = sorted(set(fs_acc) & set(sk_acc))
        res[f"{head}_speedup"] = res[f"sk_{head}_s"] / res[f"fs_{head}_s"]
        res[f"{head}_cpu_speedup"] = res[f"sk_{head}_cpu_s"] / res[f"fs_{head}_cpu_s"]
        res[f"{head}_max_acc_gap"] = max(abs(fs_acc[k] - sk_acc[k]) for k in common)
        res[f"{head}_mean_acc"] = {
            "featstore": statistics.mean(fs_acc[k] for k in common),
            "sklearn": statistics.mean(sk_acc[k] for k in common),
        }
    return res


def strength_choices(fs_out: dict, res: dict, sk_alphas: dict) -> list[dict]:
    """Per view: the strength each side chose (featstore: best on validation; RidgeClassifierCV: best by
    leave-one-out on train), both test accuracies, and featstore's test accuracy at scikit-learn's strength
    (from its sweep: every strength is scored on test too). Equal accuracies at the same strength mean any
    gap comes from the choice of strength, not from the solution."""
    sweep = {(r["key"], r["view"], r["alpha"]): r["test_acc"] for r in fs_out["sweep"] if r["head"] == "ridge"}
    out = []
    for r in fs_out["results"]:
        kv = (r["key"], r["view"])
        if kv not in sk_alphas:
            continue
        name = f"{r['key']}:{r['view']}"
        out.append(
            {
                "set": name,
                "fs_alpha": r["best_alpha"],
                "sk_alpha": sk_alphas[kv],
                "fs_acc": res["fs_ridge_acc"][name],
                "sk_acc": res["sk_ridge_acc"][name],
                "fs_acc_at_sk_alpha": sweep[r["key"], r["view"], sk_alphas[kv]],
            }
        )
    return out


def attentive(store, ds) -> dict:
    t, out = timed(
        lambda: train_probes(
            store, ds, "*/patch", "relation", heads="linear,attentive", lrs=ATTENTIVE_LRS, epochs=ATTENTIVE_EPOCHS
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
    return {
        "seconds": t,
        "lrs": list(ATTENTIVE_LRS),
        "epochs": ATTENTIVE_EPOCHS,
        "sets": rows,
        "best_attentive": max(r["attentive_acc"] for r in rows),
        "best_flat": max(r["flat_acc"] for r in rows),
        "mean_attentive": statistics.mean(r["attentive_acc"] for r in rows),
        "mean_flat": statistics.mean(r["flat_acc"] for r in rows),
        "sets_at_least_flat": sum(r["attentive_acc"] >= r["flat_acc"] for r in rows),
        "param_ratio_min": min(r["flat_params"] / r["attentive_params"] for r in rows),
        "param_ratio_max": max(r["flat_params"] / r["attentive_params"] for r in rows),
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
    p.add_argument(
        "--heads",
        default="ridge,logistic,attentive",
        help="comma-separated, of ridge, logistic, attentive: what to run (ridge,attentive on the demo store takes a "
        "few minutes; logistic alone ~26 min)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="limit torch and every BLAS pool (threadpoolctl) to N threads, both sides (steadier on a shared machine)",
    )
    p.add_argument("--demo-logistic-keys", default="*", help="comma-separated globs: the demo sets logistic runs on")
    a = p.parse_args()
    if a.quick:
        a.rows, a.reps, a.logistic_reps = 8000, 1, 1
    heads = {h for h in a.heads.split(",") if h}
    if heads - {"ridge", "logistic", "attentive"} or "ridge" not in heads:
        p.error(f"--heads {a.heads!r}: give ridge plus any of logistic, attentive (ridge is the comparison's base)")
    if "logistic" not in heads:
        a.logistic_reps = 0
    out_limits = None  # the BLAS pools' threads under --threads
    if a.threads:
        import scipy.linalg  # noqa: F401  (loaded first: threadpoolctl limits only the BLAS pools already loaded)
        import sklearn.linear_model  # noqa: F401
        from threadpoolctl import threadpool_info, threadpool_limits

        torch.set_num_threads(a.threads)
        threadpool_limits(a.threads)  # NumPy's and SciPy's OpenBLAS, for featstore and scikit-learn alike
        out_limits = [(i["internal_api"], i["num_threads"]) for i in threadpool_info()]
    root = Path(tempfile.mkdtemp(prefix="bench-probes-"))
    out: dict = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command_line(),
        "machine": machine_info(),
        "torch_threads": torch.get_num_threads(),
        "blas_threads": out_limits,
        "cpu_busy_before": cpu_busy_share(2.0),  # other work's share of the CPUs just before the run
        "alphas": len(DEFAULT_ALPHAS),
        "cs": len(DEFAULT_CS),
    }
    if not a.only_demo:
        store, ds, task = synthetic(root, a.rows, a.dim, a.sets)
        out["synthetic"] = compare(f"synthetic {a.sets} x {a.rows} x {a.dim}", store, ds, task, a.reps, a.logistic_reps)
        print(
            json.dumps({k: v for k, v in out["synthetic"].items() if not k.endswith(("_acc", "_val"))}, indent=1),
            flush=True,
        )
    if not a.no_demo:
        if a.demo_dir:
            d = Path(a.demo_dir)
            dstore, dds, dtask = featstore.FeatureStore.open(d / "features"), str(d / "spatial_hf"), "relation"
        else:
            dstore, dds, dtask = demo(root)
        lkeys = tuple(k for k in a.demo_logistic_keys.split(",") if k)
        encs = sorted({k.split("/")[0] for k in dstore.keys()})
        out["demo"] = compare(
            f"demo ({', '.join(encs)}; 4000 rows)", dstore, dds, dtask, a.reps, a.logistic_reps, lkeys
        )
        print(
            json.dumps({k: v for k, v in out["demo"].items() if not k.endswith(("_acc", "_val"))}, indent=1), flush=True
        )
        if "attentive" in heads:
            out["attentive"] = attentive(dstore, dds)
            print(json.dumps(out["attentive"], indent=1), flush=True)
    out["cpu_busy_after"] = cpu_busy_share(2.0)
    name = "probes-quick" if a.quick else "probes-demo" if a.only_demo else "probes"
    if heads != {"ridge", "logistic", "attentive"}:
        name += "-" + "-".join(sorted(heads))  # a partial run does not overwrite the full one
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(out, indent=1) + "\n")
    (RESULTS / f"{name}.md").write_text(report(out) + "\n")
    print(report(out))


if __name__ == "__main__":
    main()

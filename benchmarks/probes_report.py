"""The report of ``bench_probes.py``: its results dict as the markdown committed beside the JSON."""

from __future__ import annotations

from _machine import load_note
from bench_gather import md_table


def cpu_cell(r: dict, side: str, head: str) -> str:
    v = r.get(f"{side}_{head}_cpu_s")
    return "-" if v is None else f"{v:.2f}"


def report(out: dict) -> str:
    lines = [
        "# featstore ridge / logistic vs scikit-learn; attentive vs flat linear (issue 14)",
        "",
        f"`{out['command']}` on {out['when']}. Machine: {out['machine'].get('cpu', '?')}, "
        f"{out['machine'].get('cores', '?')} CPUs, {out.get('torch_threads', '?')} torch / BLAS threads; CPU busy share "
        "(other work) "
        f"{100 * out.get('cpu_busy_before', float('nan')):.0f}% before the run, "
        f"{100 * out.get('cpu_busy_after', float('nan')):.0f}% after it "
        f"({load_note(out.get('cpu_busy_before', 1.0), out.get('cpu_busy_after', 1.0))}; "
        "medians of interleaved repetitions, ratios from the same run).",
        "",
        f"ridge: {out['alphas']} strengths; logistic: {out['cs']} C values. featstore's times include reading the "
        "store and scoring validation and test; scikit-learn's start with the arrays in memory. CPU s: the process's CPU "
        "time (all threads), which other work on a shared machine inflates less than wall time.",
        "",
    ]
    rows = []
    for sec in ("synthetic", "demo"):
        if sec not in out:
            continue
        r = out[sec]
        for head in ("ridge", "logistic"):
            if f"{head}_speedup" not in r:
                continue  # --logistic-reps 0
            rows.append(
                [
                    r["store"],
                    head,
                    str(r["views"] if head == "ridge" else r.get("logistic_views", r["views"])),
                    f"{r[f'fs_{head}_s']:.2f}",
                    f"{r[f'sk_{head}_s']:.2f}",
                    f"{r[f'{head}_speedup']:.2f}x",
                    cpu_cell(r, "fs", head),
                    cpu_cell(r, "sk", head),
                    f"{r[f'{head}_cpu_speedup']:.2f}x" if f"{head}_cpu_speedup" in r else "-",
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
            "featstore CPU s",
            "sklearn CPU s",
            "CPU speed-up",
            "featstore acc (mean)",
            "sklearn acc (mean)",
            "max gap (points)",
        ],
        rows,
    )
    for sec in ("synthetic", "demo"):
        if sec not in out or "sk_ridge_val" not in out[sec]:
            continue
        r, v = out[sec], out[sec]["sk_ridge_val"]
        lines += [
            "",
            f"{r['store']}: reading the store into scikit-learn's float64 arrays took {r['sk_read_s']:.2f} s (outside "
            f"its clock). With featstore's selection rule (each strength fit on train, the first best on validation: "
            f"`Ridge(solver='svd')` with a strength per target column, {v['seconds']:.1f} s, untimed above) "
            f"scikit-learn's mean test accuracy is {v['mean_acc']:.4f} against featstore's {v['mean_acc_featstore']:.4f}; "
            f"max per-view gap {100 * v['max_acc_gap']:.2f} points.",
        ]
    for sec in ("synthetic", "demo"):
        if sec not in out or "ridge_strengths" not in out[sec]:
            continue
        r = out[sec]
        differ = [c for c in r["ridge_strengths"] if c["fs_acc"] != c["sk_acc"]]
        lines += [
            "",
            f"ridge strengths, {r['store']}: featstore picks the strength best on validation, RidgeClassifierCV the "
            f"one best by leave-one-out on train; they chose the same on "
            f"{sum(c['fs_alpha'] == c['sk_alpha'] for c in r['ridge_strengths'])} of {len(r['ridge_strengths'])} "
            f"views. At scikit-learn's strength, featstore's test accuracy differs from scikit-learn's by at most "
            f"{100 * r['ridge_same_strength_max_gap']:.2f} points, so the gaps above come from the choice of "
            f"strength, not the solution. The views whose accuracies differ ({len(differ)}):",
            "",
        ]
        lines += md_table(
            [
                "view",
                "featstore alpha (val)",
                "sklearn alpha (LOO)",
                "featstore acc",
                "sklearn acc",
                "featstore acc at sklearn alpha",
            ],
            [
                [
                    c["set"],
                    f"{c['fs_alpha']:.4g}",
                    f"{c['sk_alpha']:.4g}",
                    f"{c['fs_acc']:.4f}",
                    f"{c['sk_acc']:.4f}",
                    f"{c['fs_acc_at_sk_alpha']:.4f}",
                ]
                for c in differ
            ],
        )
    if "attentive" in out:
        at = out["attentive"]
        lines += [
            "",
            f"attentive vs flat linear on the demo's patch grids ({at['seconds']:.1f} s for both, trained together; "
            f"learning rates {at['lrs']}, {at['epochs']} epochs, each head's rate chosen on validation): attentive at "
            f"least as accurate on test on {at['sets_at_least_flat']} of {len(at['sets'])} sets (mean "
            f"{at['mean_attentive']:.3f} vs {at['mean_flat']:.3f}; best {at['best_attentive']:.3f} vs "
            f"{at['best_flat']:.3f}), with {at['param_ratio_min']:.1f}-{at['param_ratio_max']:.1f}x fewer parameters "
            "per head.",
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

"""The built-in end-to-end job (``featstore demo``, ``make demo``): dataset -> encoders -> store -> probes.

1. generate the synthetic spatial dataset (:func:`featstore.spatial.synth.generate`);
2. build tiny random-init DINOv2, CLIP and Qwen2-VL vision encoders locally (:mod:`featstore.demo.tiny_models`;
   no downloads), unless real checkpoints are given (hub ids or local folders);
3. extract several layers of each with cls, mean and patch pooling into a store (``featstore extract``);
4. train probes on every feature set (``featstore probe``; linear heads unless ``heads`` says more), print
   the table, write JSON, CSV, split and plot. Ridge and attentive heads are opt-in
   (``featstore demo --head linear,ridge,attentive``): with them the job took 67.1 s on the idle 2-core VM
   (2026-12-02), linear heads alone 47.9 s, and the default demo is to stay near a minute
   (docs/performance.md).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

from ..batches import FeatureStore
from ..distributed import check_device
from ..extraction import extract
from ..probe import DEFAULT_LRS, train_probes
from ..probe.options import parse_heads
from ..probe.report import write_results
from ..spatial.synth import generate
from . import tiny_models

MARKER = ".featstore-demo"
ENCODERS = ("dinov2", "clip", "qwen")
POOLINGS = {"dinov2": "cls,mean,patch", "clip": "cls,mean,patch", "qwen": "mean,patch"}  # Qwen has no CLS token
IMAGE_SIZE = 112  # the demo's images and tiny encoders: an 8x8 patch grid keeps the whole job near two minutes
SANITY = 0.90  # a patch-grid probe must reach this on `relation`: spatial information survives end to end
ATTENTIVE_LRS = (1e-3, 1e-2, 1e-1)  # with attentive heads: their queries need 1e-1 in 10 epochs (validation picks)


def _prepare(out: Path) -> None:
    if out.exists():
        if (out / MARKER).exists():
            shutil.rmtree(out)  # our own previous demo output
        elif any(out.iterdir()):
            raise FileExistsError(f"{out} exists and is not a featstore demo folder; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by `featstore demo`; safe to delete\n")


def _tiny_model(encoder: str, folder: Path) -> str:

    if encoder == "dinov2":
        return str(tiny_models.make_dinov2(folder, image_size=IMAGE_SIZE))
    if encoder == "clip":
        return str(tiny_models.make_clip(folder, image_size=IMAGE_SIZE))
    return str(tiny_models.make_qwen(folder, layout="tower", image_size=IMAGE_SIZE)[0])


def run_demo(
    out: str | Path = "datasets/demo",
    n_rows: int = 4000,
    seed: int = 0,
    models: dict | None = None,
    layers: str = "all",
    task: str = "relation",
    epochs: int = 10,
    device: str = "cpu",
    encoders=ENCODERS,
    heads=("linear",),
    log: Callable[[str], None] = print,
) -> dict:
    """Run the whole job into ``out``; returns the probe results (:func:`featstore.probe.train_probes`).

    ``models`` maps an encoder (``dinov2``, ``clip``, ``qwen``) to a hub id or local folder to use
    instead of its tiny random-init stand-in; ``encoders`` chooses which of the three run; ``heads`` the
    probe heads (:func:`featstore.probe.train_probes`; a list or ``"linear,ridge"``). With ``attentive`` among
    them the learning-rate sweep is :data:`ATTENTIVE_LRS` for every AdamW head, else the default.
    """

    out = Path(out)
    check_device(device)  # before any work: a CUDA device this torch cannot use fails here
    kinds = parse_heads(heads)  # an unknown head fails here too, before any work
    models = dict(models or {})
    encoders = [encoders] if isinstance(encoders, str) else list(encoders)
    unknown = sorted((set(models) | set(encoders)) - set(ENCODERS))
    if unknown or not encoders:
        raise ValueError(f"unknown or no encoder(s) {unknown}; choose from {list(ENCODERS)}")
    _prepare(out)
    t0 = time.perf_counter()
    data = out / "spatial_hf"
    generate(data, n=n_rows, seed=seed, size=IMAGE_SIZE, progress=False)
    log(
        f"generated the synthetic spatial dataset: {n_rows} rows of {IMAGE_SIZE}x{IMAGE_SIZE} images in {data} "
        f"({time.perf_counter() - t0:.1f} s)"
    )
    store_root = out / "features"
    for enc in encoders:
        model = models.get(enc)
        if model is None:
            model = _tiny_model(enc, out / "models" / enc)
            log(
                f"{enc}: built a tiny RANDOM-INIT model in {model} (no download; its probe numbers say what a random "
                "network keeps, not what a trained one learns)"
            )
        t = time.perf_counter()
        result = extract(
            str(data),
            enc,
            model,
            store_root,
            layers=layers,
            pooling=POOLINGS[enc],
            device=device,
            export_pt=False,
            progress=False,
            num_workers=1,
        )
        log(f"{enc}: extracted {len(result.keys)} feature sets in {time.perf_counter() - t:.1f} s")
    store = FeatureStore.open(store_root)
    results = _probes(store, data, task, kinds, epochs, seed, device)
    log("")
    tiny = [enc for enc in encoders if enc not in models]
    kind = f"{', '.join(tiny)} random-init (tiny, untrained)" if tiny else "real checkpoints"
    if tiny and len(tiny) < len(encoders):
        kind += f"; {', '.join(e for e in encoders if e in models)} real checkpoints"
    title = (
        f"featstore demo: {', '.join(kinds)} probes for task '{task}' on the synthetic spatial dataset; "
        f"encoders: {kind}"
    )
    write_results(results, out / "results", log=log, title=title)
    _report_sanity(results, task, log)
    log(
        f"\ndone in {time.perf_counter() - t0:.1f} s. The encoders above are random-init unless you passed checkpoints;"
        " run the same job on real ones with e.g.\n  featstore demo --dinov2 facebook/dinov2-small "
        "--clip openai/clip-vit-base-patch16 --qwen Qwen/Qwen2-VL-2B-Instruct --layers 4,8,last\n"
        "(hub ids or local save_pretrained folders; --device cuda on a GPU)."
    )
    return results


def _probes(store: FeatureStore, data: Path, task: str, kinds: list[str], epochs: int, seed: int, device: str):
    """The probe run of the demo: ``kinds`` on every set, ``attentive`` on the patch grids only (a second run on
    the same split: the same seed splits the same way), its results and sweep joined to the first run's."""
    lrs = ATTENTIVE_LRS if "attentive" in kinds else DEFAULT_LRS
    common: dict = dict(lrs=lrs, epochs=epochs, seed=seed, device=device)
    others = [k for k in kinds if k != "attentive"]
    grids = [k for k in store.keys() if len(store[k].row_shape) == 2]
    results = train_probes(store, str(data), "*" if others else grids, task, heads=others or kinds, **common)
    if others and "attentive" in kinds and grids:
        att = train_probes(store, str(data), grids, task, heads=["attentive"], **common)
        assert att["split"]["rows"] == results["split"]["rows"]  # one split for every head
        results["results"] += att["results"]
        results["sweep"] += att["sweep"]
        results["settings"]["heads"] = kinds
    return results


def _report_sanity(results: dict, task: str, log: Callable[[str], None]) -> bool | None:
    """Say whether the best patch-grid probe reaches :data:`SANITY` on ``relation``; None for other tasks."""
    patch = [r for r in results["results"] if r["pooling"] == "patch" and r["view"] == "flat" and r["head"] == "linear"]
    if not patch:
        return None
    best = max(patch, key=lambda r: r["test_acc"])
    log(
        f"best patch-grid probe: {best['key']} (flat) {best['test_acc']:.3f} on {task} "
        f"[{best['ci_low']:.3f}, {best['ci_high']:.3f}]; chance {best['chance']:.3f}"
    )
    if task != "relation":
        return None
    ok = best["test_acc"] >= SANITY
    log(
        f"sanity: {'PASS' if ok else 'FAIL'} - a linear probe on patch-grid features {'reaches' if ok else 'misses'} "
        f"{SANITY:.0%} on `relation`, so spatial information {'survives' if ok else 'may be lost'} end to end"
        + ("" if ok else " (see the table: which encoder and layer lose it?)")
    )
    return ok

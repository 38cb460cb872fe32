"""The probe report the demo prints and plots: a patch/mean row that repeats the mean row is shown
once, long layer names are not cut, the plot names its task and its error bars, x labels align."""

from __future__ import annotations

import pytest

from featstore.probe.report import distinct, plot, table


def _row(encoder, layer, pooling, view, acc):
    return {
        "encoder": encoder,
        "layer": layer,
        "pooling": pooling,
        "head": "linear",
        "view": view,
        "best_lr": 0.01,
        "best_wd": 0.0,
        "val_acc": acc,
        "test_acc": acc,
        "ci_low": acc - 0.05,
        "ci_high": acc + 0.05,
        "chance": 0.25,
        "per_relation": {"left": {"acc": acc, "n": 10}},
    }


OUT = {
    "settings": {"relations": ["left"], "task": "relation", "rows": {"train": 80, "validation": 10, "test": 10}},
    "results": [
        _row("qwen", "visual_features", "mean", "vector", 0.3),
        _row("qwen", "visual_features", "patch", "mean", 0.3),  # the same probe: shown once
        _row("qwen", "visual_features", "patch", "flat", 0.9),
        _row("dinov2", "layer_0", "mean", "vector", 0.31),
        _row("dinov2", "layer_0", "patch", "mean", 0.29),  # different numbers: kept
        _row("dinov2", "layer_10", "cls", "vector", 0.2),
    ],
}


def test_table_shows_a_repeated_mean_row_once_and_whole_layer_names():
    text = table(OUT)
    assert "visual_features" in text and "visual_featu " not in text
    qwen = [line for line in text.splitlines() if line.startswith("qwen")]
    assert [line.split()[2:5] for line in qwen] == [["mean", "linear", "vector"], ["patch", "linear", "flat"]]
    assert sum(line.startswith("dinov2") for line in text.splitlines()) == 3
    assert "Wilson" in text and "a mean vector = the patch grid's mean view" in text
    assert len(distinct(OUT["results"])) == 5


def test_plot_names_task_error_bars_and_aligns_x_labels(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib.figure

    saved, real_savefig = [], matplotlib.figure.Figure.savefig

    def savefig(fig, *args, **kwargs):
        saved.append(fig)
        real_savefig(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    plot(OUT, tmp_path / "p.png", title="task 'relation'; encoders: random-init")
    (fig,) = saved
    assert fig._suptitle.get_text() == "task 'relation'; encoders: random-init"
    assert any("95% Wilson intervals" in t.get_text() for t in fig.texts)
    axes = fig.axes
    labels = {text.get_text() for ax in axes for text in ax.get_legend().get_texts()}
    assert "mean vector (linear; = patch mean)" in labels and "patch mean (linear)" in labels  # dinov2's differs
    qwen = next(ax for ax in axes if ax.get_title() == "qwen")
    assert {t.get_text() for t in qwen.get_legend().get_texts()} == {
        "mean vector (linear; = patch mean)",
        "patch flat (linear)",
        "chance",
    }
    assert (tmp_path / "p.png").stat().st_size > 0
    heights = {round(ax.xaxis.label.get_window_extent().y0, 1) for ax in axes}
    assert len(heights) == 1

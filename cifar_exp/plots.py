"""Figures saved as PNG with matplotlib's non-interactive Agg backend."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

# class names longer than this are cut with an ellipsis where a figure prints them: a folder
# name of hundreds of characters would leave no room for the plot itself
LABEL_CHARS = 24


def short(name: str) -> str:
    return name if len(name) <= LABEL_CHARS else name[: LABEL_CHARS - 1] + "…"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def image_grid(
    images: torch.Tensor, titles: Sequence[str], path: Path, ncols: int = 8, colors: Sequence[str] | None = None
) -> Path:
    """uint8 [N,3,H,W] images in a grid, each titled (the notes' visualize()). The grid is
    one picture with text on top: one matplotlib axes instead of N keeps this fast."""
    plt = _pyplot()
    n, _, h, w = images.shape
    nrows = max(1, -(-n // ncols))
    gap_x, gap_y = 4, 14 + 8 * max(t.count("\n") for t in titles)  # room for each title
    canvas = torch.full((3, nrows * (h + gap_y), ncols * (w + gap_x)), 255, dtype=torch.uint8)
    for i, img in enumerate(images.cpu()):
        r, c = divmod(i, ncols)
        top, left = r * (h + gap_y) + gap_y, c * (w + gap_x) + gap_x // 2
        canvas[:, top : top + h, left : left + w] = img
    scale = 1 / 36  # inches per canvas pixel: 2.8x zoom at 100 dpi
    fig = plt.figure(figsize=(canvas.shape[2] * scale, canvas.shape[1] * scale))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(canvas.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.axis("off")
    for i, title in enumerate(titles):
        r, c = divmod(i, ncols)
        ax.text(
            c * (w + gap_x) + gap_x // 2 + w / 2,
            r * (h + gap_y) + gap_y - 2,
            title,
            ha="center",
            va="bottom",
            fontsize=7,
            color=colors[i] if colors else "black",
        )
    return _save(fig, path)


def showcase(n: int, device, k: int = 32) -> torch.Tensor:
    """k fixed, spread-out indices into a split of n images (folder datasets are sorted by
    class), on the split's device so indexing never mixes devices."""
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:k].sort().values
    return idx.to(device)


def predictions(
    images: torch.Tensor, predicted: torch.Tensor, labels: torch.Tensor, classes: Sequence[str], path: Path
) -> Path:
    """Each image titled with its predicted class (true class below), green when right."""
    pred, true = predicted.cpu().tolist(), labels.cpu().tolist()
    titles = [f"{short(classes[p])}\n({short(classes[t])})" for p, t in zip(pred, true)]
    colors = ["green" if p == t else "red" for p, t in zip(pred, true)]
    return image_grid(images, titles, path, colors=colors)


# panel -> split -> the per-epoch metric drawn for it
CURVES = {
    "loss": {"train": "train/loss_epoch", "val": "val/loss", "test": "test/loss"},
    "accuracy": {"train": "train/acc", "val": "val/acc", "test": "test/acc"},
}


def curve_series(history: list[dict]) -> dict[str, dict[str, tuple[list[int], list[float]]]]:
    """For each panel, each split's (epochs, values), for the splits the history holds."""
    series: dict[str, dict] = {}
    for panel, splits in CURVES.items():
        for split, key in splits.items():
            points = [(int(h["epoch"]), h[key]) for h in history if key in h]
            if points:
                series.setdefault(panel, {})[split] = ([e for e, _ in points], [v for _, v in points])
    return series


def learning_curves(history: list[dict], path: Path) -> Path:
    """Loss and accuracy per epoch for every split that has them, against whole epochs."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (panel, splits) in zip(axes, curve_series(history).items()):
        for split, (epochs, values) in splits.items():
            ax.plot(epochs, values, marker="o", label=split)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(panel)
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path, tight=True)


def confusion_matrix(confusion: torch.Tensor, classes: Sequence[str], path: Path) -> Path:
    """Rows are true classes, columns predictions; cells are counts, colour is the row share."""
    plt = _pyplot()
    counts = confusion.cpu().numpy()
    share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    k = len(classes)
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * k), max(4, 0.55 * k)))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    labels = [short(c) for c in classes]
    ax.set_xticks(range(k), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(
                    j,
                    i,
                    str(counts[i, j]),
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if share[i, j] > 0.5 else "black",
                )
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, path, tight=True)


def _save(fig, path: Path, tight: bool = False) -> Path:
    """Lay out (`tight`), write and close the figure. Characters the font cannot draw (a
    class called 猫 with DejaVu Sans) come out as boxes, said in one line per process
    instead of one matplotlib warning per glyph and figure."""
    import warnings

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if tight:
            fig.tight_layout()
        fig.savefig(path, dpi=100)
    fig.clf()
    _pyplot().close(fig)
    missing = {str(w.message) for w in caught if "missing from font" in str(w.message)}
    for w in caught:
        if "missing from font" not in str(w.message):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if missing and not _SAID_GLYPHS:
        _SAID_GLYPHS.append(True)
        logging.getLogger("cifar_exp").warning(
            "warning: the plot font has no glyph for some characters of the class names; they are drawn as boxes"
        )
    return path


_SAID_GLYPHS: list = []


def _axis_values(values: list) -> tuple[list, list[str] | None]:
    """x positions, and category labels when the values are names or few whole numbers
    (seeds, batch sizes): those get one evenly spaced tick each."""
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        categories = sorted(set(map(str, values)))
        return [categories.index(str(v)) for v in values], categories
    distinct = sorted(set(numbers))
    if all(n.is_integer() for n in distinct) and len(distinct) <= 12:
        labels = [f"{n:g}" for n in distinct]
        return [distinct.index(n) for n in numbers], labels
    return numbers, None


# how a job is drawn in the sweep plot, by what became of it
MARKS = {
    "best": dict(marker="*", s=220, color="tab:red", zorder=3),
    "finished": dict(marker="o", s=36, color="tab:blue"),
    "pruned": dict(marker="x", s=40, color="0.5"),
}


def _mark(row: dict) -> str:
    return "best" if row.get("best") else "pruned" if row.get("pruned") else "finished"


def objective_vs_params(rows: list[dict], keys: list[str], objective: str, path: Path) -> Path:
    """One panel per swept key: each job's objective against that key's value, the best job
    a red star, pruned ones (their objective when stopped) grey crosses."""
    plt = _pyplot()
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig, axes = plt.subplots(1, max(1, len(keys)), figsize=(4.5 * max(1, len(keys)), 3.8), squeeze=False)
    drawn = [r for r in rows if r.get(objective) is not None]
    for ax, key in zip(axes[0], keys):
        xs, categories = _axis_values([r["params"].get(key) for r in drawn])
        if categories is not None:
            ax.set_xticks(
                range(len(categories)),
                categories,
                rotation=30 if len(categories) > 4 else 0,
                ha="right" if len(categories) > 4 else "center",
            )
            ax.set_xlim(-0.5, max(len(categories), 1) - 0.5)  # no job finished: an empty axis
        elif xs and min(xs) > 0 and max(xs) / min(xs) >= 10:
            # plain numbers at 1, 2 and 5 of each decade (only 1 past three decades): 0.001 0.002 0.005 0.01 ...
            ax.set_xscale("log")
            subs = (1.0, 2.0, 5.0) if max(xs) / min(xs) < 1e3 else (1.0,)
            ax.xaxis.set_major_locator(LogLocator(subs=subs))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
        elif len(set(xs)) == 1:  # one value: a window around it (matplotlib warns on an empty one)
            ax.set_xlim(xs[0] - abs(xs[0]) / 2 - 1e-12, xs[0] + abs(xs[0]) / 2 + 1e-12)
        for mark, style in MARKS.items():
            points = [(x, r[objective]) for x, r in zip(xs, drawn) if _mark(r) == mark]
            if points:
                ax.scatter(*zip(*points), label=mark, **style)
        ax.tick_params(axis="x", labelsize=8)
        ax.set_xlabel(key)
        ax.set_ylabel(objective)
        ax.grid(alpha=0.3)
    if any(_mark(r) != "finished" for r in drawn):
        axes[0][0].legend(fontsize=8)
    return _save(fig, path, tight=True)


def pareto_front(rows: list[dict], names: Sequence[str], path: Path) -> Path:
    """A multi-objective sweep's jobs on its first two objectives, each axis in the
    direction the catalogue gives it: the Pareto front's jobs red stars joined in order,
    the rest blue dots."""
    from cifar_exp.metrics import MAX, MIN, goal

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    x, y = names[0], names[1]
    drawn = [r for r in rows if r.get(x) is not None and r.get(y) is not None and not r.get("pruned")]
    front = sorted((r for r in drawn if r.get("pareto")), key=lambda r: r[x])
    rest = [r for r in drawn if not r.get("pareto")]
    if rest:
        ax.scatter([r[x] for r in rest], [r[y] for r in rest], label="dominated", **MARKS["finished"])
    if front:
        ax.plot([r[x] for r in front], [r[y] for r in front], color="tab:red", alpha=0.4, zorder=2)
        ax.scatter([r[x] for r in front], [r[y] for r in front], label="Pareto front", **MARKS["best"])
        for r in front:
            ax.annotate(f"job {r['job']}", (r[x], r[y]), textcoords="offset points", xytext=(6, 4), fontsize=8)
    better = {MAX: "higher is better", MIN: "lower is better"}
    ax.set_xlabel(f"{x} ({better[goal(x)]})")
    ax.set_ylabel(f"{y} ({better[goal(y)]})")
    if len(names) > 2:
        ax.set_title(f"the first two of {len(names)} objectives; the front is over all of them", fontsize=9)
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=8)
    return _save(fig, path, tight=True)


# Optuna's own figures of a single-objective study, each told the metric's name for its axis
STUDY_PLOTS = {
    "param_importances": "plot_param_importances",
    "parallel_coordinate": "plot_parallel_coordinate",
    "intermediate_values": "plot_intermediate_values",
}


def _study_plots(study) -> dict[str, str]:
    """The plots this study can show: several objectives get their Pareto front (Optuna's
    history and importances take one), and per-epoch values only where trials reported them."""
    if len(study.directions) > 1:
        return {"pareto_front": "plot_pareto_front"}
    reported = any(t.intermediate_values for t in study.get_trials(deepcopy=False))
    return {k: v for k, v in STUDY_PLOTS.items() if reported or k != "intermediate_values"}


def history_points(study) -> dict[str, list[tuple[int, float]]]:
    """(trial number, value) of the finished trials, and of the pruned ones at the last
    value they reported."""
    from optuna.trial import TrialState

    points: dict[str, list] = {"finished": [], "pruned": []}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        if t.state == TrialState.COMPLETE and t.value is not None:
            points["finished"].append((t.number, t.value))
        elif t.intermediate_values:
            points["pruned"].append((t.number, t.intermediate_values[max(t.intermediate_values)]))
    return points


def optimization_history(study, metric: str, path: Path) -> Path:
    """Every trial's value by trial number, pruned ones included (at the last value they
    reported, grey crosses: Optuna's own history leaves them out), and the best so far."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    maximize = study.direction.name == "MAXIMIZE"
    points = history_points(study)
    for mark, xy in points.items():
        if xy:
            ax.scatter(*zip(*xy), label=f"{mark} ({len(xy)})", **MARKS[mark])
    if points["finished"]:
        best, line = None, []
        for number, value in sorted(points["finished"]):
            best = value if best is None else max(best, value) if maximize else min(best, value)
            line.append((number, best))
        ax.step(*zip(*line), where="post", color="tab:red", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"{metric} ({'higher' if maximize else 'lower'} is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path, tight=True)


def study_plots(study, out: Path) -> list[Path]:
    """Optuna's own figures (its matplotlib backend) of a study. A figure the study cannot
    have yet (importances need two finished trials and a searched param) is left out."""
    import inspect
    import logging
    import warnings

    from optuna.exceptions import ExperimentalWarning
    from optuna.visualization import matplotlib as optuna_plots

    plt = _pyplot()
    several = len(study.directions) > 1
    names = study.metric_names or ["objective"]
    saved = [] if several else [optimization_history(study, names[0], out / "optimization_history.png")]
    for name, fn in _study_plots(study).items():
        # Optuna sets its ggplot style for the whole process: it stays inside this block
        with plt.rc_context(), warnings.catch_warnings():
            # Optuna marks this backend experimental, and warns of what a small study cannot show
            # (equal importances, a flat axis): the figure shows it, the user's terminal need not
            warnings.simplefilter("ignore", ExperimentalWarning)
            warnings.simplefilter("ignore", UserWarning)
            try:
                plot = getattr(optuna_plots, fn)
                takes = inspect.signature(plot).parameters  # the axis names the figure takes
                named = {k: v for k, v in (("target_name", names[0]), ("target_names", names)) if k in takes}
                if not study.metric_names:
                    named.pop("target_names", None)  # Optuna's own "Objective 0", "Objective 1"
                ax = plot(study, **named)
                if not named:  # the per-epoch values: reported by each epoch's end
                    ax.set_ylabel(f"{names[0]} per epoch")
            except (ValueError, RuntimeError, ZeroDivisionError) as e:
                logging.getLogger("cifar_exp").info("no %s plot: %s", name, e)
                continue
            fig = (ax.flat[0] if hasattr(ax, "flat") else ax).get_figure()
            fig.set_size_inches(max(fig.get_figwidth(), 8), max(fig.get_figheight(), 5))
            fig.tight_layout()  # room for the parameter names Optuna's layout cuts off
            saved.append(_save(fig, out / f"{name}.png"))
    return saved

"""plots.py: what the figures draw."""

from __future__ import annotations

import pytest
import torch

from cifar_exp import plots


def test_learning_curves_draw_train_val_and_test_against_whole_epochs(tmp_path, monkeypatch):
    history = [
        {
            "epoch": e,
            "train/loss_epoch": 2.0 / e,
            "train/acc": 0.3 * e,
            "val/loss": 2.1 / e,
            "val/acc": 0.28 * e,
            "test/loss": 2.2 / e,
            "test/acc": 0.25 * e,
        }
        for e in (1, 2, 3)
    ]
    series = plots.curve_series(history)
    assert sorted(series) == ["accuracy", "loss"]
    assert sorted(series["loss"]) == ["test", "train", "val"]
    assert series["loss"]["train"] == ([1, 2, 3], [2.0, 1.0, 2.0 / 3])
    assert series["accuracy"]["test"][0] == [1, 2, 3]
    drawn = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path, tight=False: drawn.update(fig=fig) or path)
    plots.learning_curves(history, tmp_path / "c.png")
    panels = {ax.get_ylabel(): ax for ax in drawn["fig"].axes}
    assert sorted(panels) == ["accuracy", "loss"]
    for panel, ax in panels.items():
        lines = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()}
        assert lines == {split: (list(x), list(y)) for split, (x, y) in series[panel].items()}
        assert ax.get_xlabel() == "epoch" and all(t == int(t) for t in ax.get_xticks())
    without_val = [{k: v for k, v in h.items() if not k.startswith("val/")} for h in history]
    assert sorted(plots.curve_series(without_val)["loss"]) == ["test", "train"]


def test_sweep_axes_are_categorical_for_names_and_few_whole_numbers():
    assert plots._axis_values([2, 0, 1, 0]) == ([2, 0, 1, 0], ["0", "1", "2"])
    assert plots._axis_values(["adam", "sgd", "adam"]) == ([0, 1, 0], ["adam", "sgd"])
    assert plots._axis_values([0.001, 0.01, 0.1]) == ([0.001, 0.01, 0.1], None)


def test_objective_vs_params_plots_every_swept_key_with_the_best_and_pruned_jobs_marked(tmp_path, monkeypatch):
    rows = [
        {
            "params": {"optimizer.lr": str(lr), "seed": str(s)},
            "test/acc": 0.5 + lr + s / 100,
            "pruned": lr == 0.001 and s == 1,
            "best": lr == 0.1 and s == 1,
        }
        for lr in (0.001, 0.01, 0.1)
        for s in (0, 1)
    ]
    drawn = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path, tight=False: drawn.update(fig=fig) or path)
    plots.objective_vs_params(rows, ["optimizer.lr", "seed"], "test/acc", tmp_path / "o.png")
    lr_axis, seed_axis = drawn["fig"].axes
    assert (lr_axis.get_xlabel(), seed_axis.get_xlabel()) == ("optimizer.lr", "seed")
    assert lr_axis.get_xscale() == "log" and [t.get_text() for t in seed_axis.get_xticklabels()] == ["0", "1"]
    for ax in (lr_axis, seed_axis):
        points = {c.get_label(): c.get_offsets().tolist() for c in ax.collections}
        assert {k: len(v) for k, v in points.items()} == {"best": 1, "finished": 4, "pruned": 1}
        assert points["best"][0][1] == max(r["test/acc"] for r in rows)
    assert lr_axis.collections[0].get_offsets().tolist()[0][0] == 0.1  # the best job's lr
    assert [t.get_text() for t in lr_axis.get_legend().get_texts()] == ["best", "finished", "pruned"]


def test_predictions_titles_come_from_the_classes():
    drawn = {}
    original = plots.image_grid
    plots.image_grid = lambda images, titles, path, colors=None: drawn.update(titles=titles, colors=colors)
    try:
        plots.predictions(
            torch.zeros(2, 3, 8, 8, dtype=torch.uint8),
            torch.tensor([1, 0]),
            torch.tensor([1, 1]),
            ["cat", "dog"],
            "unused.png",
        )
    finally:
        plots.image_grid = original
    assert drawn == {"titles": ["dog\n(dog)", "cat\n(dog)"], "colors": ["green", "red"]}


def test_a_long_class_name_is_cut_where_figures_print_it_and_leaves_room_for_the_plot(tmp_path, monkeypatch):
    import warnings

    import matplotlib.figure

    long = "x" * 241  # a folder name can be as long as the file system allows
    ticks = []
    monkeypatch.setattr(matplotlib.figure.Figure, "clf", lambda fig: ticks.append(fig.axes[0].get_yticklabels()))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "Tight layout not applied", a line on the user's terminal
        plots.confusion_matrix(torch.eye(2, dtype=torch.long), ["cat", long], tmp_path / "c.png")
    [labels] = ticks
    assert [t.get_text() for t in labels] == ["cat", "x" * 23 + "…"]
    assert plots.short("T-shirt (top)") == "T-shirt (top)"


def test_class_names_the_font_cannot_draw_are_said_once_not_per_glyph(tmp_path, caplog):
    import logging
    import warnings

    from cifar_exp import plots

    plots._SAID_GLYPHS.clear()
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING, logger="cifar_exp"):
        warnings.simplefilter("always")
        for name in ("a.png", "b.png"):
            plots.confusion_matrix(torch.eye(3), ["猫", "犬", "鳥"], tmp_path / name)
    assert not [w for w in caught if "missing from font" in str(w.message)]
    assert len([r for r in caplog.records if "no glyph" in r.getMessage()]) == 1


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # set_metric_names
def test_the_search_history_shows_pruned_trials_and_names_the_metric(tmp_path):
    """Optuna's own history plot leaves pruned trials out and says "Objective Value"."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    study.set_metric_names(["val/acc"])
    for values, pruned in [([0.2, 0.5], False), ([0.1], True), ([0.3, 0.6], False)]:
        trial = study.ask()
        for epoch, value in enumerate(values):
            trial.report(value, epoch)
        study.tell(trial, state=optuna.trial.TrialState.PRUNED) if pruned else study.tell(trial, values[-1])
    assert plots.history_points(study) == {"finished": [(0, 0.5), (2, 0.6)], "pruned": [(1, 0.1)]}
    saved = {p.name for p in plots.study_plots(study, tmp_path)}
    assert {"optimization_history.png", "intermediate_values.png", "parallel_coordinate.png"} <= saved

"""hydra/sweeper=optuna (study.py and hydra_plugins/cifar_exp_optuna_sweeper): a persistent
study that a killed sweep resumes, trials pruned from inside their jobs, failed trials that
do not end the study, and one MLflow parent run per study."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import mlflow
import optuna
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from mlflow.tracking import MlflowClient
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from cifar_exp import study, study_storage
from cifar_exp.errors import UserError
from hydra_plugins.cifar_exp_optuna_sweeper.optuna_sweeper import distribution

from helpers import cli_process, lease_held_elsewhere, run_cli

pytestmark = pytest.mark.slow
optuna.logging.set_verbosity(optuna.logging.WARNING)

SEARCH = [
    "--multirun",
    "hydra/sweeper=optuna",
    "hydra.sweeper.direction=maximize",
    "dataset=synthetic",
    "dataset.train_size=700",
    "dataset.val_size=200",
    "dataset.test_size=200",
    "objective=val/acc",
    "trainer.progress=false",
    "mlflow.log_model=false",
    "mlflow.system_metrics_every_s=0",
]


def _db(workdir: Path) -> str:
    return f"sqlite:///{workdir / 'optuna.db'}"


def _only_study(workdir: Path) -> str:
    [name] = optuna.get_all_study_names(_db(workdir))
    return name


def trials(workdir: Path) -> list[optuna.trial.FrozenTrial]:
    storage = f"sqlite:///{workdir / 'optuna.db'}"
    [name] = optuna.get_all_study_names(storage)
    return optuna.load_study(study_name=name, storage=storage).get_trials()


def runs(workdir: Path) -> list:
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("cifar_exp")
    return client.search_runs([exp.experiment_id], max_results=1000)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("x=interval(0.1, 1.0)", FloatDistribution(0.1, 1.0)),
        ("x=tag(log, interval(0.0001, 0.1))", FloatDistribution(0.0001, 0.1, log=True)),
        ("x=int(interval(1, 8))", IntDistribution(1, 8)),
        ("x=tag(int, log, interval(1, 64))", IntDistribution(1, 64, log=True)),
        ("x=choice(64, 128)", CategoricalDistribution([64, 128])),
        ("x=a,b", CategoricalDistribution(["a", "b"])),
        # as hydra-optuna-sweeper reads them: a range includes its stop
        ("x=range(2, 10, 2)", IntDistribution(2, 10, step=2)),
        ("x=range(1,3)", IntDistribution(1, 3)),
        ("x=range(0.5, 5.5, step=1)", FloatDistribution(0.5, 5.5, step=1)),
        ("x=interval(1, 5)", FloatDistribution(1, 5)),
        ("x=tag(log, int(interval(1, 5)))", IntDistribution(1, 5, log=True)),
        ("x=choice(true, false)", CategoricalDistribution([True, False])),
        ("x=3", None),
    ],
)
def test_sweep_syntax_becomes_optuna_distributions(text, expected):
    [override] = OverridesParser.create().parse_overrides([text])
    assert distribution(override) == expected


def test_a_shuffled_range_is_a_choice_of_its_values_every_time():
    for _ in range(200):
        [override] = OverridesParser.create().parse_overrides(["x=shuffle(range(1,4))"])
        dist = distribution(override)
        assert isinstance(dist, CategoricalDistribution) and sorted(dist.choices) == [1, 2, 3]


def test_a_grid_takes_every_value_of_a_range_its_stop_included():
    from hydra_plugins.cifar_exp_optuna_sweeper.optuna_sweeper import search_space

    _, _, grid = search_space({"a": "range(1,3)", "b": "range(0.5, 1.5, step=0.5)", "c": "x,y"}, [], True)
    assert grid == {"a": [1, 2, 3], "b": [0.5, 1.0, 1.5], "c": ["x", "y"]}


def test_a_value_given_on_the_command_line_fixes_a_searched_key():
    from hydra_plugins.cifar_exp_optuna_sweeper.optuna_sweeper import search_space

    params = {"x": "interval(-5.0, 5.0)", "y": "interval(-5.0, 5.0)"}
    space, fixed, _ = search_space(params, ["y=0"], grid_search=False)
    assert list(space) == ["x"] and fixed == ["y=0"]
    space, fixed, _ = search_space({"y": "0"}, ["y=interval(0.0, 1.0)"], grid_search=False)
    assert list(space) == ["y"] and fixed == []  # and a search given there opens a fixed one


def _made(tmp_path, objective="val/acc", direction="maximize", space=None, sampler="tpe"):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    made = optuna.create_study(study_name="s", storage=storage, direction=direction, load_if_exists=True)
    space = space or {"optimizer.lr": FloatDistribution(0.01, 0.1)}
    study.check_same_search(made, objective, [direction], space, sampler)
    made.tell(made.ask(space), 0.5)
    return storage


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"objective": "val/loss", "directions": ["minimize"]}, "objective was val/acc, now val/loss; direction was"),
        ({"space": {"optimizer.lr": FloatDistribution(0.001, 0.1)}}, "the search space differs in optimizer.lr"),
        ({"space": {"seed": IntDistribution(0, 3)}}, "the search space differs in optimizer.lr, seed"),
        ({"sampler": "grid"}, "sampler was tpe, now grid"),
    ],
)
def test_a_study_reused_for_another_search_is_refused_in_one_line(tmp_path, change, needle):
    storage = _made(tmp_path)
    now = {"objective": "val/acc", "directions": ["maximize"], "space": {"optimizer.lr": FloatDistribution(0.01, 0.1)}}
    now = {**now, "sampler": "tpe", **change}
    with pytest.raises(UserError, match=re.escape(needle)) as err:
        study.check_existing_search(storage, "s", **now)
    assert "a study is one search" in str(err.value) and "\n" not in str(err.value)
    now.update(objective="val/acc", directions=["maximize"], space={"optimizer.lr": FloatDistribution(0.01, 0.1)})
    study.check_existing_search(storage, "s", **{**now, "sampler": "tpe"})  # the same search continues


def test_a_search_space_that_does_not_parse_is_one_line(workdir):
    result = run_cli(*SEARCH, '+hydra.sweeper.params={optimizer.lr:"interval(a,b)"}', cwd=workdir)
    assert result.returncode == 2 and "Traceback" not in result.output, result.output[-2000:]
    assert "interval(a,b)" in result.stderr.strip().splitlines()[-1]


def test_the_same_command_names_the_same_study_and_storage(tmp_path):
    sweeper = {"params": {"optimizer.lr": "interval(0.01, 0.1)"}, "storage": None, "study_name": None}
    a = study.study_name(sweeper, ["epochs=3", "optimizer.lr=0.5", "seed=1,2"])
    assert a == study.study_name(sweeper, ["epochs=3", "optimizer.lr=0.9", "seed=1,2"])  # searched keys don't count
    assert a != study.study_name(sweeper, ["epochs=4", "optimizer.lr=0.5", "seed=1,2"])
    # a list value is fixed, not searched: it names the study
    assert study.study_name(sweeper, ["model.widths=[8,16]"]) != study.study_name(sweeper, ["model.widths=[8,32]"])
    assert study_storage.storage_url(sweeper, tmp_path) == f"sqlite:///{tmp_path.resolve()}/optuna.db"
    assert study_storage.storage_url({"storage": "sqlite:////abs/x.db"}, tmp_path) == "sqlite:////abs/x.db"


def test_a_killed_study_resumes_to_exactly_n_trials_under_one_parent(workdir, cli_here):
    """The issue's acceptance test: 6 trials with pruner=median, SIGKILL after 2 finished,
    the same command again."""
    command = [
        *SEARCH,
        "hydra.sweeper.sampler.seed=0",
        "hydra/sweeper/pruner=median",
        "hydra.sweeper.n_trials=6",
        "hydra.sweeper.n_jobs=1",
        "optimizer.lr=tag(log, interval(0.001, 0.1))",
        "epochs=2",
    ]
    proc = cli_process("cifar_exp", *command, cwd=workdir, merged=True, start_new_session=True)
    for line in proc.stdout:
        if line.startswith("run dir") and "/2 |" in line:  # trials 0 and 1 are told, trial 2 is training
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    before = trials(workdir)
    assert sum(t.state.name == "COMPLETE" for t in before) == 2 and before[-1].state.name == "RUNNING"

    result = cli_here(*command)  # the same command again; the kill was the process boundary
    assert result.returncode == 0, result.stderr[-3000:]
    after = trials(workdir)
    finished = [t for t in after if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 6 and not [t for t in after if t.state.name == "RUNNING"]
    assert all(len(t.intermediate_values) >= 1 for t in finished)
    rerun = [t for t in after if t.user_attrs.get("rerun_of") == before[-1].number]
    assert len(rerun) == 1 and rerun[0].params == before[-1].params  # the killed trial's parameters again

    everything = runs(workdir)
    parents = [r for r in everything if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in everything if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == len(everything) - 1 == 7  # 6 finished trials and the killed one
    superseded = [c for c in children if "cifar_exp.superseded" in c.data.tags]
    assert len(superseded) == 1 and superseded[0].info.status == "KILLED"
    assert sorted(c.data.tags["optuna.trial"] for c in children) == sorted(str(t.number) for t in after)
    artifacts = {
        a.path for a in MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}").list_artifacts(parents[0].info.run_id)
    }
    assert {"trials.csv", "optimization_history.png", "param_importances.png"} <= artifacts
    assert parents[0].data.metrics["jobs_finished"] + parents[0].data.metrics["jobs_pruned"] == 6

    again = cli_here(*command)  # a finished study says so, and how to extend it
    assert again.returncode == 0 and "already has 6 finished trials" in again.stdout, again.output[-2000:]
    assert "larger hydra.sweeper.n_trials" in again.stdout and len(trials(workdir)) == len(after)


def test_hopeless_trials_are_pruned_from_inside_their_jobs(cli_here, workdir):
    """A learning rate that cannot learn in time is stopped after its first epoch; the run
    checkpoints, ends KILLED (it did not reach its planned end), its name says so and it is
    tagged PRUNED; its trial is PRUNED. The best trial's name says that it is."""
    # the grid's seed 1 runs lr=0.05 first: the first trial is never pruned (nothing to compare)
    result = cli_here(
        *SEARCH,
        "hydra/sweeper/sampler=grid",
        "hydra.sweeper.sampler.seed=1",
        "hydra/sweeper/pruner=median",
        "hydra.sweeper.pruner.n_startup_trials=1",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=1",
        "optimizer.lr=choice(0.05, 0.00001)",
        "optimizer.momentum=0.9",
        "epochs=4",
        "mlflow.log_model=true",
    )
    assert result.returncode == 0, result.output[-3000:]
    assert "Skipped telling" not in result.output  # a pruned trial is left as its job marked it
    by_lr = {t.params["optimizer.lr"]: t for t in trials(workdir)}
    good, bad = by_lr[0.05], by_lr[0.00001]
    assert good.number < bad.number and good.state.name == "COMPLETE"
    assert sorted(good.intermediate_values) == [1, 2, 3, 4]
    assert bad.state.name == "PRUNED" and sorted(bad.intermediate_values) == [1]
    [pruned] = [r for r in runs(workdir) if r.data.tags.get("optuna.state") == "PRUNED"]
    assert pruned.info.status == "KILLED" and pruned.data.tags["optuna.trial"] == str(bad.number)
    assert pruned.info.run_name == "[pruned e1] lr=1e-05"
    [best] = [r for r in runs(workdir) if r.data.tags.get("cifar_exp.best") == "true"]
    assert best.info.run_name == "[best] lr=0.05" and best.data.tags["optuna.trial"] == str(good.number)
    # the Models tab holds the trials that finished: a pruned one's checkpoint keeps its weights
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    models = mlflow.search_logged_models(experiment_ids=[best.info.experiment_id], output_format="list")
    assert [m.source_run_id for m in models] == [best.info.run_id]
    out = Path(pruned.data.tags["hydra.output_dir"])
    assert (out / "checkpoints" / "last.pt").is_file()
    # Optuna's own tools see what each trial was: the metric's name, its run and its fixed keys
    made = optuna.load_study(study_name=_only_study(workdir), storage=_db(workdir))
    assert made.metric_names == ["val/acc"]
    assert bad.user_attrs["mlflow_run_id"] == pruned.info.run_id and bad.user_attrs["run_dir"] == str(out)
    assert "optimizer.momentum=0.9" in bad.user_attrs["fixed_overrides"]


# random sampler, seed 8: exploding_cnn (raises in its 5th step) first, then simple_cnn
FAILING_FIRST = [
    *SEARCH,
    "hydra/sweeper/sampler=random",
    "hydra.sweeper.sampler.seed=8",
    "hydra.sweeper.n_trials=2",
    "hydra.sweeper.n_jobs=1",
    "model=choice(simple_cnn, exploding_cnn)",
    "epochs=1",
    "dataset.batch_size=64",
]


def test_a_failing_trial_is_marked_fail_and_the_study_goes_on(cli_here, workdir, test_models):
    result = cli_here(*FAILING_FIRST)
    assert result.returncode == 0, result.output[-3000:]
    states = [(t.params["model"], t.state.name) for t in trials(workdir)]
    assert states == [("exploding_cnn", "FAIL"), ("simple_cnn", "COMPLETE"), ("simple_cnn", "COMPLETE")]
    everything = runs(workdir)
    failed = [r for r in everything if r.info.status == "FAILED"]
    assert len(failed) == 1 and "exploding" in failed[0].info.run_name
    [parent] = [r for r in everything if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.status == "FINISHED" and parent.data.metrics["jobs_failed"] == 1


@pytest.mark.parametrize("rate, stops", [(0.0, True), (1.0, False)])
def test_max_failure_rate_stops_the_study_as_the_official_plugin_does(cli_here, workdir, test_models, rate, stops):
    """The same sweep as above: its first batch (one trial) fails. With a rate of 0 the study
    stops there in one line; with 1 it goes on, and (the official rule) the failed trial
    counts toward n_trials."""
    result = cli_here(*FAILING_FIRST, f"hydra.sweeper.max_failure_rate={rate}")
    states = [t.state.name for t in trials(workdir)]
    if stops:
        assert result.returncode == 2 and states == ["FAIL"], result.output[-2000:]
        assert "more than hydra.sweeper.max_failure_rate=0.0" in result.stderr.strip().splitlines()[-1]
    else:
        assert result.returncode == 0 and states == ["FAIL", "COMPLETE"], result.output[-2000:]


@pytest.mark.parametrize(
    "entry, expected",
    [
        ({"type": "categorical", "choices": [1, 2, 3]}, CategoricalDistribution([1, 2, 3])),
        ({"type": "categorical", "choices": ["a", "b c"]}, CategoricalDistribution(["a", "b c"])),
        ({"type": "int", "low": 0, "high": 10}, IntDistribution(0, 10)),
        ({"type": "int", "low": 0, "high": 10, "step": 2}, IntDistribution(0, 10, step=2)),
        ({"type": "int", "low": 1, "high": 100, "log": True}, IntDistribution(1, 100, log=True)),
        ({"type": "float", "low": 0, "high": 1}, FloatDistribution(0, 1)),
        ({"type": "float", "low": 0, "high": 10, "step": 2}, FloatDistribution(0, 10, step=2)),
        ({"type": "float", "low": 1, "high": 100, "log": True}, FloatDistribution(1, 100, log=True)),
    ],
)
def test_the_older_search_space_form_means_what_it_meant(entry, expected):
    from hydra_plugins.cifar_exp_optuna_sweeper.optuna_sweeper import all_params, search_space

    space = search_space(all_params({"search_space": {"key": entry}, "params": {}}), [], False)[0]
    assert space == {"key": expected}


def test_params_win_over_the_older_search_space_form():
    from hydra_plugins.cifar_exp_optuna_sweeper.optuna_sweeper import all_params

    merged = all_params({"search_space": {"x": {"type": "int", "low": 0, "high": 3}}, "params": {"x": "choice(7)"}})
    assert merged == {"x": "choice(7)"}


@pytest.mark.parametrize(
    "entry, needle",
    [
        ({"type": "normal", "low": 0, "high": 1}, "search_space.x.type"),
        ({"type": "int", "low": 5, "high": 1}, "low < high"),
        ({"type": "categorical", "choices": []}, "search_space.x.choices"),
    ],
)
def test_a_bad_older_search_space_entry_is_one_line(entry, needle):
    from hydra_plugins.cifar_exp_optuna_sweeper.optuna_sweeper import all_params

    with pytest.raises(UserError, match=re.escape(needle)):
        all_params({"search_space": {"x": entry}})


def test_a_custom_search_space_hook_suggests_more_parameters(cli_here, workdir):
    result = cli_here(
        *SEARCH,
        "hydra/sweeper/sampler=random",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=1",
        "hydra.sweeper.custom_search_space=testing_cli.suggest_momentum",
        "optimizer.lr=interval(0.01, 0.1)",
    )
    assert result.returncode == 0, result.output[-2000:]
    momenta = sorted(t.params["optimizer.momentum"] for t in trials(workdir))
    assert len(momenta) == 2 and all(0.5 <= m <= 0.9 for m in momenta)
    children = [r for r in runs(workdir) if "mlflow.parentRunId" in r.data.tags]
    logged = sorted(float(r.data.params["optimizer.momentum"]) for r in children)
    assert logged == pytest.approx(momenta)


def test_a_custom_search_space_that_is_not_a_function_is_one_line(cli, workdir):
    result = cli(*SEARCH, "hydra.sweeper.custom_search_space=no.such.function", "optimizer.lr=interval(0.01, 0.1)")
    assert result.returncode == 2 and "Traceback" not in result.output
    assert "custom_search_space='no.such.function' is not a function" in result.stderr.strip().splitlines()[-1]


def test_trials_in_joblib_worker_processes_report_to_the_study(cli, workdir):
    """Two trials at once in joblib's worker processes: each reaches its own trial through
    the SQLite storage and reports every epoch."""
    result = cli(
        *SEARCH,
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "hydra/sweeper/sampler=random",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=2",
        "optimizer.lr=interval(0.01, 0.1)",
        "epochs=2",
        timeout=600,
    )
    assert result.returncode == 0, result.output[-3000:]
    done = trials(workdir)
    assert [t.state.name for t in done] == ["COMPLETE", "COMPLETE"]
    assert all(sorted(t.intermediate_values) == [1, 2] for t in done)
    assert {r.data.tags.get("optuna.trial") for r in runs(workdir)} == {"0", "1", None}  # None: the parent


def test_a_stop_signal_stops_the_study_not_just_its_trial(workdir):
    """SIGTERM reaches the running trial's job: it checkpoints and ends KILLED; the sweep
    stops too (it does not go on to the next trial) and says how to continue."""
    command = [
        *SEARCH,
        "hydra/sweeper/sampler=random",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.n_jobs=1",
        "optimizer.lr=interval(0.01, 0.1)",
        "epochs=3",
        "dataset.train_size=3000",
    ]
    proc = cli_process("cifar_exp", *command, cwd=workdir)
    for line in proc.stdout:
        if line.startswith("epoch 1/3") and list(workdir.glob("multirun/*/*/1")):  # inside trial 1
            proc.send_signal(signal.SIGTERM)
            break
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "python -m cifar_exp --multirun" in err and "Traceback" not in err
    assert [t.state.name for t in trials(workdir)] == ["COMPLETE", "RUNNING"]  # rerun by the same command
    assert sorted(r.info.status for r in runs(workdir) if "mlflow.parentRunId" in r.data.tags) == ["FINISHED", "KILLED"]


def test_a_storage_that_cannot_be_reached_costs_the_report_not_the_training(tmp_path, monkeypatch):
    from sqlalchemy.exc import OperationalError

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.create_study(study_name="s", storage=url).ask()
    link = study.TrialLink(url, "s", 0, {"name": "median"})
    assert link.report(1, 0.5) is False

    def locked(*args):
        raise OperationalError("UPDATE", {}, Exception("database is locked"))

    monkeypatch.setattr(link._storage, "set_trial_intermediate_value", locked)
    assert link.report(2, 0.6) is False  # no exception: the run goes on

    def commit_failed(*args):  # what Optuna raises when its own commit fails
        raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.")

    monkeypatch.setattr(link._storage, "set_trial_intermediate_value", commit_failed)
    assert link.report(3, 0.7) is False


def _start_sweep(workdir: Path, command: list[str], module: str = "cifar_exp") -> subprocess.Popen:
    """A sweep in the background, read up to its first trial's training."""
    proc = cli_process(module, *command, cwd=workdir, merged=True, start_new_session=True)
    for line in proc.stdout:
        if line.startswith("run dir"):
            return proc
    pytest.fail(f"the sweep ended before its first trial: {proc.wait()}")


@pytest.mark.parametrize("alias", ["dot", "linked folder", "query"])
def test_the_lease_is_one_per_sqlite_file_however_it_is_spelled(tmp_path, alias):
    """A second sweep reaching the same file by another spelling meets the first's lease."""
    (tmp_path / "studies").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "studies")
    first = f"sqlite:///{tmp_path / 'studies' / 'optuna.db'}"
    second = {
        "dot": f"sqlite:///{tmp_path / 'studies' / '.' / 'optuna.db'}",
        "linked folder": f"sqlite:///{tmp_path / 'link' / 'optuna.db'}",
        "query": f"sqlite:///{tmp_path / 'studies' / 'optuna.db'}?timeout=20",
    }[alias]
    with lease_held_elsewhere(first, "lr_search"):
        with pytest.raises(UserError, match=r"is being run by another sweep \(pid \d+ .*: the first sweep\)"):
            study_storage.take_lease(second, "lr_search", "the second sweep")
        study_storage.take_lease(second, "another_study", "a sweep of another study")  # other studies are free


def test_two_sweeps_of_one_study_one_is_refused_the_other_completes(cli_here, workdir, test_models):
    """The second identical command meets the first's lease: one line naming it, before it
    records anything, and the first runs every trial untouched."""
    # two trials of six one-second steps: the first sweep is still running when the second
    # (this process: no imports to wait for), started once the first trains, reaches the lease
    command = [
        *SEARCH,
        "hydra/sweeper/sampler=random",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=1",
        "optimizer.lr=interval(0.01, 0.1)",
        "model=sleepy_cnn",
        "epochs=1",
    ]
    first = _start_sweep(workdir, command, module="testing_cli")
    second = cli_here(*command)
    rest, _ = first.communicate(timeout=300)
    assert second.returncode == 2, second.stderr
    [line] = second.stderr.strip().splitlines()
    assert "is being run by another sweep" in line and f"pid {first.pid} " in line and "one sweep per study" in line
    assert first.returncode == 0, rest[-3000:]
    assert [t.state.name for t in trials(workdir)] == ["COMPLETE"] * 2
    everything = runs(workdir)
    [parent] = [r for r in everything if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in everything if "mlflow.parentRunId" in r.data.tags]
    assert parent.info.status == "FINISHED" and [r.info.status for r in children] == ["FINISHED"] * 2
    assert not [r for r in children if "cifar_exp.superseded" in r.data.tags]
    history = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}").get_metric_history(parent.info.run_id, "jobs")
    assert len(history) == 1  # one summary, not one per sweep


def test_a_locked_study_storage_is_waited_for_with_a_line(cli_here, workdir, monkeypatch):
    """Another connection holds the study's SQLite file locked for longer than one attempt's
    wait while a trial trains: the sweep says so, waits, and completes. (Attempts of 2 s
    here: the mechanism is the point, not SQLITE_BUSY_S's length.)"""
    import sqlite3
    import threading

    monkeypatch.setattr(study_storage, "SQLITE_BUSY_S", 2)
    held = threading.Event()

    def hold_once_a_trial_trains() -> None:
        while not list(workdir.glob("multirun/*/*/0/.hydra")):
            time.sleep(0.05)
        holder = sqlite3.connect(workdir / "optuna.db", timeout=30)
        holder.execute("BEGIN EXCLUSIVE")
        held.set()
        time.sleep(study_storage.SQLITE_BUSY_S + 3)
        holder.rollback()
        holder.close()

    holding = threading.Thread(target=hold_once_a_trial_trains, daemon=True)
    holding.start()
    result = cli_here(
        *SEARCH,
        "hydra/sweeper/sampler=random",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=1",
        "optimizer.lr=interval(0.01, 0.1)",
    )
    holding.join(timeout=60)
    assert held.is_set() and result.returncode == 0, result.output[-3000:]
    assert "is locked by another process; waiting for it" in result.output and "Traceback" not in result.output
    assert [t.state.name for t in trials(workdir)] == ["COMPLETE", "COMPLETE"]


def _damaged_past_its_header(db: Path) -> None:
    """A real study file whose pages after the first are overwritten (a disk fault, a copy
    cut short): its header and schema still read."""
    made = optuna.create_study(study_name="s", storage=f"sqlite:///{db}")
    for _ in range(20):
        made.tell(made.ask({"x": FloatDistribution(0, 1)}), 0.5)
    data = bytearray(db.read_bytes())
    data[4096 * 2 :] = b"\xff" * (len(data) - 4096 * 2)
    db.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["not a database", "damaged past its header"])
def test_a_corrupt_study_storage_is_one_line_before_anything_runs(cli, workdir, damage):
    if damage == "not a database":
        (workdir / "optuna.db").write_bytes(b"not a database " * 100)
    else:
        _damaged_past_its_header(workdir / "optuna.db")
    result = cli(*SEARCH, "hydra.sweeper.n_trials=2", "optimizer.lr=interval(0.01, 0.1)")
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert str(workdir / "optuna.db") in line and "damaged or not a database" in line and "move it away" in line
    exp = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}").get_experiment_by_name("cifar_exp")
    assert exp is None or runs(workdir) == []
    assert not list(workdir.glob("multirun/*/*/0"))


def test_a_crashed_sweep_s_parent_is_failed_and_says_why(cli_here, workdir, test_models):
    """The study gives up after three failed trials: its parent run ends FAILED with the
    reason, not FINISHED."""
    result = cli_here(
        *SEARCH,
        "model=exploding_cnn",
        "dataset.batch_size=64",
        "hydra.sweeper.n_trials=1",
        "hydra.sweeper.n_jobs=1",
        "optimizer.lr=interval(0.01, 0.1)",
    )
    assert result.returncode == 2, result.output[-3000:]
    [parent] = [r for r in runs(workdir) if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.status == "FAILED"
    assert "3 trials failed" in parent.data.tags["cifar_exp.sweep_end"]


def test_a_storage_damaged_mid_sweep_is_one_line(tmp_path):
    """The file is damaged while the sweep holds it: its next call is refused in one line."""
    db = tmp_path / "optuna.db"
    _damaged_past_its_header(db)
    with pytest.raises(UserError, match="is damaged .*move it away"):
        optuna.load_study(study_name="s", storage=study_storage.connect(f"sqlite:///{db}")).get_trials()


def test_a_storage_whose_driver_is_missing_is_one_line():
    with pytest.raises(UserError, match="needs its database driver"):
        study_storage.check_storage("postgresql+pg8000://user@127.0.0.1:5432/db")


def test_a_sampler_whose_package_is_missing_is_refused_before_any_job(monkeypatch):
    import importlib.util

    find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "cmaes" else find(name, *a))
    with pytest.raises(UserError, match="sampler=cmaes needs the cmaes package"):
        study.check_sampler_packages("cmaes")
    study.check_sampler_packages("tpe")


def test_the_cmaes_sampler_runs_a_sweep(cli_here, workdir):
    result = cli_here(
        *SEARCH, "hydra/sweeper/sampler=cmaes", "hydra.sweeper.n_trials=2", "optimizer.lr=interval(0.01, 0.1)"
    )
    assert result.returncode == 0, result.output[-2000:]
    assert [t.state.name for t in trials(workdir)] == ["COMPLETE"] * 2

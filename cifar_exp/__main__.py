"""`python -m cifar_exp [overrides]`: a thin Hydra entry point around `cifar_exp.run.run`.

Nothing heavy is imported at module level, so --help, --cfg and config errors stay fast.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import NoReturn, Union

import hydra
from omegaconf import DictConfig

from cifar_exp.distributed_env import process_rank
from cifar_exp.errors import EXIT_USAGE, Interrupted, UserError, exit_with, one_line, reason, stopping
from cifar_exp.metrics import objectives
from cifar_exp.registry import register_configs
from cifar_exp.run_dir import next_resume_files, resumed_run_dir
from cifar_exp.signals import ignore_stop_signals
from cifar_exp.terminal import show

register_configs()


@hydra.main(version_base="1.3", config_path="pkg://cifar_exp.conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> Union[float, list[float]]:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from cifar_exp.run import run

    global _job_started
    _job_started = True
    try:
        metrics = run(cfg)
    except (UserError, Interrupted) as e:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # this job fails; the sweep decides what happens to the others
        # a single run exits here, inside the job, so Hydra adds no lines of its own
        _exit_for(e)
    # what a sweeper optimizes: the objective's value, or one value per objective
    values = [metrics.get(name, float("nan")) for name in objectives(cfg.objective)]
    return values[0] if len(values) == 1 else values


def _exit_for(e: Exception) -> NoReturn:
    if isinstance(e, Interrupted) and e.elsewhere:  # this process was not stopped: one of its jobs was
        stopping.append(e)
        show(f"cifar-exp: a job of this sweep was {e} where it ran; resume with:\n  {e.resume_hint}", file=sys.stderr)
        sys.exit(1)
    if isinstance(e, Interrupted):
        stopping.append(e)
        ignore_stop_signals()
        show(f"cifar-exp: {e}; resume with:\n  {e.resume_hint}", file=sys.stderr)
        sys.exit(128 + e.signum)
    exit_with(str(e))


def _config_error(e: BaseException) -> NoReturn:
    stopping.append(e)
    show(f"cifar-exp: config error: {one_line(e)}", file=sys.stderr)
    sys.exit(EXIT_USAGE)


def _raised_composing(e: BaseException) -> bool:
    """Whether `e` came out of Hydra or OmegaConf composing the command's config (OmegaConf
    raises plain AttributeErrors for some overrides, e.g. merging into a null mapping):
    the innermost frame is theirs, and no job of ours had started."""
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = Path(tb.tb_frame.f_code.co_filename).parts if tb is not None else ()
    return not _job_started and ("omegaconf" in where or "hydra" in where)


_job_started = False


def _in_the_resumed_run_dir(args: list[str]) -> list[str]:
    """A resume of a run dir works in that dir: its log goes on in the run's own
    cifar_exp.log, its Hydra files go beside the first command's (.hydra/resume_<n>), and
    no stray outputs/<time>/ is left holding only a log. A dir set by the user stays."""
    if any(a in ("-m", "--multirun") or a.startswith(("hydra.run.dir=", "hydra.output_subdir=")) for a in args):
        return []
    values = [a.split("=", 1)[1] for a in args if a.startswith("resume=")]
    run_dir = resumed_run_dir(values[-1]) if values else None
    if run_dir is None:
        return []
    return [f"hydra.run.dir={_quoted(run_dir)}", f"hydra.output_subdir={next_resume_files(run_dir)}"]


def _quoted(path: Path) -> str:
    """A path as a Hydra override value, whatever characters it holds."""
    escaped = str(path).replace("'", "\\'")
    return f"'{escaped}'"


def main() -> None:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    # Hydra's own handler prints several lines or a trimmed traceback; let errors reach us
    # so that user mistakes become one line and exit code 2.
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    if process_rank(os.environ) > 0:
        # ranks > 0 (torchrun's, a SLURM step's) share rank 0's output dir: Hydra must not make one of its own
        sys.argv += ["hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=disabled"]
    else:
        sys.argv += _in_the_resumed_run_dir(sys.argv[1:])
    try:
        _hydra_main()
    except (UserError, Interrupted) as e:
        _exit_for(e)
    except (HydraException, OmegaConfBaseException) as e:
        _config_error(e)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        if not _raised_composing(e):
            raise  # a fault of the run itself keeps its traceback
        _config_error(e)
    except KeyboardInterrupt as e:  # a second stop signal: out at once, from the last checkpoint
        stopping.append(e)
        ignore_stop_signals()
        print(
            "cifar-exp: stopped at once by a second stop signal; resume from the last checkpoint with resume=<run dir>",
            file=sys.stderr,
        )
        sys.exit(128 + signal.SIGINT)
    except OSError as e:  # Hydra making a run dir or log file in a place it cannot write
        exit_with(f"cannot write {e.filename or 'the output dir'}: {e.strerror or e}")
    except Exception as e:
        _exit_if_the_scheduler_said(e)
        raise


def _exit_if_the_scheduler_said(e: BaseException) -> None:
    """What the scheduler said of the launcher's jobs, in one line: that it refused them
    (sbatch refusing a node count or a partition the cluster cannot satisfy; submitit raises
    that with the failed submission command as its cause, exit 2), or that a job's task
    ended without a result (killed outside Python, exit 1). Returns for anything else."""
    if "submitit" not in sys.modules:
        return
    from submitit.core.utils import FailedJobError, UncompletedJobError

    if isinstance(e, FailedJobError) and isinstance(e.__cause__, subprocess.CalledProcessError):
        asked = " ".join(a for a in sys.argv[1:] if a.startswith(("hydra.launcher.", "hydra/launcher=")))
        said = (e.__cause__.stderr or "").strip().splitlines()
        exit_with(f"the cluster refused the sweep's jobs ({said[-1] if said else e.__cause__}) for: {asked}")
    if type(e) is UncompletedJobError:  # not its subclass FailedJobError: a job that raised says so itself
        stopping.append(e)
        show(f"cifar-exp: error: {_lost_job(str(e))}", file=sys.stderr)
        sys.exit(1)


def _lost_job(said: str) -> str:
    """submitit's account of a job's task that left no result file, in one line."""
    found = re.search(r"Job (\S+) \(task: (\d+)\) with path (\S+)\s+has not produced any output \(state: (\w+)\)", said)
    if found is None:
        return f"a job of this sweep ended without a result: {reason(RuntimeError(said))}"
    job, task, result, state = found.groups()
    log = result.removesuffix("_result.pkl") + "_log.err"  # submitit's names for a task's files
    return (
        f"SLURM job {job}'s task {task} ended without a result (state {state}): it was killed outside Python "
        f"(kill -9, out of memory, its node lost); its log: {log}"
    )


if __name__ == "__main__":
    main()

"""Start-up: wall time of `--help`, of a config error, and of launch -> first training step
(warm data cache), against a bare `python -c "import torch"` on the same machine.

The first step is detected as the appearance of the first step checkpoint
(checkpoint.every_n_steps=1), a few milliseconds after the step itself.

    python benchmarks/startup.py [--reps 5]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REAL, cifar10, fmt, header, stats

CLI = [sys.executable, "-m", "cifar_exp"]


def wall(cmd: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def to_first_step(args: list[str], cwd: Path) -> float:
    run_dir = cwd / f"first-step-{time.monotonic_ns()}"
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [*CLI, *args, f"hydra.run.dir={run_dir}"], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    while not (run_dir / "checkpoints/last.pt").exists():
        if proc.poll() is not None:
            raise RuntimeError("the run ended before its first step checkpoint")
        time.sleep(0.005)
    elapsed = time.perf_counter() - t0
    proc.kill()
    proc.wait()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    data, note = cifar10(cache_dir=str(Path.cwd() / "data/cache"))  # warms the decoded-tensor cache
    header("start-up times vs bare `import torch`", note)
    cwd = Path(tempfile.mkdtemp())
    os.symlink(Path.cwd() / "data", cwd / "data")
    dataset = (
        ["dataset=image_folder", f"dataset.root={REAL}"]
        if REAL.is_dir()
        else ["dataset=synthetic", "dataset.train_size=50000", "dataset.test_size=10000"]
    )
    step_args = [*dataset, "checkpoint.every_n_steps=1", "trainer.progress=false"]
    cases = {
        "python -c 'import torch'": lambda: wall([sys.executable, "-c", "import torch"], cwd),
        "cifar_exp --help": lambda: wall([*CLI, "--help"], cwd),
        "cifar_exp epochs=abc (config error)": lambda: wall([*CLI, "epochs=abc"], cwd),
        "cifar_exp optimizer.lr=-1 (range error)": lambda: wall([*CLI, "optimizer.lr=-1"], cwd),
        "launch -> first step, mlflow off": lambda: to_first_step([*step_args, "mlflow.enabled=false"], cwd),
        "launch -> first step, mlflow on": lambda: to_first_step(step_args, cwd),
    }
    to_first_step([*step_args, "mlflow.enabled=false"], cwd)  # warm the OS file cache
    to_first_step(step_args, cwd)  # creates the store once: first-time schema creation is not start-up
    samples = {name: [] for name in cases}
    for _ in range(args.reps):
        for name, fn in cases.items():
            samples[name].append(fn())
    torch_s = stats(samples["python -c 'import torch'"])["median"]
    print("| command | wall time (median, min-max) | / import torch |")
    print("| --- | --- | --- |")
    for name, s in samples.items():
        st = stats(s)
        print(f"| {name} | {fmt(st)} | {st['median'] / torch_s:.2f} |")
    ratio = {n: stats(s)["median"] / torch_s for n, s in samples.items()}
    print(
        f"summary: --help {ratio['cifar_exp --help']:.2f}x, config error "
        f"{ratio['cifar_exp epochs=abc (config error)']:.2f}x, first step "
        f"{ratio['launch -> first step, mlflow on']:.2f}x the time of `import torch`"
    )


if __name__ == "__main__":
    main()

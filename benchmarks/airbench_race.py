"""Time to airbench94's accuracy on one GPU: the reference code (`airbench_reference.py`)
against `experiment=airbench94` with MLflow tracking and checkpoints on, alternated seed
by seed on the same data.

    python benchmarks/airbench_race.py --seeds 0 1 2 [-- overrides for our runs]

The target is the reference's mean accuracy. The reference's time is airbench's own
(training, whitening and the final TTA evaluation, after its warm-up run). Ours is the
training time (the epoch lines' seconds) up to the first epoch whose test accuracy, with
the same TTA, reaches the target: for the first run, which pays torch.compile's warm-up,
and for the later ones, whose compiles come from the caches the first one filled.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REAL
from time_to_accuracy import EPOCH

HERE = Path(__file__).resolve().parent
RESULT = re.compile(r"^result: .* test_acc=([\d.]+) train_s=([\d.]+)")


def reference(seed: int) -> tuple[float, float]:
    out = subprocess.run(
        [sys.executable, str(HERE / "airbench_reference.py"), "--data", str(REAL), "--seeds", str(seed)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    acc, seconds = next(map(float, m.groups()) for m in map(RESULT.match, out.splitlines()) if m)
    print(f"  reference seed {seed}: {100 * acc:.2f}% in {seconds:.2f} s", flush=True)
    return acc, seconds


def ours(seed: int, overrides: list[str], cwd: Path) -> tuple[list[tuple[float, float]], float]:
    """[(cumulative training seconds, test accuracy)] per epoch, and the wall time."""
    # the decoded-image cache is the one the reference script fills
    cmd = [
        sys.executable,
        "-m",
        "cifar_exp",
        "experiment=airbench94",
        "dataset=image_folder",
        f"dataset.root={REAL}",
        f"dataset.cache_dir={REAL.parent / 'cache'}",
        f"seed={seed}",
        "trainer.device=cuda",
        "trainer.progress=false",
        *overrides,
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"experiment=airbench94 seed {seed} failed:\n{proc.stderr[-2000:]}")
    epochs, total = [], 0.0
    for m in filter(None, (EPOCH.match(line.strip()) for line in proc.stdout.splitlines())):
        total += float(m.group(4))
        epochs.append((total, float(m.group(3)) / 100))
    print(
        f"  airbench94 seed {seed}: {100 * epochs[-1][1]:.2f}% after {total:.2f} s of training ({wall:.0f} s wall)",
        flush=True,
    )
    return epochs, wall


def time_to(target: float, epochs: list[tuple[float, float]]) -> float:
    return next((t for t, acc in epochs if acc >= target - 5e-5), float("nan"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cwd = Path(tempfile.mkdtemp(prefix="airbench-race-"))
    refs, runs = [], []
    for seed in args.seeds:  # alternated, so drift in the machine's speed hits both alike
        refs.append(reference(seed))
        runs.append(ours(seed, args.overrides, cwd))
    target = statistics.mean(a for a, _ in refs)
    ref_time = statistics.mean(t for _, t in refs)
    cold = time_to(target, runs[0][0])
    warm = [time_to(target, epochs) for epochs, _ in runs[1:]]
    warm_mean = statistics.mean(warm) if warm else float("nan")
    print("| | mean test acc | time to the reference's mean | runs |")
    print("| --- | --- | --- | --- |")
    print(f"| airbench94 reference | {100 * target:.2f}% | {ref_time:.2f} s | {len(refs)} |")
    print(
        f"| experiment=airbench94, first run (compile warm-up) | "
        f"{100 * statistics.mean(e[-1][1] for e, _ in runs):.2f}% | {cold:.2f} s | 1 |"
    )
    print(
        f"| experiment=airbench94, later runs | | {warm_mean:.2f} s ({', '.join(f'{w:.2f}' for w in warm)}) "
        f"| {len(warm)} |"
    )
    print(
        f"summary: target {100 * target:.2f}%; reference {ref_time:.2f} s; ours {warm_mean:.2f} s warm, "
        f"{cold:.2f} s cold; ratio ours/reference {warm_mean / ref_time:.2f} warm, {cold / ref_time:.2f} cold"
    )


if __name__ == "__main__":
    main()

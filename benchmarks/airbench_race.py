"""A fair race: airbench's own code (`airbench_reference.py`) against `experiment=airbench94`
(or another preset), alternated seed by seed on the same data, both timed the same way.

    python benchmarks/airbench_race.py --seeds 0 1 --sides ours:bf16 reference:float32 [-- overrides]

Each side is a fresh process, timed on the wall clock from its start: everything a user
waits for (imports, data, whitening, compiling, every evaluation, MLflow, checkpoints).

- **wall time**: from process start to the printed final accuracy (ours: the test report's
  "Accuracy of the network" line; the reference: its `result:` line);
- **time to target**: from process start to the first printed accuracy at or above the
  target (the reference's mean final accuracy unless `--target` is given), so every
  evaluation that ran before it is inside. Ours prints one per epoch (plain, TTA at the
  last), airbench one per epoch (plain) and its final TTA one.

Each side names its precision: `ours:bf16` (on a CPU) and `ours:amp` (on a GPU) are
`trainer.amp=true`, `ours:float32` is `trainer.amp=false`; `reference:fp16` is airbench's
code as shipped (a GPU), `reference:float32` the same on a CPU with float32 weights,
`reference:bf16` that under CPU bf16 autocast.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import REAL, preset_command

HERE = Path(__file__).resolve().parent
OUR_EPOCH = re.compile(r"^epoch \d+/\d+: .*\| test loss [\d.]+ acc ([\d.]+)%")
OUR_FINAL = re.compile(r"Accuracy of the network on the \d+ test images: ([\d.]+) %")
# airbench's table rows: |  run  |  epoch  |  train_loss  |  train_acc  |  val_acc  |  tta_val_acc  | ...
REF_ROW = re.compile(r"^\|\s*\S*\s*\|\s*(\d+|eval)\s*\|" + r"\s*([\d.]*)\s*\|" * 4)
REF_FINAL = re.compile(r"^result: .* test_acc=([\d.]+)")


@dataclass
class Timeline:
    """What one process printed: (seconds since its start, accuracy) for every accuracy
    line, and the final one."""

    side: str
    seed: int
    points: list[tuple[float, float]] = field(default_factory=list)
    final: tuple[float, float] = (float("nan"), float("nan"))

    def time_to(self, target: float) -> float:
        return next((t for t, acc in self.points if acc >= target - 5e-5), float("nan"))


def watch(cmd: list[str], cwd: Path, timeline: Timeline, accuracy, final) -> Timeline:
    """Run `cmd`, stamping each accuracy line with the seconds since the process started."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # a line's stamp is when it was printed
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail: list[str] = []
    for line in proc.stdout:
        now, line = time.perf_counter() - t0, line.strip()
        tail = [*tail[-20:], line]
        if (acc := accuracy(line)) is not None:
            timeline.points.append((now, acc))
        if (acc := final(line)) is not None:
            timeline.final = (now, acc)
            timeline.points.append((now, acc))
            print(f"  {timeline.side} seed {timeline.seed}: {100 * acc:.2f}% at {now:.0f} s", flush=True)
    if proc.wait() != 0:
        raise SystemExit(f"{timeline.side} seed {timeline.seed} failed:\n" + "\n".join(tail))
    return timeline


def matched(pattern: re.Pattern, scale: float = 1.0):
    def parse(line: str):
        m = pattern.search(line)
        return float(m.group(1)) / scale if m else None

    return parse


def reference_accuracy(line: str):
    """A per-epoch row's val_acc (airbench's final `eval` row repeats the result line)."""
    m = REF_ROW.match(line)
    if m and m.group(1) != "eval" and m.group(4):
        return float(m.group(4))
    return None


def reference(seed: int, precision: str, cwd: Path) -> Timeline:
    cmd = [sys.executable, str(HERE / "airbench_reference.py"), "--data", str(REAL), "--seeds", str(seed)]
    cmd += ["--precision", precision]
    return watch(cmd, cwd, Timeline(f"reference:{precision}", seed), reference_accuracy, matched(REF_FINAL))


def ours(seed: int, precision: str, preset: str, overrides: list[str], cwd: Path) -> Timeline:
    amp = "false" if precision == "float32" else "true"
    # the decoded-image cache is the one the reference script fills
    cmd = preset_command(preset, f"seed={seed}", f"trainer.amp={amp}", *overrides, cache_dir=REAL.parent / "cache")
    side = f"ours:{precision}" if preset == "airbench94" else f"{preset}:{precision}"
    return watch(cmd, cwd, Timeline(side, seed), matched(OUR_EPOCH, 100), matched(OUR_FINAL, 100))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--sides", nargs="+", default=["ours:bf16", "reference:float32"])
    parser.add_argument("--preset", default="airbench94", help="our side's experiment preset")
    parser.add_argument("--target", type=float, help="default: the reference sides' mean final accuracy")
    parser.add_argument("overrides", nargs="*", help="more overrides for our side, e.g. trainer.device=cuda")
    args = parser.parse_args()
    cwd = Path(tempfile.mkdtemp(prefix="airbench-race-"))
    runs: dict[str, list[Timeline]] = {side: [] for side in args.sides}
    for seed in args.seeds:  # alternated, so drift in the machine's speed hits every side alike
        for side in args.sides:
            who, precision = side.split(":")
            run = (
                reference(seed, precision, cwd)
                if who == "reference"
                else ours(seed, precision, args.preset, args.overrides, cwd)
            )
            runs[side].append(run)
    finals = {side: [r.final[1] for r in rs] for side, rs in runs.items()}
    refs = [a for side, accs in finals.items() if side.startswith("reference") for a in accs]
    target = args.target if args.target is not None else statistics.mean(refs or next(iter(finals.values())))
    baseline = next((s for s in args.sides if s.startswith("reference")), args.sides[0])
    base_wall = statistics.mean(r.final[0] for r in runs[baseline])
    print(f"| side | seeds | final test acc | wall time to it | time to {100 * target:.2f}% | wall / {baseline} |")
    print("| --- | --- | --- | --- | --- | --- |")
    for side, rs in runs.items():
        wall = statistics.mean(r.final[0] for r in rs)
        print(
            f"| {rs[0].side} | {', '.join(str(r.seed) for r in rs)} | "
            f"{', '.join(f'{100 * r.final[1]:.2f}%' for r in rs)} (mean {100 * statistics.mean(finals[side]):.2f}%) | "
            f"{wall:.0f} s | {', '.join(f'{r.time_to(target):.0f} s' for r in rs)} | {wall / base_wall:.2f} |"
        )
    print(
        "summary: target "
        f"{100 * target:.2f}%; "
        + "; ".join(
            f"{side} {100 * statistics.mean(finals[side]):.2f}% in {statistics.mean(r.final[0] for r in rs):.0f} s"
            for side, rs in runs.items()
        )
    )


if __name__ == "__main__":
    main()

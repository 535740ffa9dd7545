"""Time to accuracy: run experiment presets end to end through the CLI and report, per
epoch, the cumulative training time and the test accuracy, and when a target is reached.

    python benchmarks/time_to_accuracy.py --presets speed_net_cpu [--target 0.85] [-- overrides...]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REAL, cifar10, preset_command

EPOCH = re.compile(r"^epoch (\d+)/(\d+): .*\| test loss [\d.]+ acc ([\d.]+)%.* \| ([\d.]+)s$")


def run_preset(preset: str, overrides: list[str], cwd: Path) -> tuple[list[tuple[int, float, float]], float]:
    """[(epoch, cumulative training seconds, test accuracy)], and the whole wall time."""
    cmd = preset_command(preset, "mlflow.log_model=false", *overrides, cache_dir=Path.cwd() / "data/cache")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    epochs, total = [], 0.0
    for line in proc.stdout:
        m = EPOCH.match(line.strip())
        if m:
            total += float(m.group(4))
            epochs.append((int(m.group(1)), total, float(m.group(3)) / 100))
            print(
                f"  {preset}: epoch {m.group(1)}/{m.group(2)} test acc {m.group(3)}% at {total:.0f}s",
                file=sys.stderr,
                flush=True,
            )
    if proc.wait() != 0:
        raise SystemExit(f"{preset} failed (exit {proc.returncode})")
    return epochs, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--presets", default="speed_net_cpu")
    parser.add_argument("--target", type=float, default=0.85)
    parser.add_argument("overrides", nargs="*", help="extra overrides, e.g. trainer.device=cuda")
    args = parser.parse_args()
    _, note = cifar10()  # extracts the shared copy and warms the cache
    if not REAL.is_dir():
        raise SystemExit("time to accuracy needs real CIFAR-10 images (set CIFAR10_JPG)")
    cwd = Path(tempfile.mkdtemp())
    print(f"# time to accuracy; data: {note}; overrides: {' '.join(args.overrides) or '(none)'}")
    print(f"| preset | epochs | final test acc | training time | wall time | time to {100 * args.target:.0f}% |")
    print("| --- | --- | --- | --- | --- | --- |")
    summary = []
    for preset in args.presets.split(","):
        epochs, wall = run_preset(preset, args.overrides, cwd)
        hit = next(((e, t) for e, t, a in epochs if a >= args.target), None)
        reached = f"{hit[1]:.0f} s (epoch {hit[0]})" if hit else "not reached"
        print(
            f"| {preset} | {len(epochs)} | {100 * epochs[-1][2]:.2f}% | {epochs[-1][1]:.0f} s | "
            f"{wall:.0f} s | {reached} |"
        )
        summary.append(f"{preset} {100 * epochs[-1][2]:.2f}% in {epochs[-1][1]:.0f} s")
    print("summary: " + "; ".join(summary))


if __name__ == "__main__":
    main()

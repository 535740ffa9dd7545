"""A sweep's results from its MLflow children: a row per job, the best job, seed
statistics, the parent run's final status, its description and CSV tables."""

from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path
from typing import Optional, Sequence

from cifar_exp import study, tracking
from cifar_exp.errors import Interrupted, one_line
from cifar_exp.job import parse_override
from cifar_exp.metrics import MAX, goal


def _job_params(overrides: str) -> dict[str, str]:
    return dict(parse_override(o) for o in overrides.split() if "=" in o)


def sweep_description(
    command: str,
    sweep_dir: Path,
    summary: Optional[dict] = None,
    objective: str = "",
    swept: Optional[list[str]] = None,
) -> str:
    """The sweep parent's description in the MLflow UI (markdown): how it was launched and,
    once it ends, its best job and the job counts."""
    lines = [
        f"`{command}`",
        "",
        f"- sweep dir: `{sweep_dir}`",
        "- the same command again resumes an Optuna study, or reruns a grid",
    ]
    if summary is None:
        return "\n".join(lines)
    m, best = summary["metrics"], summary["best"]
    lines.append(
        f"- jobs: {m['jobs']}, finished {m['jobs_finished']}, pruned {m['jobs_pruned']}, failed {m['jobs_failed']}"
    )
    if best is not None:
        values = ", ".join(f"`{k}={best['params'].get(k, '')}`" for k in swept or [])
        lines += [
            "",
            f"**Best**: job {best['job']}, {objective} {best[objective]:.4g}: {values} (run `{best['run_id']}`)",
        ]
    return "\n".join(lines)


def sweep_summary(
    children: list[dict],
    objective: str,
    swept: list[str],
    completed: bool = False,
    stopped_by: Sequence[BaseException] = (),
) -> dict:
    """Rows per job, the best job, seed statistics and the parent's status: FINISHED for a
    sweep that ran to its end (an Optuna study goes on past failed trials). One that did
    not is KILLED when a stop signal ended it, else FAILED, and says why in its
    `cifar_exp.sweep_end` tag."""
    maximize = goal(objective) == MAX
    rows = []
    # children of a killed sweep whose trials ran again are history, not results
    current = [c for c in children if tracking.SUPERSEDED_TAG not in c["tags"]]
    for c in sorted(current, key=lambda c: int(c["tags"].get("hydra.job.num", 0))):
        rows.append(
            {
                "job": c["tags"].get("hydra.job.num", ""),
                "run_id": c["run_id"],
                "status": c["status"],
                "overrides": c["tags"].get("hydra.overrides", ""),
                objective: c["metrics"].get(objective),
                # selected on val, reported on test: both side by side
                "val/acc": c["metrics"].get("val/acc"),
                "val/loss": c["metrics"].get("val/loss"),
                "test/acc": c["metrics"].get("test/acc"),
                "test/loss": c["metrics"].get("test/loss"),
                "output_dir": c["tags"].get("hydra.output_dir", ""),
                "pruned": c["tags"].get(study.TRIAL_STATE_TAG) == study.PRUNED,
                "best": False,
                "params": _job_params(c["tags"].get("hydra.overrides", "")),
            }
        )
    # a pruned trial's objective is from a shortened run: it cannot be the best
    done = [r for r in rows if r["status"] == "FINISHED" and r[objective] is not None and not r["pruned"]]
    metrics: dict[str, float] = {
        "jobs": len(rows),
        "jobs_finished": len(done),
        "jobs_pruned": sum(r["pruned"] for r in rows),
    }
    tags: dict[str, str] = {}
    best = (max if maximize else min)(done, key=lambda r: r[objective]) if done else None
    if best is not None:
        metrics[f"best/{objective}"] = best[objective]
        tags.update(
            {
                "best_run_id": best["run_id"],
                "best_overrides": best["overrides"],
                "best_output_dir": best["output_dir"],
                **{f"best.{k}": best["params"][k] for k in swept if k in best["params"]},
            }
        )
        best["best"] = True
    seed_groups = _seed_groups(done, objective)
    if len(seed_groups) == 1:
        metrics[f"{objective}_mean"] = seed_groups[0]["mean"]
        metrics[f"{objective}_std"] = seed_groups[0]["std"]
    metrics["jobs_failed"] = sum(r["status"] == "FAILED" for r in rows)
    status = "FINISHED"
    if not completed:
        signalled = any(isinstance(e, (Interrupted, KeyboardInterrupt)) for e in stopped_by)
        status = (
            "KILLED"
            if signalled or not metrics["jobs_failed"] and any(r["status"] == "KILLED" for r in rows)
            else "FAILED"
        )
        why = f": {one_line(stopped_by[0])}" if stopped_by else ""
        tags["cifar_exp.sweep_end"] = (
            f"the sweep stopped before its end{why}; {len(rows)} jobs ran, {len(done)} finished"
        )
    return {"rows": rows, "metrics": metrics, "tags": tags, "seed_groups": seed_groups, "status": status, "best": best}


def _seed_groups(rows: list[dict], objective: str) -> list[dict]:
    """Jobs that differ only by seed, with the mean and std of the objective across seeds."""
    groups: dict[str, list[float]] = {}
    for r in rows:
        rest = " ".join(o for o in r["overrides"].split() if parse_override(o)[0] != "seed")
        if "seed" in r["params"]:
            groups.setdefault(rest, []).append(r[objective])
    return [
        {
            "overrides": k,
            "seeds": len(v),
            "mean": statistics.fmean(v),
            "std": statistics.stdev(v) if len(v) > 1 else math.nan,
        }
        for k, v in groups.items()
        if len(v) > 1
    ]


def write_csv(rows: list[dict], path: Path, swept: Optional[list[str]] = None) -> Path:
    """A table of plain values; with `swept`, one column per swept key after the job's
    number and status, so the table sorts and filters by each."""
    swept = swept or []
    fields = [k for k in rows[0] if k != "params"] if rows else ["job"]
    fields = fields[:2] + swept + fields[2:]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({**{k: r.get("params", {}).get(k, "") for k in swept}, **r} for r in rows)
    return path

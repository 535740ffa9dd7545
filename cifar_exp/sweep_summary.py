"""A sweep's results from its MLflow children: a row per job, the best job (one objective)
or the Pareto front (several), seed statistics, the parent run's final status, its
description and CSV tables."""

from __future__ import annotations

import csv
import statistics
from pathlib import Path
from typing import Optional, Sequence

from cifar_exp import study, tracking
from cifar_exp.errors import Interrupted, one_line
from cifar_exp.job import parse_override
from cifar_exp.metrics import MAX, goal
from cifar_exp.study import DIRECTIONS


def _job_params(overrides: str) -> dict[str, str]:
    return dict(parse_override(o) for o in overrides.split() if "=" in o)


def sweep_description(
    command: str,
    sweep_dir: Path,
    summary: Optional[dict] = None,
    names: Sequence[str] = (),
    swept: Optional[list[str]] = None,
) -> str:
    """The sweep parent's description in the MLflow UI (markdown): how it was launched and,
    once it ends, the job counts and its best job, or its Pareto front's jobs."""
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
        objective, values = names[0], _values(best, swept)
        lines += [
            "",
            f"**Best**: job {best['job']}, {objective} {best[objective]:.4g}: {values} (run `{best['run_id']}`)",
        ]
    if summary["front"]:
        wanted = ", ".join(f"{n} {DIRECTIONS[goal(n)]}d" for n in names)
        lines += ["", f"**Pareto front** ({len(summary['front'])} jobs; {wanted}):", ""]
        lines += [f"| job | {' | '.join(names)} | values | run |", "|" + " --- |" * (len(names) + 3)]
        lines += [
            f"| {r['job']} | {' | '.join(f'{r[n]:.4g}' for n in names)} | {_values(r, swept)} | `{r['run_id']}` |"
            for r in summary["front"]
        ]
    return "\n".join(lines)


def _values(row: dict, swept: Optional[list[str]]) -> str:
    return ", ".join(f"`{k}={row['params'].get(k, '')}`" for k in swept or [])


def sweep_summary(
    children: list[dict],
    names: Sequence[str],
    swept: list[str],
    completed: bool = False,
    stopped_by: Sequence[BaseException] = (),
) -> dict:
    """Rows per job; for one objective the best job, for several the Pareto front; seed
    statistics and the parent's status: FINISHED for a
    sweep that ran to its end (an Optuna study goes on past failed trials). One that did
    not is KILLED when a stop signal ended it, else FAILED, and says why in its
    `cifar_exp.sweep_end` tag."""
    mark = "best" if len(names) == 1 else "pareto"
    # children of a killed sweep whose trials ran again are history, not results
    current = [c for c in children if tracking.SUPERSEDED_TAG not in c["tags"]]
    rows = [_row(c, names, mark) for c in sorted(current, key=lambda c: int(c["tags"].get("hydra.job.num", 0)))]
    # a pruned trial's objective is from a shortened run: it cannot be the best
    done = [r for r in rows if r["status"] == "FINISHED" and all(r[n] is not None for n in names) and not r["pruned"]]
    metrics: dict[str, float] = {
        "jobs": len(rows),
        "jobs_finished": len(done),
        "jobs_pruned": sum(r["pruned"] for r in rows),
    }
    tags: dict[str, str] = {}
    best, front = None, pareto_front(done, names) if mark == "pareto" else []
    if mark == "best" and done:
        best = (max if goal(names[0]) == MAX else min)(done, key=lambda r: r[names[0]])
        metrics[f"best/{names[0]}"] = best[names[0]]
        tags.update(
            {
                "best_run_id": best["run_id"],
                "best_overrides": best["overrides"],
                "best_output_dir": best["output_dir"],
                **{f"best.{k}": best["params"][k] for k in swept if k in best["params"]},
            }
        )
    if front:
        metrics["pareto_front_jobs"] = len(front)
        tags.update(
            {"pareto_jobs": " ".join(r["job"] for r in front), "pareto_run_ids": ",".join(r["run_id"] for r in front)}
        )
    for r in [best] if best else front:
        r[mark] = True
    seed_groups = _seed_groups(done, names)
    if len(seed_groups) == 1:
        metrics.update({k: v for k, v in seed_groups[0].items() if k.endswith(("_mean", "_std"))})
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
    return {
        "rows": rows,
        "metrics": metrics,
        "tags": tags,
        "seed_groups": seed_groups,
        "status": status,
        "best": best,
        "front": front,
    }


def _row(child: dict, names: Sequence[str], mark: str) -> dict:
    m, tags = child["metrics"], child["tags"]
    return {
        # what a table preview shows first: the job, its objective, then the long columns
        "job": tags.get("hydra.job.num", ""),
        "status": child["status"],
        **{n: m.get(n) for n in names},
        # selected on val, reported on test: both side by side
        **{k: m.get(k) for k in ("val/acc", "val/loss", "test/acc", "test/loss") if k not in names},
        "pruned": tags.get(study.TRIAL_STATE_TAG) == study.PRUNED,
        mark: False,
        "run_id": child["run_id"],
        "overrides": tags.get("hydra.overrides", ""),
        "output_dir": tags.get("hydra.output_dir", ""),
        "params": _job_params(tags.get("hydra.overrides", "")),
    }


def pareto_front(rows: list[dict], names: Sequence[str]) -> list[dict]:
    """The rows no other row dominates (as good in every objective and better in one),
    each objective taken in its catalogue direction."""
    signs = [1.0 if goal(n) == MAX else -1.0 for n in names]
    scores = [[s * r[n] for s, n in zip(signs, names)] for r in rows]

    def dominated(a: list[float]) -> bool:
        return any(all(x >= y for x, y in zip(b, a)) and b != a for b in scores)

    return [r for r, score in zip(rows, scores) if not dominated(score)]


def _seed_groups(rows: list[dict], names: Sequence[str]) -> list[dict]:
    """Jobs that differ only by seed, with each objective's mean and std across seeds."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        rest = " ".join(o for o in r["overrides"].split() if parse_override(o)[0] != "seed")
        if "seed" in r["params"]:
            groups.setdefault(rest, []).append(r)
    return [
        {"seeds": len(group), **{f: v for n in names for f, v in _spread(n, group).items()}, "overrides": k}
        for k, group in groups.items()
        if len(group) > 1
    ]


def _spread(name: str, group: list[dict]) -> dict[str, float]:
    values = [r[name] for r in group]
    return {f"{name}_mean": statistics.fmean(values), f"{name}_std": statistics.stdev(values)}


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

"""`python -m cifar_exp.runs`: the runs of an experiment as a table, best first, for the
terminal user who does not open `mlflow ui`. `--deliver <run dir>` hands a store the writes
a run kept while the store was away."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

COLUMNS_PARAMS = ("model.name", "optimizer.name", "optimizer.lr", "epochs", "dataset.name")
PROG = "cifar-exp-runs"


class _OneLineParser(argparse.ArgumentParser):
    """argparse's errors as the project's one line and exit code 2 (not usage plus a line)."""

    def error(self, message: str):
        from cifar_exp.errors import exit_with

        exit_with(message, prog=PROG)


MAX_RUNS = 50000  # the most runs one MLflow search returns


def run_count(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if not 1 <= number <= MAX_RUNS:
        raise argparse.ArgumentTypeError(f"{value!r} is invalid: must be an integer from 1 to {MAX_RUNS}")
    return number


def metric_name(value: str) -> str:
    from cifar_exp.tracking.keys import valid_key

    if valid_key(value) != value or "`" in value:
        raise argparse.ArgumentTypeError(f"{value!r} is invalid: must be a metric name (test/acc, train/loss, ...)")
    return value


def metric_names(value: str) -> list[str]:
    names = [n.strip() for n in value.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"{value!r} is invalid: must be comma-separated metric names")
    return names


def table(runs: list[dict], metrics: list[str]) -> str:
    headers = ["run", "status", "model", "optimizer", "lr", "epochs", "dataset", *metrics, "name"]
    rows = []
    for r in runs:
        p = {**r["tags"], **r["params"]}  # epochs is a tag: a resume may change it
        short = [p.get(k, "") for k in COLUMNS_PARAMS]
        values = [r["metrics"].get(m, math.nan) for m in metrics]
        rows.append([r["run_id"][:8], r["status"], *short, *(f"{v:.4f}" for v in values), r["name"] or ""])
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip() for row in [headers, *rows]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = _OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", default="cifar_exp", help="experiment name (default: cifar_exp)")
    parser.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    parser.add_argument("--sort", type=metric_name, default="test/acc", help="metric to sort by (default: test/acc)")
    parser.add_argument("--ascending", action="store_true", help="smallest first (for losses)")
    parser.add_argument(
        "--metrics", type=metric_names, default="test/acc,test/loss", help="comma-separated metric columns"
    )
    parser.add_argument(
        "--limit", type=run_count, default=50, help=f"at most this many runs (default: 50; {MAX_RUNS} at most)"
    )
    parser.add_argument(
        "--deliver",
        metavar="RUN_DIR",
        help="deliver the writes a run kept in RUN_DIR/mlflow_outbox.json while its store was away, to the "
        "store of --tracking-uri (the file never chooses it)",
    )
    args = parser.parse_args(argv)

    from cifar_exp.errors import UserError, exit_with
    from cifar_exp.terminal import show
    from cifar_exp.tracking import deliver_outbox, search_runs, tracking_uri, ui_line

    uri = tracking_uri(args.tracking_uri)
    try:
        if args.deliver:
            show(deliver_outbox(Path(args.deliver), uri))
            return
        runs = search_runs(uri, args.experiment, args.sort, args.ascending, args.limit)
    except UserError as e:
        exit_with(str(e), prog=PROG)
    if not runs:
        show(f"cifar-exp-runs: no runs in experiment {args.experiment!r} at {uri}", file=sys.stderr)
        raise SystemExit(1)
    show(table(runs, args.metrics))
    show(ui_line(uri, runs[0]["experiment_id"]), file=sys.stderr)


if __name__ == "__main__":
    main()

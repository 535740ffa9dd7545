"""The one exception type for mistakes a user can fix; entry points print it as one line."""

from __future__ import annotations

import signal
import sys
from typing import NoReturn, Optional

from cifar_exp.terminal import printable

EXIT_USAGE = 2


class UserError(Exception):
    """Bad input: a config value, a path, a missing dataset. Printed without a traceback."""


class Interrupted(Exception):
    """A stop signal arrived; a checkpoint was written and the run can be resumed.
    `elsewhere`: the signal reached a job in another process (a SLURM job's scancel), not
    the process that reports it."""

    def __init__(self, signum: int, resume_hint: str, elsewhere: bool = False):
        super().__init__(f"stopped by signal {signum} ({signal.Signals(signum).name})")
        self.signum = signum
        self.resume_hint = resume_hint
        self.elsewhere = elsewhere

    def __reduce__(self):
        # a launcher that runs the job elsewhere (submitit) sends its outcome back pickled
        return type(self), (self.signum, self.resume_hint, True)


# why this process is ending early, for what records it at exit (a sweep's parent run)
stopping: list[BaseException] = []


def exit_with(message: str, prog: str = "cifar-exp") -> NoReturn:
    """One line on stderr, exit code 2. SystemExit passes through Hydra's error handling."""
    print(f"{prog}: error: {printable(message)}", file=sys.stderr)
    stopping.append(UserError(message))
    raise SystemExit(EXIT_USAGE)


def reason(e: BaseException, limit: int = 200) -> str:
    """An exception's first line, cut to `limit` characters; its type's name when it has none."""
    lines = [line for line in str(e).strip().splitlines() if line.strip()]
    return lines[0][:limit] if lines else type(e).__name__


_NOISE = ("full_key:", "object_type=", "reference_type=", "To append to your config")


def one_line(exc: Optional[BaseException]) -> str:
    """Hydra's and OmegaConf's multi-line messages, folded to one readable line."""
    parts: list[str] = []
    options: list[str] = []
    while exc is not None:
        for raw in str(exc).splitlines():
            line = raw.strip()
            if line.startswith("Config search path"):
                break
            if raw.startswith("\t"):
                options.append(line)
            elif line and not line.startswith(_NOISE):
                parts.append(line.rstrip(".:"))
        exc = exc.__cause__
    text = "; ".join(dict.fromkeys(parts)) or "unknown error"
    return f"{text}: {', '.join(options)}" if options else text

"""What reaches a terminal: text that came from files, folders or a store (class names,
paths, tags) is shown, never obeyed. A control character (an ANSI escape sequence, a
carriage return) is written as its escape."""

from __future__ import annotations

import logging


def printable(text: str) -> str:
    """`text` with every control character written as an escape (\\x1b, \\r, \\u200b)."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in str(text))


class ConsoleFormatter(logging.Formatter):
    """The console's log lines, made printable (the run's log file keeps them as they are)."""

    def format(self, record: logging.LogRecord) -> str:
        return "\n".join(printable(line) for line in super().format(record).split("\n"))


def show(text: str, file=None) -> None:
    """print(), with each line made printable."""
    print("\n".join(printable(line) for line in str(text).split("\n")), file=file)

"""The command line's contract for mistakes and early endings: a usage error is one line on stderr and exit
status 2; a reader that goes away (`memwardenctl … | head`) ends the command quietly, as SIGPIPE ends a C tool."""

from __future__ import annotations

import argparse
import os
import select
import signal
import sys
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import NoReturn

EX_USAGE = 2
EX_READER_GONE = 128 + signal.SIGPIPE  # what a shell reports for a command killed by SIGPIPE
EX_INTERRUPTED = 128 + signal.SIGINT


class Parser(argparse.ArgumentParser):
    """argparse, with each usage error on one line that says where the help is (subcommands inherit it)."""

    renamed: Mapping[str, str] = MappingProxyType({})  # a word its choices no longer take → what replaced it

    def error(self, message: str) -> NoReturn:
        for old, new in self.renamed.items():
            if f"invalid choice: '{old}'" in message:
                message = f"'{old}' was renamed in memwarden 0.2: use '{new}'"
                break
        self.exit(EX_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def run_quietly(body: Callable[[], int]) -> int:
    """body()'s exit status, with stdout flushed inside, so that a reader which stopped early is met here
    rather than as a traceback at interpreter exit; Ctrl-C ends the command without one too."""
    try:
        try:
            return body()
        finally:
            sys.stdout.flush()
    except BrokenPipeError:
        if not stdout_reader_gone():
            raise  # a socket's peer went away: its caller's error, not the reader's
        # What is still buffered goes nowhere: the interpreter's last flush must not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EX_READER_GONE
    except KeyboardInterrupt:
        return EX_INTERRUPTED


def stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reading end is closed (poll reports an error on its writing end)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError):  # stdout closed or not a file descriptor
        return False


def fail(message: str, code: int = 1) -> int:
    """One line on stderr naming what went wrong; the exit status to return."""
    print(f"memwardenctl: {message}", file=sys.stderr)
    return code

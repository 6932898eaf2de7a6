"""python -m memwarden.demo [--keep] [--no-docker]: the tour (see __init__.py); `make demo` runs it."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from .console import Console, StepFailed, shown_path
from .learning import learn
from .stack import BIN, Stack, become_subreaper
from .steps import containers, lease, proxy, start


class Stopped(Exception):
    """SIGTERM: unwound like a Ctrl-C, so that every process is stopped on the way out."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Stopped()


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m memwarden.demo",
                                description="A tour of memwarden on a simulated host: no GPU, no network, "
                                            "about 2 minutes. Every command is printed before it runs.")
    p.add_argument("--keep", action="store_true",
                   help="leave everything running at the end, for poking, until Ctrl-C or SIGTERM")
    p.add_argument("--no-docker", action="store_true", help="skip the leaking-container step")
    p.add_argument("--base", type=Path, default=None, metavar="DIR",
                   help="a demo base model already built (memwardenctl model init-demo DIR), used as it is "
                        "instead of building one (the longest part of the start)")
    return p.parse_args(argv)


def keep_up(c: Console, stack: Stack) -> None:
    assert stack.ollama is not None and stack.daemon is not None
    ctl = c.ctl_argv()
    c.heading("Still running (--keep)")
    c.say(f"  memwardenctl  {' '.join(ctl)} status      (gpu, lease list, models, train history, …)")
    c.say(f"  the proxy     curl -s {stack.proxy_url}/api/tags")
    c.say(f"  Ollama (sim)  curl -s {stack.ollama.url}/api/ps")
    c.say(f"  files         {shown_path(stack.dir)}  (config, logs, sim-GPU file)")
    c.say("  stop it       Ctrl-C here, or kill -TERM " + str(os.getpid())
          + ": everything stops and the directory is removed")
    while stack.daemon.poll() is None and stack.ollama.running():
        signal.pause()  # only a signal ends this wait; SIGCHLD of a crashed part wakes it too
    c.say("  a part of the stack exited on its own: stopping the rest")


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    become_subreaper()
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored (`cmd &`)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # so that signal.pause() wakes when a part dies
    stack = Stack(docker=not args.no_docker, base=args.base)
    c = Console(ctl=BIN / "memwardenctl", socket=stack.socket)
    t0 = time.monotonic()
    code = 0
    try:
        start(c, stack)
        lease(c, stack)
        proxy(c, stack)
        containers(c, stack)
        learn(c, stack)
        c.summary(time.monotonic() - t0)
        if args.keep:
            keep_up(c, stack)
    except StepFailed as exc:
        c.end("failed")
        c.say(f"demo: {exc}")
        c.say(f"demo: logs in {shown_path(stack.dir)} (kept for reading); daemon: {stack.log_tail()}")
        stack.own_dir = False
        code = 1
    except (KeyboardInterrupt, Stopped):
        c.end("interrupted")
        c.say("demo: interrupted; stopping everything")
        code = 130
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):  # the cleanup itself is bounded: let nothing cut it short
            signal.signal(sig, signal.SIG_IGN)
        stack.stop()
    if code == 0:
        c.say("\ndemo: done; every process stopped")
    return code


if __name__ == "__main__":
    sys.exit(main())

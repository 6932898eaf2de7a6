"""Every command line the docs show is one the CLI takes, so the docs and the CLI cannot drift apart.

The lines are taken from README.md and docs/**/*.md as they are when the tests run: each line of a code block
and each code span that starts with memwardenctl or memwardend. Usage notation is expanded into concrete
examples: `[…]` is optional (one example with every optional part, one without), `A|B` is a choice (each
alternative appears in some example), and words in capitals are placeholders given concrete values (a lone `…`
stands for any command).

Each example goes through the real parser, and each option and placeholder must land where it is meant to
(the RPC method and params, the lease's fields, the command after `--`). Then each memwardenctl example is run
against a daemon: it must be answered, or refused by the daemon for a reason its test environment explains.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from memwarden.cli import memwardenctl, memwardend
from memwarden.units import parse_duration
from support.daemon import BIN

REPO = Path(__file__).resolve().parents[2]
PROGRAM = re.compile(r"^(?:sudo\s+)?(?:\S*/)?(memwardenctl|memwardend)(?=\s|$)")
FENCE = re.compile(r"^\s*(```|~~~)")
SPAN = re.compile(r"(?<!`)`([^`]+)`(?!`)")
PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*(?:\.[a-z]+)?…?$")
SHELL_END = re.compile(r"\s(?:#|\||&&|;|>|<|2>)(?:\s|$).*$")  # a comment, a pipe, a redirection: not our argv


# ---- the documented lines ---------------------------------------------------------------------------------------

def doc_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def _spans(paragraph: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """(line, text) of the code spans of a paragraph: a span may run over a line break; in a table `\\|` is a
    literal bar."""
    if not paragraph:
        return []
    text = "\n".join(line.replace("\\|", "|") for _, line in paragraph)
    return [(paragraph[0][0] + text[:m.start()].count("\n"), " ".join(m.group(1).split()))
            for m in SPAN.finditer(text)]


def _candidates(doc: Path) -> list[tuple[int, str, bool]]:
    """(line, text, from a code block) of every code block line and code span."""
    out: list[tuple[int, str, bool]] = []
    paragraph: list[tuple[int, str]] = []
    in_block = False
    for n, line in enumerate(doc.read_text().splitlines(), 1):
        if in_block or FENCE.match(line) or not line.strip():
            out += [(m, span, False) for m, span in _spans(paragraph)]
            paragraph = []
        if FENCE.match(line):
            in_block = not in_block
        elif in_block:
            out.append((n, line.strip().removeprefix("$ "), True))
        elif line.strip():
            paragraph.append((n, line))
    return out + [(m, span, False) for m, span in _spans(paragraph)]


def documented_lines() -> list[tuple[str, str]]:
    """(where, text) of every documented command line, in document order."""
    found: list[tuple[str, str]] = []
    for doc in doc_files():
        for n, text, in_block in _candidates(doc):
            text = SHELL_END.sub("", text).strip()
            match = PROGRAM.match(text)
            if not match or (not in_block and text == match.group(0)):
                continue  # not a command line; or the program's name in prose
            found.append((f"{doc.relative_to(REPO)}:{n}", match.group(1) + text[match.end():]))
    return found


# ---- usage notation → concrete examples ---------------------------------------------------------------------------

@dataclass
class Example:
    where: str
    usage: str
    argv: list[str]
    filled: dict[int, str] = field(default_factory=dict)  # argv index → the placeholder it stands for

    @property
    def program(self) -> str:
        return self.argv[0]

    def __str__(self) -> str:
        return f"{self.where}: {' '.join(self.argv)}"


def _parse_notation(tokens: list[str], pos: int = 0, closing: str | None = None) -> tuple[list[Any], int]:
    """A sequence of words (each a list of alternatives) and optional groups (("opt", sequence))."""
    seq: list[Any] = []
    while pos < len(tokens):
        tok = tokens[pos]
        if tok == "[":
            inner, pos = _parse_notation(tokens, pos + 1, "]")
            seq.append(("opt", inner))
        elif tok == closing:
            return seq, pos + 1
        else:
            seq.append(tok.split("|") if len(tok) > 1 else [tok])
            pos += 1
    assert closing is None, f"unbalanced brackets in {' '.join(tokens)!r}"
    return seq, pos


def _choices(seq: list[Any]) -> int:
    return max([1, *(_choices(x[1]) if isinstance(x, tuple) else len(x) for x in seq)])


def _render(seq: list[Any], variant: int, optional: bool) -> list[str]:
    words: list[str] = []
    for item in seq:
        if isinstance(item, tuple):
            if optional:
                words += _render(item[1], variant, optional)
        else:
            words.append(item[variant % len(item)])
    return words


def expand(usage: str) -> list[list[str]]:
    """Concrete word lists for a usage line: every alternative in some example; optional parts in and out."""
    # A word in single quotes is one word, as the shell reads it (`call config.show '{"secrets": true}'`).
    tokens = [t[1:-1] if t.startswith("'") else t for t in re.findall(r"'[^']*'|\[|\]|[^\s\[\]']+", usage)]
    seq, _ = _parse_notation(tokens)
    out: list[list[str]] = []
    for variant in range(_choices(seq)):
        for optional in (True, False):
            words = _render(seq, variant, optional)
            if words not in out:
                out.append(words)
    return out


@dataclass
class Values:
    """Concrete values for placeholders: by the word before them where that matters, else by name."""

    socket: str = "/run/memwarden/control.sock"
    jsonl: str = "memories.jsonl"
    directory: str = "demo-base"
    config: str = "/etc/memwarden/memwarden.toml"

    def fill(self, before: str, name: str) -> list[str]:
        by_option = {"--gpu": "0", "--priority": "3", "--limit": "7", "--offset": "2", "--importance": "6",
                     "--holder": "nightly-run", "--profile": "alice", "--kind": "journal", "--adapter": "alice",
                     "--response": "Black coffee, before eight.", "--created-at": "2024-05-01T10:00:00",
                     "--wait": "5s", "--timeout": "12.5", "--socket": self.socket, "--config": self.config,
                     "--import-id": "nightly-2024-05-01", "--cue": "my morning coffee", "--title": "Coffee",
                     "--tag": "habits", "--pretrain-steps": "150"}
        if before in by_option:
            return [by_option[before]]
        by_name = {"SIZE": ["4GiB"], "ID": ["42"], "NAME": ["assistant"], "ADAPTER": ["alice"],
                   "CONTENT": ["I like black coffee in the morning"], "FILE.jsonl": [self.jsonl],
                   "FILE": [self.config],
                   "DIR": [self.directory], "METHOD": ["alerts"], "JSON": ['{"limit": 3}'], "COMMAND": ["status"],
                   "CMD": ["python3"], "ARGS…": ["train.py", "--epochs", "2", "-v"], "…": ["status"]}
        assert name in by_name, f"no example value for the placeholder {name} (after {before!r}): add one"
        return by_name[name]


def examples(values: Values) -> list[Example]:
    out = []
    for where, usage in documented_lines():
        for words in expand(usage):
            argv: list[str] = []
            filled: dict[int, str] = {}
            for i, word in enumerate(words):
                if (PLACEHOLDER.match(word) or word == "…") and i > 0:
                    for value in values.fill(words[i - 1], word):
                        filled[len(argv)] = word
                        argv.append(value)
                else:
                    argv.append(word)
            out.append(Example(where, usage, argv, filled))
    return out


# ---- where each option and placeholder must land --------------------------------------------------------------------

Check = Callable[[Any, Any, str], bool]  # (parsed args, the RPC request or None, the value) → landed?


def _lease(args: Any) -> Any:
    return args.lease


CTL_OPTIONS: dict[str, tuple[bool, Check]] = {  # option → (takes a value, where it lands)
    "--socket": (True, lambda a, r, v: a.socket == Path(v)),
    "--json": (False, lambda a, r, v: a.json is True),
    "--timeout": (True, lambda a, r, v: a.timeout == float(v)),
    "--limit": (True, lambda a, r, v: r.params["limit"] == int(v)),
    "--offset": (True, lambda a, r, v: r.params["offset"] == int(v)),
    "--profile": (True, lambda a, r, v: r.params["profile"] == v),
    "--kind": (True, lambda a, r, v: r.params["kind"] == v),
    "--adapter": (True, lambda a, r, v: r.params["adapter"] == v),
    "--importance": (True, lambda a, r, v: r.params["importance"] == int(v)),
    "--response": (True, lambda a, r, v: r.params["response"] == v),
    "--created-at": (True, lambda a, r, v: r.params["created_at"] == v),
    "--cue": (True, lambda a, r, v: r.params["cue"] == v),
    "--title": (True, lambda a, r, v: r.params["title"] == v),
    "--tag": (True, lambda a, r, v: r.params["tags"] == [v]),
    "--import-id": (True, lambda a, r, v: a.import_id == v),
    "--progress": (False, lambda a, r, v: a.progress is True),
    "--secrets": (False, lambda a, r, v: r.params == {"secrets": True}),
    "--consolidated": (False, lambda a, r, v: r.params["consolidated"] is True),
    "--unconsolidated": (False, lambda a, r, v: r.params["consolidated"] is False),
    "--gpu": (True, lambda a, r, v: _lease(a).gpu == v),
    "--wait": (True, lambda a, r, v: _lease(a).wait_s == parse_duration(v)),
    "--holder": (True, lambda a, r, v: _lease(a).holder == v),
    "--priority": (True, lambda a, r, v: _lease(a).priority == int(v)),
    "--preemptible": (False, lambda a, r, v: _lease(a).preemptible is True),
    "--requeue": (False, lambda a, r, v: _lease(a).requeue is True),
    "--cpu": (False, lambda a, r, v: a.build == "cpu"),
    "--cuda": (False, lambda a, r, v: a.build == "cuda"),
    "--dry-run": (False, lambda a, r, v: a.dry_run is True),
    "--pretrain-steps": (True, lambda a, r, v: a.pretrain_steps == int(v)),
}
CTL_PLACEHOLDERS: dict[str, Check] = {  # a placeholder outside an option → where its value lands
    "SIZE": lambda a, r, v: _lease(a).size == v,
    "ID": lambda a, r, v: str(r.params["id"]) == v,
    "NAME": lambda a, r, v: r.params["name"] == v,
    "ADAPTER": lambda a, r, v: (r.params["adapter"] if r else a.adapter) == v,  # r None: train watch
    "CONTENT": lambda a, r, v: r.params["content"] == v,
    "METHOD": lambda a, r, v: r.method == v,
    "JSON": lambda a, r, v: r.params == json.loads(v),
    "FILE.jsonl": lambda a, r, v: a.file == Path(v),
    "FILE": lambda a, r, v: a.file == Path(v),
    "DIR": lambda a, r, v: a.dir == Path(v),
    "COMMAND": lambda a, r, v: a.command == v,
    "…": lambda a, r, v: a.command == v,  # `memwardenctl … | head`: any command
}
DAEMON_OPTIONS: dict[str, tuple[bool, Check]] = {
    "--config": (True, lambda a, r, v: a.config == Path(v)),
    "--check-config": (False, lambda a, r, v: a.check_config is True),
    "--print-default-config": (False, lambda a, r, v: a.print_default_config is True),
    "--log-format": (True, lambda a, r, v: a.log_format == v),
}


def parse_example(ex: Example, capsys: pytest.CaptureFixture[str]) -> Any:
    """The parsed line; None for a request for help, which must print it and exit 0."""
    parser = memwardenctl.parse_args if ex.program == "memwardenctl" else memwardend.parse_args
    try:
        return parser(ex.argv[1:])
    except SystemExit as stop:
        out = capsys.readouterr()
        if stop.code == 0 and "--help" in ex.argv and out.out.startswith("usage: "):
            return None
        pytest.fail(f"{ex} is refused by the parser (exit {stop.code}): {out.err.strip()}")


def rpc_request(args: Any) -> Any:
    """The RPC call an memwardenctl line makes, or None for those that are no single call."""
    if (args.command == "lease" and args.lease_verb is None) or args.command == "model":
        return None
    if (args.command == "memories" and args.verb == "import") or memwardenctl.local(args):
        return None
    return memwardenctl.request(args)


def test_the_docs_show_command_lines_of_both_programs():
    programs = {PROGRAM.match(text).group(1) for _, text in documented_lines()}
    assert programs == {"memwardenctl", "memwardend"}
    assert any("lease SIZE" in text and "--wait" in text for _, text in documented_lines())


@pytest.mark.parametrize("ex", examples(Values()), ids=str)
def test_a_documented_command_line_parses_and_each_part_lands_where_meant(ex: Example, capsys):
    args = parse_example(ex, capsys)
    if args is None:
        return
    options = CTL_OPTIONS if ex.program == "memwardenctl" else DAEMON_OPTIONS
    req = rpc_request(args) if ex.program == "memwardenctl" else None
    dashes = ex.argv.index("--") if "--" in ex.argv else len(ex.argv)
    literal: list[str] = []
    i = 1
    while i < dashes:
        word = ex.argv[i]
        if word.startswith("-"):
            assert word in options, f"{ex}: the docs show {word}: say in this test where it must land"
            takes_value, lands = options[word]
            value = ex.argv[i + 1] if takes_value else ""
            assert lands(args, req, value), f"{ex}: {word} {value} did not land where it should: {args}, {req}"
            i += 2 if takes_value else 1
            continue
        if i in ex.filled:
            name = ex.filled[i]
            assert name in CTL_PLACEHOLDERS, f"{ex}: say in this test where {name} must land"
            assert CTL_PLACEHOLDERS[name](args, req, word), f"{ex}: {name}={word} did not land: {args}, {req}"
        else:
            literal.append(word)
        i += 1
    if dashes < len(ex.argv):
        assert _lease(args).command == ex.argv[dashes + 1:], f"{ex}: the command after -- was changed"
    if req is not None and literal and literal[0] != "call":
        # The subcommand's words name the method: `memories list` → memories.list, `reload` → config.reload.
        method = set(req.method.split("."))
        assert {w.replace("-", "_") for w in literal} <= method, f"{ex} calls {req.method}"


# ---- against a daemon ----------------------------------------------------------------------------------------------

# What the test daemon cannot do, by command: it watches no containers, learns nothing, has no Ollama and no
# adapter versions. The daemon still has to be reached and to say so in one line.
REFUSED = {
    ("containers",): "container watching is off",
    ("containers", "list"): "container watching is off",
    ("containers", "leaks"): "container watching is off",
    ("containers", "history"): "container watching is off",
    ("containers", "restart"): "container watching is off",
    ("train", "start"): "learning.base_model is not set",
    ("train", "cancel"): "no run of alice in progress",
    ("adapters", "rollback"): "assistant has no active version",
    ("adapters", "show"): "no adapter 'assistant'",
    ("adapters", "versions"): "no adapter 'assistant'",
    ("models", "load"): "no Ollama configured",
    ("models", "evict"): "no Ollama configured",
    ("models", "pin"): "no Ollama configured",  # only a model Ollama lists may be pinned
    ("config", "show"): "only root may see the config's secrets",  # --secrets, when the tests do not run as root
    ("train", "watch"): "in progress or pending",
}
PRINT_ARGV = "import os, sys; print('GPU', os.environ['CUDA_VISIBLE_DEVICES'], 'ARGV', *sys.argv[1:])"


def _words(argv: list[str]) -> tuple[str, ...]:
    """The command and its verb, after the global options."""
    i = 1
    while i < len(argv) and argv[i].startswith("--"):
        i += 2 if argv[i] in ("--socket", "--timeout") else 1
    return tuple(w for w in argv[i:i + 2] if not w.startswith("-"))


@pytest.mark.timeout(900)  # about fifty memwardenctl runs on a loaded machine
def test_each_documented_memwardenctl_line_is_answered_by_a_daemon(make_daemon, tmp_path):
    from support.ollama_double.manager import sim_gpu

    d = make_daemon()
    sim = sim_gpu(d.workdir / "gpu.json", 12 * 1024**3)
    d.write_config({**d.sections, "gpu": {"backend": "sim", "sim_file": str(sim), "reserve": "1GiB"}})
    d.start()
    jsonl = tmp_path / "memories.jsonl"
    jsonl.write_text(json.dumps({"profile": "bob", "kind": "journal", "content": "rain all day",
                                 "importance": 4}) + "\n")
    values = Values(socket=str(d.socket_path), jsonl=str(jsonl), directory=str(tmp_path / "demo"),
                    config=str(d.config_path))
    env = {**os.environ, "MEMWARDEN_SOCKET": str(d.socket_path)}
    failures = []
    ran = 0
    for ex in examples(values):
        if ex.program != "memwardenctl" or _words(ex.argv)[:2] in (("model", "init-demo"), ("setup", "training")):
            # The daemon's own line is parsed above; init-demo builds a model and setup training runs pip, both
            # locally without a daemon (test_setup_training.py runs the latter).
            continue
        argv = list(ex.argv)
        words = _words(argv)
        for i, name in ex.filled.items():
            if name == "ID" and words == ("memories", "show"):
                argv[i] = str(d.call("memories.add", {"profile": "bob", "kind": "journal", "content": "x",
                                                      "importance": 1})["id"])
            elif name == "ID":  # lease release / preempt: a lease held by this test process
                argv[i] = d.call("lease.acquire", {"size": "1GiB", "holder": "docs", "preemptible": True})["id"]
        if "--" in argv:  # the documented CMD stands for the user's program: run one that shows what it got
            cmd = argv.index("--") + 1
            argv[cmd:cmd + 1] = [sys.executable, "-c", PRINT_ARGV]
        done = subprocess.run([str(BIN / argv[0]), *argv[1:]], capture_output=True, text=True, env=env,
                              timeout=120)
        ran += 1
        reason = REFUSED.get(words)
        if "Traceback" in done.stderr:
            failures.append(f"{ex}: traceback\n{done.stderr}")
        elif reason is not None and done.returncode == 1:
            if done.stderr.count("\n") != 1 or reason not in done.stderr:
                failures.append(f"{ex}: refused without a one-line reason naming {reason!r}: {done.stderr!r}")
        elif done.returncode != 0:
            failures.append(f"{ex}: exit {done.returncode}: {done.stderr.strip()}")
        elif "--" in argv:
            tail = ex.argv[ex.argv.index("--") + 2:]
            if f"GPU 0 ARGV {' '.join(tail)}".strip() not in done.stdout:
                failures.append(f"{ex}: the command did not get GPU 0 and its arguments: {done.stdout!r}")
    assert ran >= 25
    assert not failures, "\n".join(failures)

"""Fuzzing the config loader: TOML documents built from the real schema's sections and keys with values of
random types, and plain random text and bytes. The loader returns a Config or raises ConfigError whose every
problem names a key path or the parse position; nothing else may escape it. And `memwardend --check-config`
exits 78 (EX_CONFIG) on a bad file, 0 on a good one."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
import subprocess
import tempfile
from dataclasses import fields
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from memwarden.config import Config, ConfigError, load_config
from memwarden.config.routes import NAME_RE
from memwarden.config.schema import SECTIONS, section_fields
from support.daemon import BIN

SETTINGS = dict(deadline=None, database=None, derandomize=False, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
ENV = {"HOME": "/nonexistent", "XDG_STATE_HOME": "/tmp/mw-fuzz-state", "XDG_RUNTIME_DIR": "/tmp/mw-fuzz-run"}
# One line each (a key or value with a newline in it is shown escaped), naming a key path or a position.
PROBLEM = re.compile(r"at '(?P<path>[^\n]+?)': [^\n]+"
                     r"|not valid TOML: [^\n]*\(at (line \d+, column \d+|end of document)\)"
                     r"|not valid TOML: arrays or inline tables nested too deeply"
                     r"|not UTF-8 text: [^\n]+ at byte \d+")
KEYS = {name: [f for f in section_fields(t)] for name, t in SECTIONS.items()}


def scaled(n: int) -> int:
    """MEMWARDEN_FUZZ_SCALE=N multiplies every fuzzer's example count (bench/fuzz_counts.py)."""
    return max(1, round(n * float(os.environ.get("MEMWARDEN_FUZZ_SCALE", "1"))))


# ---- a TOML writer for what the strategies make ------------------------------------------------------------


def key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)


def literal(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # JSON's escapes are TOML's (a lone surrogate is a TOML error, as it should be)
    if isinstance(v, dt.datetime | dt.date | dt.time):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(literal(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{key(k)} = {literal(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def document(doc: dict[str, object]) -> str:
    out = []
    for name, body in doc.items():
        if isinstance(body, dict):
            out.append(f"[{key(name)}]")
            out.extend(f"{key(k)} = {literal(v)}" for k, v in body.items())
        else:
            out.append(f"{key(name)} = {literal(body)}")  # a section that is not a table
    return "\n".join(out) + "\n"


# ---- strategies --------------------------------------------------------------------------------------------

UNITISH = ("4GiB", "512MiB", "1.5GB", "0", "-1", "9" * 400, "9" * 400 + "GiB", "30s", "5m", "1h30m", "250ms",
           "1e3", "inf", "nan", "10MB/h", "1MiB/min", "0B/s", "/", "/tmp", "relative/path", "http://x", "https://",
           "http://[::1", "unix:///x", "127.0.0.1:11435", ":0", "0 2 * * *", "99 * * * *", "* * *", "lru", "gdsf",
           "sim", "nvml", "alert", "restart", "lora", "qlora", "cpu", "debug", "json", "root", "nosuchgroup", "",
           "\x00", "é", "1d", "2w")
leaf = st.one_of(
    st.booleans(), st.integers(), st.integers(min_value=-(2**70), max_value=2**70), st.floats(),
    st.text(max_size=30), st.sampled_from(UNITISH), st.datetimes(timezones=st.none() | st.just(dt.UTC)),
    st.dates(), st.times())
value = st.recursive(leaf, lambda c: st.one_of(st.lists(c, max_size=4), st.dictionaries(
    st.sampled_from(["adapter", "profiles", "kinds", "x"]) | st.text(min_size=1, max_size=6), c, max_size=4)),
    max_leaves=12)
routes = st.lists(st.fixed_dictionaries({}, optional={
    "adapter": st.one_of(st.sampled_from(["a", "b", ""]), value),
    "profiles": st.one_of(st.lists(st.sampled_from(["alice", "bob", ""]), max_size=3), value),
    "kinds": st.one_of(st.lists(st.sampled_from(["journal", "dream"]), max_size=3), value),
    "extra": value}), max_size=3)


@st.composite
def documents(draw) -> str:
    doc: dict[str, object] = {}
    for name in draw(st.lists(st.sampled_from(list(SECTIONS)) | st.text(min_size=1, max_size=10), unique=True,
                              max_size=5)):
        if name in SECTIONS and draw(st.integers(0, 15)):
            body = {}
            for f in draw(st.lists(st.sampled_from(KEYS[name]), unique_by=lambda f: f.name, max_size=6)):
                if f.name == "routes":
                    body[f.name] = draw(routes)
                elif draw(st.integers(0, 2)) == 0:
                    body[f.name] = f.metadata["raw"]  # the default as written: keeps some documents valid
                else:
                    body[f.name] = draw(value)
            if draw(st.integers(0, 7)) == 0:
                body[draw(st.text(min_size=1, max_size=12))] = draw(value)  # an unknown key
            doc[name] = body
        else:
            doc[name] = draw(value)
    return document(doc)


# ---- the oracle --------------------------------------------------------------------------------------------


def check_load(path: Path) -> Config | None:
    """load_config must return a usable Config or raise ConfigError naming where; anything else fails."""
    try:
        config = load_config(path, env=ENV, uid=1000)
    except ConfigError as exc:
        assert exc.problems, "a ConfigError with no problem in it"
        assert exc.source == path
        for problem in exc.problems:
            assert PROBLEM.fullmatch(problem), f"a problem that names neither a key nor a position: {problem!r}"
        assert str(exc).startswith(f"{path}: ")
        return None
    assert isinstance(config, Config) and config.source == path
    for route in config.learning.routes:  # what the schema accepts, the memory store can use
        assert NAME_RE.match(route.adapter) and all(NAME_RE.match(p) for p in route.profiles), route
    for name in SECTIONS:
        for f in fields(getattr(config, name)):
            v = getattr(getattr(config, name), f.name)
            if isinstance(v, float):
                assert math.isfinite(v), f"{name}.{f.name} = {v} was accepted"
    return config


class Files:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="mw-config-fuzz-"))
        self.path = self.dir / "memwarden.toml"

    def write(self, data: bytes) -> Path:
        self.path.write_bytes(data)
        return self.path


@pytest.fixture
def files():
    f = Files()
    yield f
    for p in f.dir.iterdir():
        p.unlink()
    f.dir.rmdir()


def test_schema_shaped_documents(files, fuzz_count):
    outcomes = {"config": 0, "config_error": 0}

    @seed(11)
    @settings(max_examples=scaled(1500), **SETTINGS)
    @given(documents())
    def fuzz(text):
        fuzz_count.inputs += 1
        config = check_load(files.write(text.encode("utf-8", "surrogatepass")))
        outcomes["config" if config else "config_error"] += 1

    fuzz()
    for k, n in outcomes.items():
        fuzz_count.add(k, n)
    # Both branches were exercised: some documents were valid, many were not.
    assert outcomes["config"] > 20 and outcomes["config_error"] > 200, outcomes


def test_random_text_and_bytes(files, fuzz_count):
    @seed(12)
    @settings(max_examples=scaled(800), **SETTINGS)
    @given(st.one_of(
        st.binary(max_size=400),
        st.text(max_size=400).map(lambda t: t.encode("utf-8", "surrogatepass")),
        st.lists(st.sampled_from(["[daemon]", "[host]", "[[learning.routes]]", "x = 1", "a.b.c = 2", "= 3",
                                  'sample_interval = "2s"', "hold = inf", "reserve = nan", "[", "]", "\"", "'''",
                                  "[daemon]\n[daemon]", "key = [1, [2, [3", "\x00", "\r", "\ufeff"]),
                 max_size=12).map(lambda parts: "\n".join(parts).encode("utf-8", "surrogatepass")),
        st.integers(1, 3000).map(lambda n: b"x = " + b"[" * n + b"]" * n),  # deep nesting
        st.integers(1, 3000).map(lambda n: b"x = " + b"{a = " * n + b"1" + b"}" * n),
    ))
    def fuzz(data):
        fuzz_count.inputs += 1
        check_load(files.write(data))

    fuzz()


@pytest.mark.parametrize("text, fragment", [
    ("[daemon]\nsample_interval = inf\n", "at 'daemon.sample_interval'"),
    ("[host]\nreserve = \"" + "9" * 400 + "GiB\"\n", "at 'host.reserve'"),
    ("[host]\nram_warn_percent = 96\n", "at 'host.ram_warn_percent'"),
    ("[deamon]\n", "did you mean [daemon]"),
    ("[daemon\n", "not valid TOML"),
    ("x = " + "[" * 3000 + "]" * 3000 + "\n", "not valid TOML"),
])
def test_check_config_exits_78_naming_the_problem(tmp_path, text, fragment):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    out = subprocess.run([BIN / "memwardend", "--check-config", "--config", str(path)], capture_output=True,
                         text=True, timeout=60, env={**os.environ, **ENV})
    assert out.returncode == 78, out
    assert fragment in out.stderr and str(path) in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_check_config_accepts_a_good_file(tmp_path):
    path = tmp_path / "good.toml"
    path.write_text('[daemon]\nsample_interval = "1s"\n[host]\nreserve = "2GiB"\n[gpu]\nbackend = "none"\n')
    out = subprocess.run([BIN / "memwardend", "--check-config", "--config", str(path)], capture_output=True,
                         text=True, timeout=60, env={**os.environ, **ENV})
    assert out.returncode == 0 and out.stdout.strip() == f"{path}: OK", out

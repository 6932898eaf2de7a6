"""The simulator's command line: every option parsed and checked before anything starts, bad ones in one line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from memwarden.loopback import is_loopback
from memwarden.sim.ollama.options import DEFAULT_LISTEN, OptionError, parse, split_listen

GiB = 1024**3


def test_defaults_are_ollamas_own_on_loopback(monkeypatch):
    for name in ("OLLAMA_HOST", "OLLAMA_KEEP_ALIVE", "OLLAMA_MAX_LOADED_MODELS", "OLLAMA_MAX_QUEUE",
                 "OLLAMA_NUM_PARALLEL"):
        monkeypatch.delenv(name, raising=False)
    opts = parse(["--sim-file", "gpu.json"])
    assert (opts.host, opts.port) == ("127.0.0.1", 11434) and DEFAULT_LISTEN == "127.0.0.1:11434"
    assert opts.gpus is None and opts.create_gpus == [] and opts.models == [] and opts.load == []
    s = opts.settings
    assert s.keep_alive_ns == 5 * 60 * 10**9 and s.max_queue == 512 and s.num_parallel == 1 and s.max_loaded == 0


def test_ollamas_environment_sets_the_defaults(monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", "127.0.0.1:5555")
    monkeypatch.setenv("OLLAMA_KEEP_ALIVE", "-1")
    monkeypatch.setenv("OLLAMA_MAX_QUEUE", "7")
    opts = parse(["--sim-file", "gpu.json"])
    assert opts.port == 5555 and opts.settings.max_queue == 7
    assert opts.settings.keep_alive_ns > 10**18  # negative: forever


def test_models_gpus_and_loads():
    opts = parse(["--sim-file", "g.json", "--sim-gpus", "12GiB,8GiB", "--gpu", "1,0", "--listen", "[::1]:0",
                  "--model", "llama3.1:8b=6GiB", "--model", "tiny=512MiB", "--load", "tiny", "--load", "llama3.1:8b"])
    assert opts.create_gpus == [12 * GiB, 8 * GiB] and opts.gpus == [0, 1]
    assert (opts.host, opts.port) == ("::1", 0)
    assert opts.models == [{"name": "llama3.1:8b", "size": 6 * GiB}, {"name": "tiny", "size": 512 * 2**20}]
    assert opts.load == ["tiny", "llama3.1:8b"]


def test_a_models_file_and_model_options_add_up(tmp_path):
    models = tmp_path / "m.json"
    models.write_text(json.dumps([{"name": "a", "size": GiB, "family": "qwen2"}]))
    opts = parse(["--sim-file", "g.json", "--models", str(models), "--model", "b=2GiB", "--load", "a:latest"])
    assert [m["name"] for m in opts.models] == ["a", "b"]


@pytest.mark.parametrize(("argv", "message"), [
    (["--listen", "0.0.0.0:11434"], "not a loopback address; add --allow-remote"),
    (["--listen", "localhost:x"], "is not HOST:PORT"),
    (["--listen", "127.0.0.1:70000"], "out of range"),
    (["--model", "nosize"], "is not NAME=SIZE"),
    (["--model", "m=lots"], "--model m:"),
    (["--model", "m=0"], "above 0"),
    (["--gpu", "one"], "is not 'all' or GPU indices"),
    (["--sim-gpus", "12GiB,huge"], "--sim-gpus:"),
    (["--keep-alive", "soon"], "--keep-alive: invalid duration"),
    (["--unload-linger", "-1"], "--unload-linger: must not be negative"),
    (["--load", "ghost"], "--load ghost: no such model installed"),
    (["--models", "/nonexistent/m.json"], "--models: cannot read"),
])
def test_bad_options_say_which_and_why(argv, message):
    with pytest.raises(OptionError) as refused:
        parse(["--sim-file", "g.json", *argv])
    assert message in str(refused.value)


def test_a_remote_address_needs_allow_remote():
    assert parse(["--sim-file", "g", "--listen", "0.0.0.0:0", "--allow-remote"]).host == "0.0.0.0"


def test_listen_spellings():
    assert split_listen(":8080") == ("127.0.0.1", 8080)
    assert split_listen("http://127.0.0.1:9") == ("127.0.0.1", 9)
    assert split_listen("127.0.0.2") == ("127.0.0.2", 11434)
    assert is_loopback("127.0.0.2") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("10.0.0.1") and not is_loopback("example.com")


def test_the_cli_refuses_in_one_line_with_status_2(tmp_path):
    run = subprocess.run([sys.executable, "-m", "memwarden.sim.ollama", "--sim-file", str(tmp_path / "none.json"),
                          "--listen", "127.0.0.1:0"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("ollama sim: ") and "Traceback" not in run.stderr


def test_importing_the_simulator_loads_nothing_heavy():
    code = ("import sys, memwarden.sim.ollama; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'aiohttp', 'torch', 'transformers', 'docker', "
            "'numpy', 'sqlite_utils', 'structlog', 'psutil'}))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.strip() == "[]", run.stdout + run.stderr

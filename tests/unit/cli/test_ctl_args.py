"""memwardenctl's command line, parsed only: lease options on either side of SIZE up to `--`, a command after it
taken verbatim, help that exits 0 and mistakes that exit 2 with one line."""

from __future__ import annotations

import importlib.util

import pytest

from memwarden.cli import lease, memwardenctl

ALL_OPTIONS = ["--gpu", "1", "--wait", "5s", "--holder", "nightly", "--priority", "3", "--preemptible", "--requeue"]


def parsed(*argv: str):
    return memwardenctl.parse_args(list(argv))


def usage_error(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as stop:
        memwardenctl.parse_args(list(argv))
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def assert_all_options(args) -> None:
    assert (args.gpu, args.wait_s, args.holder, args.priority) == ("1", 5.0, "nightly", 3)
    assert args.preemptible and args.requeue


@pytest.mark.parametrize("argv", [
    ["4GiB", *ALL_OPTIONS, "--"],
    [*ALL_OPTIONS, "4GiB", "--"],
    ["--gpu", "1", "--wait", "5s", "4GiB", "--holder", "nightly", "--priority", "3", "--preemptible", "--requeue",
     "--"],
    ["--wait=5s", "--gpu=1", "--holder=nightly", "--priority=3", "--requeue", "--preemptible", "4GiB", "--"],
], ids=["after SIZE", "before SIZE", "on both sides", "with ="])
def test_every_lease_option_works_before_and_after_size(argv):
    args = parsed("lease", *argv, "python3", "train.py").lease
    assert args.size == "4GiB"
    assert args.command == ["python3", "train.py"]
    assert_all_options(args)


def test_the_headline_command_runs_true_not_its_wait_option():
    args = parsed("lease", "1GiB", "--wait", "5s", "--", "true").lease
    assert (args.size, args.wait_s, args.command) == ("1GiB", 5.0, ["true"])


def test_everything_after_the_dashes_is_the_command_untouched():
    tail = ["python3", "-u", "train.py", "--wait", "9s", "--gpu", "7", "--", "--help", "-h"]
    args = parsed("--json", "lease", "--priority", "-2", "2GiB", "--", *tail).lease
    assert args.command == tail
    assert (args.priority, args.wait_s, args.gpu) == (-2, 0.0, "auto")
    assert parsed("lease", "1GiB", "--", "-x").lease.command == ["-x"]


def test_global_options_stay_before_the_command():
    args = parsed("--socket", "/tmp/s.sock", "--timeout", "7", "--json", "lease", "1GiB", "--", "true")
    assert (str(args.socket), args.timeout, args.json) == ("/tmp/s.sock", 7.0, True)


@pytest.mark.parametrize("argv", [["lease", "--help"], ["lease", "-h"], ["lease", "4GiB", "--help", "--", "x"]])
def test_lease_help_exits_0_and_shows_every_option_and_the_verbs(capsys, argv):
    with pytest.raises(SystemExit) as stop:
        memwardenctl.parse_args(argv)
    assert stop.value.code == 0
    out = capsys.readouterr().out
    for word in ("--gpu", "--wait", "--holder", "--priority", "--preemptible", "--requeue", "-- CMD",
                 "lease list | release ID | preempt ID", "GB and MB 10^9 and 10^6"):
        assert word in out


def test_lease_verbs_keep_working():
    assert parsed("lease", "list").lease_verb == "list"
    release = parsed("lease", "release", "L3")
    assert (release.lease_verb, release.lease_id) == ("release", "L3")
    req = memwardenctl.request(parsed("lease", "preempt", "L4"))
    assert (req.method, req.params) == ("lease.preempt", {"id": "L4"})
    assert memwardenctl.request(parsed("lease", "list")).method == "lease.list"


@pytest.mark.parametrize("argv, says", [
    (["lease"], "SIZE is missing"),
    (["lease", "--wait", "5s", "--", "true"], "SIZE is missing"),
    (["lease", "4GiB"], "no command given"),
    (["lease", "4GiB", "--"], "no command given"),
    (["lease", "4GiB", "python3", "train.py"], "the command goes after --"),
    (["lease", "4GiB", "extra", "--", "true"], "one SIZE only"),
    (["lease", "4GiB", "--bogus", "--", "true"], "unrecognized option '--bogus'"),
    (["lease", "lots", "--", "true"], "SIZE: expected a size"),
    (["lease", "4", "--", "true"], "SIZE: size 4 has no unit and is under 1 MiB: did you mean 4GiB?"),
    (["lease", "4GiB", "--wait", "forever", "--", "true"], "--wait: expected a duration"),
    (["lease", "4GiB", "--wait", "--", "true"], "--wait: expected one argument"),
    (["lease", "4GiB", "--gpu", "first", "--", "true"], "--gpu must be a GPU index or auto"),
    (["lease", "4GiB", "--priority", "high", "--", "true"], "--priority: invalid int value"),
    (["lease", "release"], "required: ID"),
    (["lease", "preempt", "a", "b"], "unrecognized arguments: b"),
    (["--timeout", "0", "status"], "expected a number of seconds above 0"),
    (["--timeout", "nan", "status"], "expected a number of seconds above 0"),
    (["train", "start"], "start needs the ADAPTER"),
    (["containers", "restart"], "restart needs the container's NAME"),
    (["models", "pin"], "pin needs the model's NAME"),
    (["adapters", "rollback"], "rollback needs the adapter's NAME"),
    (["adapters", "show"], "show needs the adapter's NAME"),
    (["adapters", "list", "alice"], "list takes no NAME"),
    (["containers", "leaks", "web"], "leaks takes no NAME"),
    (["leaks"], "'leaks' was renamed in memwarden 0.2: use 'memwardenctl containers leaks'"),
    (["restart-history"], "'restart-history' was renamed in memwarden 0.2: use 'memwardenctl containers history'"),
    (["adapters", "load", "qwen"], "'load' was renamed in memwarden 0.2: use 'memwardenctl models load'"),
    (["call", "status", "[1]"], "params must be a JSON object"),
    (["call", "status", "{"], "params are not JSON"),
    (["status", "--bogus"], "unrecognized arguments: --bogus"),
    (["nosuchcommand"], "invalid choice"),
])
def test_a_usage_error_exits_2_with_one_line_saying_what_is_wrong(capsys, argv, says):
    err = usage_error(capsys, *argv)
    assert says in err
    assert "Traceback" not in err


def test_lease_main_refuses_bad_words_before_touching_the_socket(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        lease.main(tmp_path / "absent.sock", ["4GiB", "--wait", "5s"])
    assert stop.value.code == 2
    assert "no command given" in capsys.readouterr().err


def test_init_demo_takes_its_pretraining_steps_and_refuses_a_negative_count(capsys):
    assert parsed("model", "init-demo", "base").pretrain_steps is None  # init-demo's own default
    assert parsed("model", "init-demo", "base", "--pretrain-steps", "0").pretrain_steps == 0
    assert "0 or more, got '-3'" in usage_error(capsys, "model", "init-demo", "base", "--pretrain-steps", "-3")
    assert "got 'many'" in usage_error(capsys, "model", "init-demo", "base", "--pretrain-steps", "many")


def test_init_demo_without_the_train_extra_says_how_to_get_it_and_writes_nothing(monkeypatch, tmp_path, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    assert memwardenctl.init_demo(tmp_path / "base", 0) == 1
    err = capsys.readouterr().err
    assert "needs the train extra (no torch)" in err and "memwardenctl setup training" in err
    assert not (tmp_path / "base").exists()

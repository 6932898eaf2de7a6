"""What the new commands print, from fixed inputs: train status and watch lines, the last reload in status,
diagnostics, the config; and their command lines, with usage errors that exit 2."""

from __future__ import annotations

import json
import time

import pytest

from memwarden.cli import memwardenctl, render, train_watch

CURRENT = {"run_id": "r1", "adapter": "alice", "state": "running",
           "last": {"event": "step", "step": 12, "loss": 5.524620056152344, "tokens_per_s": 1234.56},
           "progress": {"phase": "training", "step": 12, "steps": 24, "steps_per_s": 0.5, "eta_s": 24.0}}
STATUS = {"enabled": True, "current": CURRENT, "pending": ["r1", "r2"], "due": [], "versions": [],
          "pending_runs": [{"id": "r1", "adapter": "alice", "state": "running"},
                           {"id": "r2", "adapter": "bob", "state": "queued"}]}


def test_train_status_is_one_line_per_run_with_rounded_numbers_progress_and_eta():
    lines = render.train_status(STATUS).splitlines()
    assert lines[1] == ("run r1 (alice): running, training step 12 of 24 (50%), loss 5.525, 1235 tokens/s, "
                        "ETA 24s")
    assert lines[2] == "run r2 (bob): pending (queued)"
    assert "running:" not in "\n".join(lines)
    idle = render.train_status({**STATUS, "current": None, "pending": [], "pending_runs": []})
    assert "runs: none in progress or pending" in idle


def test_a_waiting_run_shows_how_long_what_holds_the_gpu_and_why():
    waiting = {**STATUS, "waiting_runs": [{"run_id": "r2", "adapter": "bob", "action": "blocked", "waited_s": 1830.0,
                                           "reason": "cannot lease 2.0 GiB on any GPU: ...",
                                           "holders": ["model big:7b 6.0 GiB, pinned"]}]}
    lines = render.train_status(waiting).splitlines()
    assert lines[2] == ("run r2 (bob): blocked: waiting for the GPU past learning.gpu_wait for 30m30s; held by: "
                        "model big:7b 6.0 GiB, pinned")
    assert lines[3] == "  why: cannot lease 2.0 GiB on any GPU: ..."


def test_a_run_before_its_first_step_says_what_it_is_doing():
    starting = {**CURRENT, "last": {"event": "start"}, "progress": {"phase": "dry run", "step": None}}
    assert render.progress_line(starting) == "run r1 (alice): running, start"


def test_watch_snapshots_round_and_the_bar_fits_one_line():
    snap = train_watch.snapshot("r1", "alice", CURRENT, "running")
    assert (snap["percent"], snap["loss"], snap["tokens_per_s"], snap["eta_s"]) == (50.0, 5.525, 1235, 24.0)
    json.dumps(snap)
    assert train_watch.bar(snap) == ("alice [############............]  50% training step 12/24, loss 5.525, "
                                     "ETA 24s")
    assert train_watch.bar(train_watch.snapshot("r1", "alice", None, "queued")) == "alice: queued"


def test_watch_follows_the_run_in_progress_else_the_next_pending_one():
    assert train_watch.pick(STATUS, None) == ("r1", "alice")
    assert train_watch.pick(STATUS, "bob") == ("r2", "bob")
    assert train_watch.pick(STATUS, "carol") is None


def test_watch_passes_over_a_run_that_has_ended_while_its_adapter_is_still_exported():
    publishing = {**STATUS, "current": {**CURRENT, "state": "promoted"},
                  "pending_runs": [{"id": "r3", "adapter": "alice", "state": "queued"}]}
    assert train_watch.pick(publishing, "alice") == ("r3", "alice")
    assert train_watch.pick({**publishing, "pending_runs": []}, None) is None


def test_status_shows_a_refused_reload_and_when():
    base = {"version": "0.2.0", "pid": 1, "uptime_s": 5, "config": None, "state_dir": "/s", "dry_run": False,
            "summary": "ok", "degraded": {}, "active_alerts": [],
            "last_sample": {"at": time.time(), "duration_ms": 1.0, "count": 1, "interval_s": 5}}
    assert "last reload: none since the start" in render.status({**base, "last_reload": None})
    refused = {"at": time.time() - 3, "trigger": "SIGHUP", "reloaded": False,
               "errors": ["/etc/m.toml: at 'host.ram_crit_percent': expected a number, got 'x'"]}
    out = render.status({**base, "last_reload": refused})
    assert "(SIGHUP): REFUSED, the running config is kept: /etc/m.toml: at 'host.ram_crit_percent'" in out
    ok = {"at": time.time(), "trigger": "control socket", "reloaded": True, "changed": ["host.reserve"]}
    assert "reloaded, changed host.reserve" in render.status({**base, "last_reload": ok})


def test_diagnostics_and_config_show_are_readable():
    out = render.diagnostics({"rss_bytes": 50 * 1024**2, "cpu_user_s": 1.25, "cpu_system_s": 0.5, "threads": 4,
                              "open_fds": 12, "clients": 1, "requests_served": 9, "python": "3.11.2",
                              "heavy_modules_loaded": [], "optional_modules_loaded": ["aiohttp"]})
    assert "RSS:" in out and "50.0 MiB" in out and "none loaded (as it should be)" in out and "aiohttp" in out
    shown = render.config_show({"source": "/etc/m.toml", "redacted": True,
                                "config": {"alerts": {"webhook_url": "<redacted>", "hold": 30}}})
    assert shown.splitlines() == ["# /etc/m.toml, secrets redacted", "", "[alerts]",
                                  'webhook_url = "<redacted>"', "hold = 30"]


def test_the_new_command_lines_parse():
    assert memwardenctl.request(memwardenctl.parse_args(["config", "show", "--secrets"])).params == {"secrets": True}
    assert memwardenctl.request(memwardenctl.parse_args(["diagnostics"])).method == "diagnostics"
    for argv in (["config", "check", "x.toml"], ["version"], ["completion", "zsh"], ["train", "watch"]):
        assert memwardenctl.local(memwardenctl.parse_args(argv))
    assert memwardenctl.parse_args(["--json", "train", "watch"]).json is True
    assert memwardenctl.parse_args(["train", "watch", "alice", "--json"]).json is True
    assert memwardenctl.parse_args(["memories", "import", "--progress", "f.jsonl"]).progress is True


@pytest.mark.parametrize("argv", [["config"], ["config", "check"], ["config", "show", "extra"],
                                  ["completion"], ["completion", "fish"], ["version", "now"],
                                  ["diagnostics", "--limit", "3"], ["train", "watch", "a", "b"]])
def test_usage_errors_of_the_new_commands_exit_2_with_one_line(argv, capsys):
    with pytest.raises(SystemExit) as stop:
        memwardenctl.parse_args(argv)
    assert stop.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


RECALLED = {"recall": 0.9, "recall_recalled": 36, "recall_memories": 40, "recall_token_accuracy": 0.954,
            "recall_heldout": 0.75, "recall_heldout_recalled": 30, "recall_heldout_memories": 40,
            "recall_heldout_token_accuracy": 0.912,
            "probe_recall_before_recalled": 18, "probe_recall_before_memories": 20,
            "probe_recall_after_recalled": 17, "probe_recall_after_memories": 20,
            "general_loss_before": 0.5, "general_loss_after": 0.51, "dpo_steps": 40, "preference_heldout": 6,
            "preference_accuracy_before": 0.5, "preference_accuracy_after": 0.8333}


def test_train_status_shows_the_recall_of_each_version():
    version = {"adapter": "alice", "version": 2, "active": True, "ollama_model": None, "created_at": time.time(),
               **RECALLED}
    out = render.train_status({**STATUS, "current": None, "versions": [version]})
    header, row = out.splitlines()[-2:]
    assert "RECALL" in header and "REWORDED" in header and "PROBE" in header and "GENERAL" in header
    assert "PREFERRED" in header and "50%→83% of 6" in row
    assert "36/40 (acc 0.95)" in row and "30/40 (acc 0.91)" in row and "18/20→17/20" in row
    assert "0.500→0.510 (+2.0%)" in row


def test_train_history_shows_recall_and_a_dash_for_runs_without_it():
    base = {"adapter": "alice", "state": "promoted", "trigger": "manual", "created_at": time.time(),
            "memory_ids": 40, "version": 1, "reason": "ok"}
    out = render.runs([{**base, "id": "r2", "eval": {"holdout_loss_before": 2.0, "holdout_loss_after": 1.0,
                                                     **RECALLED}},
                       {**base, "id": "r1", "eval": {"holdout_loss_before": 2.0, "holdout_loss_after": 1.5}}])
    new, old = out.splitlines()[1:3]
    assert "36/40 (acc 0.95)" in new and "30/40 (acc 0.91)" in new and "18/20→17/20" in new
    assert "0.500→0.510 (+2.0%)" in new
    assert "acc" not in old and old.count("→") == 1  # only the holdout column has an arrow
    assert "50%→83% of 6" in new
    assert render.preference_cell({**RECALLED, "dpo_steps": 0}) == "-"  # no DPO stage
    assert render.recall_cell({"recall_memories": 4, "recall_recalled": 0, "recall_token_accuracy": None}) == "0/4"
    assert render.probe_cell({"probe_recall_after_recalled": 1, "probe_recall_after_memories": 2}) == "-→1/2"
    assert render.general_cell({"general_loss_before": None, "general_loss_after": 0.4}) == "-"
    assert render.general_cell({"general_loss_before": 0.0, "general_loss_after": 0.4}) == "0.000→0.400"


def test_train_history_says_where_each_run_ran():
    base = {"adapter": "alice", "state": "promoted", "trigger": "manual", "created_at": time.time(),
            "memory_ids": 40, "version": 1, "reason": "ok", "eval": None}
    out = render.runs([{**base, "id": "r3", "executor": "ray", "node": "3230cdbbcb0010c230d8eac6"},
                       {**base, "id": "r2", "executor": "subprocess", "node": None},
                       {**base, "id": "r1"}])  # a run from before runs recorded it
    lines = out.splitlines()
    header, (ray, local, old) = lines[0], lines[-3:]
    assert "WHERE" in header
    assert "ray@3230cdbbcb00 " in ray and "subprocess" in local and " - " in old


def test_host_shows_the_ram_trend_and_its_forecast():
    assert render.trend(None).startswith("warming up")
    assert render.trend({"verdict": "steady", "scale": None, "slope": 0.0, "exhausted_in": None,
                         "warned": False}) == "steady (no steady growth)"
    line = render.trend({"verdict": "leak", "scale": 3600.0, "slope": 1024 * 1024 * 1024 / 3600,
                         "exhausted_in": 5 * 3600.0, "warned": True})
    assert line == "growing 1.0 GiB/h at the 1h scale; available RAM used up in 5h (warned)"


def test_models_show_the_load_time_marking_estimates():
    row = {"name": "a:latest", "resident": True, "size": 4 * 2**30, "size_measured": True, "load_seconds": 9.25,
           "load_measured": True, "last_used": None, "hits": 3, "pinned": False, "gpu": 0}
    out = render.models([row, {**row, "name": "b:latest", "load_seconds": 2.0, "load_measured": False}])
    lines = out.splitlines()
    assert lines[0].split()[:5] == ["MODEL", "RESIDENT", "SIZE", "LOAD", "LAST"]
    assert "9.2 s" in lines[1] and "~2.0 s" in lines[2]
    assert lines[-1] == "(~ load time estimated from the size until a load is seen)"
    assert "~" not in render.models([row])

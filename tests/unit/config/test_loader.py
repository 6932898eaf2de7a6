import dataclasses
from pathlib import Path

import pytest

from memwarden.config import (
    AlertsConfig,
    Config,
    ConfigError,
    DaemonConfig,
    HostConfig,
    load_config,
    locate_and_load,
    parse_config,
)
from memwarden.config.schema import SECTIONS

ENV = {"STATE_DIRECTORY": "/var/lib/memwarden", "RUNTIME_DIRECTORY": "/run/memwarden"}
UID = 1000


def parse(data, source=None, env=ENV):
    return parse_config(data, source, env, UID)


def problems_of(data, source=None):
    with pytest.raises(ConfigError) as info:
        parse(data, source)
    return info.value


def write(tmp_path, text, name="memwarden.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


# ---- defaults --------------------------------------------------------------------------------------------


def test_empty_config_gives_defaults_with_resolved_paths():
    cfg = parse({})
    assert cfg.source is None
    assert cfg.host == HostConfig()
    assert cfg.alerts == AlertsConfig()
    assert cfg.host.ram_warn_percent == 85.0
    assert cfg.host.reserve == 1024**3
    assert cfg.daemon.sample_interval == 2.0
    assert cfg.daemon.state_dir == Path("/var/lib/memwarden")
    assert cfg.daemon.socket == Path("/run/memwarden/control.sock")


def test_load_config_without_path_uses_embedded_defaults():
    cfg = load_config(None, env=ENV, uid=UID)
    assert cfg.source is None
    assert cfg.host == HostConfig()


def test_absent_optional_file_uses_embedded_defaults(tmp_path):
    cfg = load_config(tmp_path / "nope.toml", must_exist=False, env=ENV, uid=UID)
    assert cfg.source is None
    assert cfg.host == HostConfig()


def test_missing_explicit_file_is_an_error_naming_it(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(missing, must_exist=True, env=ENV, uid=UID)
    assert info.value.source == missing
    assert str(missing) in str(info.value)
    assert "cannot read" in str(info.value)
    assert "No such file" in str(info.value)


def test_directory_instead_of_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path, must_exist=True, env=ENV, uid=UID)


# ---- values ----------------------------------------------------------------------------------------------


def test_file_values_are_parsed_and_typed(tmp_path):
    path = write(tmp_path, """
[daemon]
state_dir = "/srv/mw"
socket = "/srv/mw.sock"
sample_interval = "250ms"
dry_run = true
log_level = "debug"
log_format = "json"
socket_group = "root"

[host]
ram_warn_percent = 70
ram_crit_percent = 90.5
hold = "1m30s"
reserve = "2GiB"
hysteresis_percent = 0

[alerts]
webhook = "https://example.invalid/hook"
exec = "/usr/local/bin/hook"
webhook_retries = 5
renotify_interval = "2h"
""")
    cfg = load_config(path, env=ENV, uid=UID)
    assert cfg.source == path
    assert cfg.daemon.state_dir == Path("/srv/mw")
    assert cfg.daemon.socket == Path("/srv/mw.sock")
    assert cfg.daemon.sample_interval == 0.25
    assert cfg.daemon.dry_run is True
    assert cfg.daemon.log_level == "debug"
    assert cfg.daemon.log_format == "json"
    assert cfg.daemon.socket_group == "root"
    assert cfg.host.ram_warn_percent == 70.0
    assert isinstance(cfg.host.ram_warn_percent, float)
    assert cfg.host.ram_crit_percent == 90.5
    assert cfg.host.hold == 90.0
    assert cfg.host.reserve == 2 * 1024**3
    assert cfg.host.hysteresis_percent == 0.0
    assert cfg.alerts.webhook == "https://example.invalid/hook"
    assert cfg.alerts.exec == Path("/usr/local/bin/hook")
    assert cfg.alerts.webhook_retries == 5
    assert cfg.alerts.renotify_interval == 7200.0
    # Untouched keys keep their defaults.
    assert cfg.host.swap_warn_percent == 50.0


def test_empty_path_strings_mean_default_location():
    cfg = parse({"daemon": {"state_dir": "", "socket": ""}, "alerts": {"exec": "", "webhook": ""}})
    assert cfg.daemon.state_dir == Path("/var/lib/memwarden")
    assert cfg.daemon.socket == Path("/run/memwarden/control.sock")
    assert cfg.alerts.exec is None
    assert cfg.alerts.webhook == ""


# ---- errors ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "key", "value", "fragment"),
    [
        ("host", "ram_warn_percent", "lots", "expected a number"),
        ("host", "ram_warn_percent", True, "expected a number"),
        ("host", "ram_crit_percent", 101, "from 1 to 100"),
        ("host", "ram_warn_percent", 0, "from 1 to 100"),
        ("host", "hysteresis_percent", 60, "from 0 to 50"),
        ("host", "reserve", "lots", "expected a size"),
        ("host", "reserve", -5, "must not be negative"),
        ("host", "hold", "soon", "expected a duration"),
        ("daemon", "sample_interval", "50ms", "at least 0.1s"),
        ("daemon", "dry_run", "yes", "expected true or false"),
        ("daemon", "log_level", "loud", "expected one of 'debug', 'info', 'warning', 'error'"),
        ("daemon", "log_format", 1, "expected one of"),
        ("daemon", "state_dir", "relative/dir", "expected an absolute path"),
        ("daemon", "socket", 5, "expected a path string"),
        ("daemon", "socket_group", "no-such-group-memwarden-test", "no such group"),
        ("daemon", "admin_group", 7, "expected a string"),
        ("alerts", "webhook", "ftp://example.invalid/", "expected an http:// or https:// URL"),
        ("alerts", "webhook", "http://", "expected an http:// or https:// URL"),
        ("alerts", "webhook", 3, "the value is not shown"),
        ("alerts", "webhook_retries", 21, "from 0 to 20"),
        ("alerts", "webhook_retries", 2.5, "expected a whole number"),
        ("alerts", "webhook_retries", False, "expected a whole number"),
        ("alerts", "renotify_interval", "500ms", "at least 1s"),
        ("alerts", "history_retention", "10m", "at least 3600s"),
        ("learning", "ray_address", "127.0.0.1:8265", "expected an http:// or https:// URL"),
        ("learning", "ray_resources", "trainer_gpu", "expected a table such as { trainer_gpu = 1 }"),
        ("learning", "ray_resources", {"trainer_gpu": 0}, "expected a positive amount for resource 'trainer_gpu'"),
        ("learning", "ray_resources", {"trainer_gpu": True}, "expected a positive amount"),
        ("learning", "target_modules", [], "expected a non-empty list of names"),
        ("learning", "target_modules", "q_proj", "expected a non-empty list of names"),
        ("learning", "target_modules", ["q_proj", "mlp.up_proj"], "got 'mlp.up_proj' in the list"),
        ("learning", "target_modules", ["q_proj", 3], "got 3 in the list"),
        ("learning", "target_modules", ["2proj"], "expected plain names"),
        ("proxy", "max_wait", "soon", "expected a duration"),
        ("ollama", "num_parallel", 0, "from 1 to 1024"),
        ("ollama", "max_queue", 2.5, "expected a whole number"),
    ],
)
def test_bad_value_error_names_key_path_and_file(section, key, value, fragment):
    source = Path("/etc/memwarden/test.toml")
    err = problems_of({section: {key: value}}, source)
    assert err.source == source
    assert len(err.problems) == 1, err.problems
    assert err.problems[0].startswith(f"at '{section}.{key}': ")
    assert fragment in err.problems[0]
    assert str(err) == f"{source}: {err.problems[0]}"


def test_error_without_file_says_embedded_defaults():
    err = problems_of({"host": {"ram_warn_percent": "x"}})
    assert str(err).startswith("embedded defaults: at 'host.ram_warn_percent': ")


def test_unknown_key_suggests_the_close_one():
    err = problems_of({"host": {"ram_warn_precent": 80}})
    assert err.problems == ["at 'host.ram_warn_precent': unknown key; did you mean 'ram_warn_percent'?"]


def test_unknown_key_without_a_close_match_lists_known_keys():
    err = problems_of({"alerts": {"zzzzzz": 1}})
    (problem,) = err.problems
    assert problem.startswith("at 'alerts.zzzzzz': unknown key; known keys: ")
    for name in ("exec", "webhook", "webhook_retries", "renotify_interval"):
        assert name in problem


def test_unknown_section_suggests_the_close_one():
    err = problems_of({"hots": {"ram_warn_percent": 80}})
    assert err.problems == ["at 'hots': unknown section; did you mean [host]?"]


def test_unknown_section_without_close_match_lists_sections():
    err = problems_of({"zzzz": {}})
    assert err.problems == [f"at 'zzzz': unknown section; known sections: {', '.join(SECTIONS)}"]
    for name in ("daemon", "host", "alerts"):
        assert name in err.problems[0]


def test_section_that_is_not_a_table():
    err = problems_of({"host": 5})
    assert err.problems == ["at 'host': expected a table [host], got int"]


def test_all_problems_are_gathered_at_once(tmp_path):
    path = write(tmp_path, """
bogus = 1
[daemon]
log_level = "loud"
[host]
ram_warn_precent = 1
reserve = "lots"
[alerts]
webhook_retries = 99
""")
    with pytest.raises(ConfigError) as info:
        load_config(path, env=ENV, uid=UID)
    err = info.value
    assert err.source == path
    paths_named = sorted(p.split("'")[1] for p in err.problems)
    assert paths_named == sorted(
        ["bogus", "daemon.log_level", "host.ram_warn_precent", "host.reserve", "alerts.webhook_retries"])
    lines = str(err).splitlines()
    assert len(lines) == 5
    assert all(line.startswith(f"{path}: at '") for line in lines)


@pytest.mark.parametrize(
    ("warn_key", "crit_key", "warn", "crit"),
    [
        ("ram_warn_percent", "ram_crit_percent", 90, 80),
        ("swap_warn_percent", "swap_crit_percent", 70, 70),
        ("psi_warn_avg10", "psi_crit_avg10", 50, 20),
    ],
)
def test_warn_must_be_below_crit(warn_key, crit_key, warn, crit):
    err = problems_of({"host": {warn_key: warn, crit_key: crit}})
    assert err.problems == [
        f"at 'host.{warn_key}': must be below 'host.{crit_key}' ({warn:g} >= {crit:g})"]


def test_warn_against_default_crit_is_cross_checked():
    err = problems_of({"host": {"ram_warn_percent": 96}})
    assert err.problems == ["at 'host.ram_warn_percent': must be below 'host.ram_crit_percent' (96 >= 95)"]


@pytest.mark.parametrize(("ollama", "learning"), [({"url": ""}, {"ollama_base": "llama3.2:1b"}),
                                                  ({"url": "http://127.0.0.1:11434"}, {})])
def test_augment_by_ollama_needs_a_served_model(ollama, learning):
    err = problems_of({"ollama": ollama, "learning": {"augment": "ollama", **learning}})
    assert err.problems == ["at 'learning.augment': \"ollama\" needs ollama.url and learning.ollama_base (the "
                            "served model that writes the pairs)"]
    ok = parse({"ollama": {"url": "http://127.0.0.1:11434"},
                "learning": {"augment": "ollama", "ollama_base": "llama3.2:1b"}})
    assert ok.learning.augment == "ollama" and parse({}).learning.augment == ""
    assert problems_of({"learning": {"augment": "openai"}}).problems[0].startswith("at 'learning.augment': ")


def test_a_recall_target_without_recall_measured_is_refused_and_zero_turns_it_off():
    err = problems_of({"learning": {"recall_sample": 0}})
    assert err.problems == ["at 'learning.min_recall': 0.9 needs recall measured (learning.recall_sample above 0), "
                            "or no run could be promoted; 0 turns the check off"]
    assert parse({"learning": {"recall_sample": 0, "min_recall": 0}}).learning.min_recall == 0


@pytest.mark.parametrize("key", ["ram_warn_percent", "psi_crit_avg10", "hysteresis_percent"])
def test_nan_threshold_is_rejected(key):
    # TOML allows `nan`; a NaN threshold compares false with everything, so its alert could never fire.
    err = problems_of({"host": {key: float("nan")}})
    assert any(p.startswith(f"at 'host.{key}': ") for p in err.problems), err.problems


def test_infinite_size_is_a_config_error_not_a_crash():
    # TOML allows `inf`; it must surface as a ConfigError naming the key, not an OverflowError.
    err = problems_of({"host": {"reserve": float("inf")}})
    assert err.problems[0].startswith("at 'host.reserve': ")


def test_bad_toml_names_file(tmp_path):
    path = write(tmp_path, "[host\nram_warn_percent = 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env=ENV, uid=UID)
    assert info.value.source == path
    (problem,) = info.value.problems
    assert problem.startswith("not valid TOML: ")
    assert str(info.value).startswith(f"{path}: not valid TOML")


def test_non_utf8_file_names_file_and_byte(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"[daemon]\nlog_level = \"info\" # caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env=ENV, uid=UID)
    (problem,) = info.value.problems
    assert problem.startswith("not UTF-8 text: ")
    assert "at byte 33" in problem
    assert str(path) in str(info.value)


# ---- frozen ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "attr"),
    [
        (Config(), "host"),
        (DaemonConfig(), "dry_run"),
        (HostConfig(), "ram_warn_percent"),
        (AlertsConfig(), "webhook"),
    ],
)
def test_config_objects_are_frozen(obj, attr):
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(obj, attr, getattr(obj, attr))


def test_parsed_config_is_frozen():
    cfg = parse({"host": {"ram_warn_percent": 80}})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.host.ram_warn_percent = 10  # type: ignore[misc]


# ---- path resolution from the environment ----------------------------------------------------------------


def test_paths_from_xdg_when_not_under_systemd():
    cfg = parse_config({}, None, {"XDG_STATE_HOME": "/h/state", "XDG_RUNTIME_DIR": "/run/user/1000"}, 1000)
    assert cfg.daemon.state_dir == Path("/h/state/memwarden")
    assert cfg.daemon.socket == Path("/run/user/1000/memwarden/control.sock")


def test_paths_from_systemd_directories_first_entry():
    env = {"STATE_DIRECTORY": "/var/lib/mw:/var/lib/other", "RUNTIME_DIRECTORY": "/run/mw:/run/x",
           "XDG_STATE_HOME": "/ignored", "XDG_RUNTIME_DIR": "/ignored"}
    cfg = parse_config({}, None, env, 1000)
    assert cfg.daemon.state_dir == Path("/var/lib/mw")
    assert cfg.daemon.socket == Path("/run/mw/control.sock")


def test_paths_fall_back_to_home_and_tmp():
    cfg = parse_config({}, None, {"HOME": "/home/u"}, 1234)
    assert cfg.daemon.state_dir == Path("/home/u/.local/state/memwarden")
    assert cfg.daemon.socket == Path("/tmp/memwarden-1234/control.sock")


def test_root_socket_defaults_to_run():
    cfg = parse_config({}, None, {"HOME": "/root"}, 0)
    assert cfg.daemon.socket == Path("/run/memwarden/control.sock")


def test_configured_paths_beat_environment():
    cfg = parse({"daemon": {"state_dir": "/srv/state", "socket": "/srv/s.sock"}})
    assert cfg.daemon.state_dir == Path("/srv/state")
    assert cfg.daemon.socket == Path("/srv/s.sock")


# ---- locate_and_load -------------------------------------------------------------------------------------


def test_locate_explicit_argument_must_exist(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        locate_and_load(tmp_path / "missing.toml", env=ENV, uid=UID)


def test_locate_explicit_argument_beats_env(tmp_path):
    arg = write(tmp_path, "[host]\nram_warn_percent = 60\n", "arg.toml")
    other = write(tmp_path, "[host]\nram_warn_percent = 70\n", "env.toml")
    cfg = locate_and_load(arg, env={**ENV, "MEMWARDEN_CONFIG": str(other)}, uid=UID)
    assert cfg.source == arg
    assert cfg.host.ram_warn_percent == 60.0


def test_locate_memwarden_config_env(tmp_path):
    path = write(tmp_path, "[host]\nram_warn_percent = 70\n")
    cfg = locate_and_load(None, env={**ENV, "MEMWARDEN_CONFIG": str(path)}, uid=UID)
    assert cfg.source == path
    assert cfg.host.ram_warn_percent == 70.0


def test_locate_memwarden_config_env_must_exist(tmp_path):
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as info:
        locate_and_load(None, env={**ENV, "MEMWARDEN_CONFIG": str(missing)}, uid=UID)
    assert info.value.source == missing


def test_locate_default_user_file_is_optional(tmp_path):
    cfg = locate_and_load(None, env={**ENV, "XDG_CONFIG_HOME": str(tmp_path)}, uid=UID)
    assert cfg.source is None
    assert cfg.host == HostConfig()


def test_locate_default_user_file_is_read_when_present(tmp_path):
    (tmp_path / "memwarden").mkdir()
    path = write(tmp_path / "memwarden", "[alerts]\nwebhook_retries = 0\n")
    cfg = locate_and_load(None, env={**ENV, "XDG_CONFIG_HOME": str(tmp_path)}, uid=UID)
    assert cfg.source == path
    assert cfg.alerts.webhook_retries == 0


# ---- what the fault suite's config fuzzer found ---------------------------------------------------------------


def test_toml_nested_too_deeply_is_a_config_error(tmp_path):
    # tomllib recurses per level: a RecursionError with a traceback instead of "not valid TOML".
    path = write(tmp_path, "x = " + "[" * 3000 + "]" * 3000 + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env=ENV, uid=UID)
    assert info.value.problems == ["not valid TOML: arrays or inline tables nested too deeply"]


@pytest.mark.parametrize("name, shown", [("'", "\"'\""), ("a\nb", '"a\\nb"'), ("a b", '"a b"')])
def test_an_odd_unknown_key_is_quoted_on_one_line(name, shown):
    err = problems_of({"daemon": {name: 1}, name: {}})
    assert err.problems[0].startswith(f"at 'daemon.{shown}': unknown key")
    assert err.problems[1].startswith(f"at '{shown}': unknown section")
    assert all("\n" not in p for p in err.problems)


@pytest.mark.parametrize(("section", "key"), [("host", "reserve"), ("gpu", "reserve"),
                                              ("learning", "lease_size"), ("containers", "idle_leak_threshold")])
def test_a_reserve_with_no_unit_under_a_mib_is_refused_naming_the_key(section, key):
    err = problems_of({section: {key: 512}})
    assert err.problems == [f"at '{section}.{key}': size 512 has no unit and is under 1 MiB: did you mean "
                            "512MiB? (units: GiB = 2^30 bytes, GB = 10^9)"]
    assert getattr(getattr(parse({section: {key: 2 * 1024**2}}), section), key) == 2 * 1024**2


def test_the_config_knows_which_keys_the_file_set_even_at_their_default():
    cfg = parse({"ollama": {"url": "http://127.0.0.1:11434"}, "host": {"hold": "10s"}})
    assert cfg.given == frozenset({"ollama.url", "host.hold"})
    assert parse({}).given == frozenset()

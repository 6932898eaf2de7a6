import os
import shutil
from pathlib import Path

import pytest

from memwarden import paths
from memwarden.control.listen import bind_unix
from memwarden.dirs import UnsafeDirectory


def test_config_candidates_explicit_env_must_exist():
    assert paths.config_candidates({"MEMWARDEN_CONFIG": "/x/y.toml"}, 1000) == (Path("/x/y.toml"), True)
    assert paths.config_candidates({"MEMWARDEN_CONFIG": "/x/y.toml"}, 0) == (Path("/x/y.toml"), True)


def test_config_candidates_root_uses_system_file_optionally():
    assert paths.config_candidates({}, 0) == (Path("/etc/memwarden/memwarden.toml"), False)


def test_config_candidates_systemd_configuration_directory_wins_over_the_users_home():
    env = {"CONFIGURATION_DIRECTORY": "/etc/memwarden", "HOME": "/var/lib/memwarden"}
    assert paths.config_candidates(env, 996) == (Path("/etc/memwarden/memwarden.toml"), False)
    # An explicit MEMWARDEN_CONFIG still takes precedence, as it does everywhere.
    env["MEMWARDEN_CONFIG"] = "/x/y.toml"
    assert paths.config_candidates(env, 996) == (Path("/x/y.toml"), True)


def test_config_candidates_user_prefers_xdg_config_home():
    got = paths.config_candidates({"XDG_CONFIG_HOME": "/cfg", "HOME": "/home/u"}, 1000)
    assert got == (Path("/cfg/memwarden/memwarden.toml"), False)


def test_config_candidates_user_falls_back_to_home_dot_config():
    got = paths.config_candidates({"HOME": "/home/u"}, 1000)
    assert got == (Path("/home/u/.config/memwarden/memwarden.toml"), False)


def test_empty_memwarden_config_is_ignored():
    got = paths.config_candidates({"MEMWARDEN_CONFIG": "", "HOME": "/home/u"}, 1000)
    assert got == (Path("/home/u/.config/memwarden/memwarden.toml"), False)


def test_default_state_dir_from_systemd_takes_first_of_list():
    assert paths.default_state_dir({"STATE_DIRECTORY": "/var/lib/a:/var/lib/b"}) == Path("/var/lib/a")
    assert paths.default_state_dir({"STATE_DIRECTORY": "/var/lib/memwarden",
                                    "XDG_STATE_HOME": "/ignored"}) == Path("/var/lib/memwarden")


def test_default_state_dir_xdg_then_home():
    assert paths.default_state_dir({"XDG_STATE_HOME": "/st", "HOME": "/h"}) == Path("/st/memwarden")
    assert paths.default_state_dir({"HOME": "/h"}) == Path("/h/.local/state/memwarden")


def test_default_socket_resolution_order():
    assert paths.default_socket({"RUNTIME_DIRECTORY": "/run/mw:/run/other", "XDG_RUNTIME_DIR": "/run/user/1"},
                                1000) == Path("/run/mw/control.sock")
    assert paths.default_socket({"XDG_RUNTIME_DIR": "/run/user/1000"}, 1000) == \
        Path("/run/user/1000/memwarden/control.sock")
    assert paths.default_socket({}, 0) == Path("/run/memwarden/control.sock")
    assert paths.default_socket({}, 1234) == Path("/tmp/memwarden-1234/control.sock")


def test_client_socket_explicit_env_wins():
    assert paths.client_socket({"MEMWARDEN_SOCKET": "/s.sock", "XDG_RUNTIME_DIR": "/r"}, 1000) == Path("/s.sock")


def test_client_socket_own_socket_when_it_exists(tmp_path):
    own = tmp_path / "memwarden" / "control.sock"
    own.parent.mkdir()
    own.touch()
    assert paths.client_socket({"XDG_RUNTIME_DIR": str(tmp_path)}, 1000) == own


@pytest.mark.skipif(os.geteuid() != 0, reason="making a directory another user's needs root (chown)")
def test_the_tmp_fallback_made_first_by_another_user_is_refused_not_used():
    uid = 4_242_424  # nobody's: its /tmp/memwarden-UID is free to take over in this test
    sock = paths.default_socket({"HOME": "/nonexistent"}, uid)
    runtime = sock.parent
    assert runtime == Path(f"/tmp/memwarden-{uid}")
    if os.path.lexists(runtime):
        pytest.skip(f"{runtime} exists already")
    runtime.mkdir()
    try:
        runtime.chmod(0o777)
        os.chown(runtime, 65534, 65534)  # made by nobody before the daemon started
        with pytest.raises(UnsafeDirectory, match="is owned by another user"):
            bind_unix(sock)
        assert list(runtime.iterdir()) == []
    finally:
        shutil.rmtree(runtime)

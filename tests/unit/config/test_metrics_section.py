import pytest

from memwarden.config import ConfigError, parse_config
from memwarden.reload import RESTART_KEYS, changed_keys

ENV = {"STATE_DIRECTORY": "/var/lib/memwarden", "RUNTIME_DIRECTORY": "/run/memwarden"}


def parse(data):
    return parse_config(data, None, ENV, 1000)


def test_metrics_are_off_by_default_and_listen_on_loopback():
    cfg = parse({})
    assert cfg.metrics.enabled is False
    assert cfg.metrics.listen == "127.0.0.1:9847"


@pytest.mark.parametrize("listen", ["127.0.0.1:9100", "0.0.0.0:9847", "localhost:9847", "[::1]:9847", "[::]:1"])
def test_good_listen_addresses(listen):
    assert parse({"metrics": {"enabled": True, "listen": listen}}).metrics.listen == listen


@pytest.mark.parametrize("listen", ["9847", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:http",
                                    ":9847", "::1:9847", "[::1:9847", 9847, True])
def test_a_bad_listen_address_names_metrics_listen(listen):
    with pytest.raises(ConfigError) as info:
        parse({"metrics": {"listen": listen}})
    (problem,) = info.value.problems
    assert problem.startswith("at 'metrics.listen': ")
    assert "HOST:PORT" in problem or "string" in problem


def test_unknown_metrics_key_suggests_the_right_one():
    with pytest.raises(ConfigError) as info:
        parse({"metrics": {"enable": True}})
    assert info.value.problems == ["at 'metrics.enable': unknown key; did you mean 'enabled'?"]


def test_a_reload_reports_metrics_keys_as_needing_a_restart():
    old = parse({})
    new = parse({"metrics": {"enabled": True, "listen": "127.0.0.1:9100"}})
    changed = changed_keys(old, new)
    assert changed == ["metrics.enabled", "metrics.listen"]
    assert [k for k in changed if k in RESTART_KEYS] == changed

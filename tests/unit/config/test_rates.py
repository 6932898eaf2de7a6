import pytest

from memwarden.config import ConfigError, parse_config
from memwarden.config.schema import ContainersConfig, docker_url, rate

KiB, MiB = 1 << 10, 1 << 20
ENV = {"STATE_DIRECTORY": "/tmp/memwarden-test-state", "RUNTIME_DIRECTORY": "/tmp/memwarden-test-run"}


@pytest.mark.parametrize(("text", "bps"), [
    ("1MiB/min", MiB / 60),
    ("1MiB/m", MiB / 60),
    ("10MB/h", 10_000_000 / 3600),
    ("10MB/hour", 10_000_000 / 3600),
    ("512KiB/s", 512 * KiB),
    ("512KiB/sec", 512 * KiB),
    ("1GiB/d", (1 << 30) / 86400),
    ("1.5MiB/s", 1.5 * MiB),
    ("100/s", 100.0),
    (" 2 MiB / min ", 2 * MiB / 60),
])
def test_rate_good(text, bps):
    assert rate(text) == pytest.approx(bps)


def test_rate_default_is_one_mebibyte_per_minute():
    assert ContainersConfig().leak_min_rate == pytest.approx(MiB / 3600)


@pytest.mark.parametrize(("value", "message"), [
    ("1MiB", "expected a rate such as '1MiB/min', '10MB/h' or '512KiB/s', got '1MiB'"),
    ("1MiB/week", "expected a rate such as"),
    ("1MiB/", "expected a rate such as"),
    ("1MiB/ms", "expected a rate such as"),
    ("", "expected a rate such as"),
    ("0MiB/s", "rate must be more than 0, got '0MiB/s'"),
    ("0/min", "rate must be more than 0"),
    ("lots/s", "expected a size such as"),
    ("-1MiB/s", "expected a size such as"),
    ("/s", "expected a size such as"),
    (1024, "expected a string, got 1024"),
    (None, "expected a string"),
    (True, "expected a string"),
])
def test_rate_bad(value, message):
    with pytest.raises(ValueError) as excinfo:
        rate(value)
    assert message in str(excinfo.value)


@pytest.mark.parametrize("url", [
    "unix:///var/run/docker.sock",
    "tcp://127.0.0.1:2375",
    "http://docker.local:2375",
    "https://docker.local:2376",
    "ssh://admin@host",
])
def test_docker_url_good(url):
    assert docker_url(url) == url


@pytest.mark.parametrize("url", ["/var/run/docker.sock", "", "npipe:////./pipe/docker_engine", "docker.sock",
                                 "UNIX:///var/run/docker.sock"])
def test_docker_url_bad(url):
    with pytest.raises(ValueError) as excinfo:
        docker_url(url)
    assert str(excinfo.value) == f"expected a Docker URL such as 'unix:///var/run/docker.sock', got {url!r}"


def test_docker_url_not_a_string():
    with pytest.raises(ValueError, match="expected a string"):
        docker_url(2375)


def test_config_rate_and_url_through_the_loader():
    cfg = parse_config({"containers": {"leak_min_rate": "6MiB/h", "docker_url": "tcp://10.0.0.2:2375"}},
                       env=ENV, uid=1000)
    assert cfg.containers.leak_min_rate == pytest.approx(6 * MiB / 3600)
    assert cfg.containers.docker_url == "tcp://10.0.0.2:2375"


def test_config_bad_rate_and_url_name_their_keys():
    with pytest.raises(ConfigError) as excinfo:
        parse_config({"containers": {"leak_min_rate": "fast", "docker_url": "/var/run/docker.sock"}},
                     env=ENV, uid=1000)
    problems = excinfo.value.problems
    assert len(problems) == 2
    assert any(p.startswith("at 'containers.leak_min_rate': expected a rate such as") for p in problems)
    assert any(p.startswith("at 'containers.docker_url': expected a Docker URL") for p in problems)

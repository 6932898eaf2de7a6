"""The one rule for secrets (config/redact.py): what of a URL is shown, in config.show and in every log line."""

import json

import pytest
import structlog

from memwarden.config import parse_config
from memwarden.config import redact as redact_mod
from memwarden.config.redact import fragments, redact_config, redact_text, redact_url, remember, secret_keys
from memwarden.logs import configure_logging, get_logger

ENV = {"STATE_DIRECTORY": "/var/lib/memwarden", "RUNTIME_DIRECTORY": "/run/memwarden"}


@pytest.fixture(autouse=True)
def forget():
    yield
    remember([])


@pytest.mark.parametrize(("url", "shown"), [
    ("http://127.0.0.1:11434", "http://127.0.0.1:11434"),
    ("http://127.0.0.1:11434/api/", "http://127.0.0.1:11434/api/"),
    ("https://user:pw@example.com/x", "https://***@example.com/x"),
    ("https://token@example.com/x", "https://***@example.com/x"),
    ("https://example.com/x?token=abc&v=2", "https://example.com/x?token=***&v=***"),
    ("https://example.com/x?abc", "https://example.com/x?***"),
    ("https://example.com/x#frag", "https://example.com/x#***"),
    ("tcp://u:p@10.0.0.1:2376", "tcp://***@10.0.0.1:2376"),
    ("unix:///var/run/docker.sock", "unix:///var/run/docker.sock"),
    ("", ""),
])
def test_a_url_loses_its_credentials(url, shown):
    assert redact_url(url) == shown


@pytest.mark.parametrize(("url", "shown"), [
    ("https://hooks.slack.com/services/T0/B0/XYZ", "https://hooks.slack.com/***"),
    ("https://u:p@example.com:8443/hook?k=v", "https://***@example.com:8443/***"),
    ("https://example.com", "https://example.com"),
    ("https://example.com/", "https://example.com/"),
    ("not a url", "***"),
    ("http://[::1", "***"),
    ("", ""),
])
def test_a_secret_key_shows_only_its_origin(url, shown):
    assert redact_url(url, secret=True) == shown


def test_config_show_redacts_secret_keys_and_every_url():
    cfg = parse_config({"alerts": {"webhook": "https://u:pw@hooks.example.com/services/T0K3N?sig=abcd"},
                        "ollama": {"url": "http://admin:adminpw@127.0.0.1:11434"},
                        "containers": {"ollama_urls": ["http://x:ypassword@10.0.0.2:11434/?key=k3y"]}},
                       env=ENV, uid=1000)
    from dataclasses import asdict

    data = {k: v for k, v in asdict(cfg).items() if k not in ("source", "given")}
    shown = redact_config(data, secret_keys())
    text = json.dumps(shown, default=str)
    for secret in ("pw@", "T0K3N", "abcd", "adminpw", "ypassword", "k3y"):
        assert secret not in text
    assert shown["alerts"]["webhook"] == "https://***@hooks.example.com/***"
    assert shown["ollama"]["url"] == "http://***@127.0.0.1:11434"
    assert shown["containers"]["ollama_urls"] == ["http://***@10.0.0.2:11434/?key=***"]
    assert "alerts.webhook" in secret_keys()


def test_free_text_loses_urls_credentials_and_remembered_pieces():
    remember(["https://hooks.example.com/services/T0K3NPATH"])
    text = ("POST https://bob:s3cr3t@other.example/x?token=zzz failed; "
            "ClientResponseError(url='/services/T0K3NPATH')")
    out = redact_text(text)
    assert "s3cr3t" not in out and "zzz" not in out and "T0K3NPATH" not in out
    assert "https://***@other.example/x?token=***" in out


def test_short_pieces_are_left_to_the_url_rule():
    assert all(len(p.strip("/")) >= redact_mod.MIN_FRAGMENT for p in fragments("http://a:b@h/x?t=1", True))
    remember(["http://a:b@host/x"])
    assert redact_text("a b x") == "a b x"


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_every_log_line_is_scrubbed_tracebacks_included(fmt, capsys):
    remember(["https://hooks.example.com/services/T0K3NPATH?sig=S1GNATURE"])
    configure_logging("debug", fmt)
    try:
        log = get_logger()
        log.warning("delivery", url="https://hooks.example.com/services/T0K3NPATH?sig=S1GNATURE",
                    errors=["at 'x': http://u:passw0rd@h/"])
        try:
            raise ValueError("bad answer from https://hooks.example.com/services/T0K3NPATH")
        except ValueError:
            log.exception("it failed")
    finally:
        structlog.reset_defaults()
        configure_logging("info", "console")
    err = capsys.readouterr().err
    assert "delivery" in err and "it failed" in err and "ValueError" in err
    for secret in ("T0K3NPATH", "S1GNATURE", "passw0rd"):
        assert secret not in err, err


def test_the_schema_never_quotes_a_bad_secret_value():
    from memwarden.config import ConfigError

    with pytest.raises(ConfigError) as info:
        parse_config({"alerts": {"webhook": "htp://u:pw@hooks.example.com/T0K3N"}}, env=ENV, uid=1000)
    (problem,) = info.value.problems
    assert problem.startswith("at 'alerts.webhook': ") and "T0K3N" not in problem and "pw" not in problem


def test_journal_fields_carry_no_secret():
    sent: list[dict] = []
    remember(["https://hooks.example.com/services/T0K3NPATH"])
    configure_logging("info", "journal", journal_send=lambda **f: sent.append(f))
    try:
        get_logger().error("failed", error="POST /services/T0K3NPATH: 500", url="http://u:pw@h/")
    finally:
        configure_logging("info", "console")
    assert sent and not any("T0K3NPATH" in v or "pw@" in v for f in sent for v in f.values())


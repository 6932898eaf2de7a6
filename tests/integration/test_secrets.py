"""The webhook URL's credentials (user:password@, a token in the path, a token in the query) reach no reader of
config.show and no log line: not another user's, not an admin's, not the journal's when deliveries fail.
Only root, asking with `secrets: true`, sees the value."""

from __future__ import annotations

import json

import pytest
from aiohttp import web

from support.ollama_double.manager import wait_until
from support.other_user import GROUP, ctl_as_other, open_to_others

SECRETS = ("hookuser", "hunter2pass", "T0K3NINPATH", "querysecret")


def webhook_url(port: int) -> str:
    return f"http://hookuser:hunter2pass@127.0.0.1:{port}/services/T0K3NINPATH?token=querysecret"


@pytest.fixture
async def failing_receiver():
    """A webhook receiver that answers every POST with 500."""
    posts: list[str] = []

    async def handle(request):
        posts.append(request.path)
        return web.Response(status=500, text="receiver down")

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield site._server.sockets[0].getsockname()[1], posts
    await runner.cleanup()


def leaked(text: str) -> list[str]:
    return [s for s in SECRETS if s in text]


async def test_config_show_and_the_log_never_carry_the_webhook_secrets(make_daemon, failing_receiver):
    import asyncio

    port, posts = failing_receiver
    url = webhook_url(port)
    d = make_daemon(config={
        "daemon": {"socket_group": GROUP},
        # Any machine running this uses more than 1 % of its RAM: an alert is raised and delivered at once.
        "host": {"ram_warn_percent": 1, "ram_crit_percent": 100, "hold": "0s"},
        "alerts": {"webhook": url, "webhook_retries": 0}})
    open_to_others(d.workdir)
    d.start()
    loop = asyncio.get_running_loop()

    shown = await loop.run_in_executor(None, ctl_as_other, d.socket_path, "--json", "call", "config.show")
    assert shown.returncode == 0, shown.stderr
    assert leaked(shown.stdout) == []
    reply = json.loads(shown.stdout)
    assert reply["redacted"] is True
    assert reply["config"]["alerts"]["webhook"] == f"http://***@127.0.0.1:{port}/***"

    asked = await loop.run_in_executor(None, ctl_as_other, d.socket_path, "call", "config.show",
                                       '{"secrets": true}')
    assert asked.returncode != 0 and "only root" in asked.stderr and leaked(asked.stdout + asked.stderr) == []

    as_admin = d.call("config.show")  # root, without asking: redacted like everyone's
    assert leaked(json.dumps(as_admin)) == []
    assert d.call("config.show", {"secrets": True})["config"]["alerts"]["webhook"] == url

    await loop.run_in_executor(None, lambda: wait_until(
        lambda: any(e.get("event") == "webhook delivery failed" for e in d.log_events()), 30,
        message="a failed webhook delivery in the log"))
    assert posts  # the receiver was reached, with the path as configured
    failed = next(e for e in d.log_events() if e.get("event") == "webhook delivery failed")
    assert failed["url"] == f"http://***@127.0.0.1:{port}/***" and failed["error"] == "HTTP 500"

    # A reload whose webhook is malformed: the refusal quotes nothing of it, in the reply or the log.
    bad = url.replace("http://", "htp://")
    d.write_config({**d.sections, "alerts": {"webhook": bad}})
    refused = d.call("config.reload")
    assert refused["reloaded"] is False and leaked(json.dumps(refused)) == []

    assert leaked(d.log()) == [], [line for line in d.log().splitlines() if leaked(line)]

from dataclasses import replace

from memwarden.config.schema import ProxyConfig
from memwarden.proxy.bodies import BUFFERED_BODIES
from memwarden.proxy.server import OllamaProxy

MiB = 1024 * 1024


def test_a_reload_applies_the_new_cap_and_budget_to_the_next_request():
    proxy = OllamaProxy(object(), ProxyConfig(), "http://127.0.0.1:9")  # type: ignore[arg-type]
    assert proxy.budget.limit == BUFFERED_BODIES * 32 * MiB
    proxy.cfg = replace(ProxyConfig(), max_request_body=MiB, hold_timeout=5.0)
    assert proxy.cfg.max_request_body == MiB
    assert proxy.budget.limit == BUFFERED_BODIES * MiB
    assert proxy.admitter.cfg.hold_timeout == 5.0

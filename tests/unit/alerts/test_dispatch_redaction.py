"""An alert goes to every socket user (status, alerts), the webhook, the exec hook and the history: a URL's
credentials quoted in it are redacted before it goes anywhere."""

from types import MappingProxyType

from memwarden.alerts.dispatch import AlertDispatcher
from memwarden.alerts.history import AlertHistory
from memwarden.alerts.model import Condition
from memwarden.config.holds import holds
from memwarden.config.schema import AlertsConfig
from memwarden.state.db import open_state


class Inbox:
    def __init__(self):
        self.events = []

    def submit(self, event):
        self.events.append(event)


def test_credentials_in_an_alert_reach_no_reader(tmp_path):
    db = open_state(tmp_path / "state")
    try:
        d = AlertDispatcher(AlertHistory(db), AlertsConfig(hold=holds({"probe": 0})))  # raised at once
        inbox = Inbox()
        d.sinks = [inbox]
        url = "http://admin:s3cretpw@10.0.0.5:11434/?key=k3y"
        d.update("probe", [Condition("probe.degraded", "ollama", "warning", f"Ollama at {url} unreachable",
                                     MappingProxyType({"probe": "ollama", "error": f"{url}: refused", "n": 1}))],
                 1000.0)
        (active,) = d.active_list()
        shown = repr([active, inbox.events, d.history.recent(10)])
        assert "s3cretpw" not in shown and "k3y" not in shown
        assert active["message"] == "Ollama at http://***@10.0.0.5:11434/?key=*** unreachable"
        assert active["fields"]["n"] == 1
    finally:
        db.close()

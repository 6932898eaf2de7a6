"""`memwardenctl adapters`, `adapters show NAME` and `adapters versions NAME` as a person reads them."""

from memwarden.cli import render

ALICE = {"name": "alice", "profile": "alice", "memories": 40, "unconsolidated": 3, "unconsolidated_importance": 21,
         "threshold": 150, "active_version": 2, "ollama_model": "memwarden/alice:v2", "versions": 2,
         "last_run": {"id": "r2", "state": "promoted", "created_at": 1.0, "finished_at": 2.0}}
V1 = {"adapter": "alice", "version": 1, "run_id": "r1", "path": "/s/alice/v1", "created_at": 1.0, "active": False,
      "ollama_model": None}
V2 = {**V1, "version": 2, "run_id": "r2", "path": "/s/alice/v2", "active": True, "ollama_model": "memwarden/alice:v2"}


def test_the_list_has_one_row_per_adapter_with_what_is_left_to_learn():
    out = render.adapters([ALICE, {**ALICE, "name": "bob", "profile": "bob", "active_version": None,
                                   "ollama_model": None, "versions": 0, "last_run": None}]).splitlines()
    assert out[0].split() == ["ADAPTER", "PROFILE", "MEMORIES", "TO", "LEARN", "ACTIVE", "VERSIONS", "OLLAMA", "MODEL",
                              "LAST", "RUN"]
    assert out[1].split() == ["alice", "alice", "40", "21/150", "v2", "2", "memwarden/alice:v2", "promoted"]
    assert out[2].split() == ["bob", "bob", "40", "21/150", "-", "0", "-", "-"]


def test_show_says_what_is_active_and_lists_versions():
    out = render.adapter({**ALICE, "version_list": [V1, V2], "runs": []})
    assert out.splitlines()[0] == ("adapter alice (profile alice): 40 memories, 3 not learned yet (importance 21 of "
                                   "150); active version v2, in Ollama as memwarden/alice:v2")
    rows = [line.split()[:2] for line in render.versions([V1, V2]).splitlines()[1:]]
    assert rows == [["v1", "r1"], ["v2", "yes"]]
    assert "VERSION" in out and "r1" in out

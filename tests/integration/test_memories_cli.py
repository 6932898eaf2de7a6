"""`memwardenctl memories …` against a real daemon: all-or-nothing imports in chunks, add/list/show, isolation."""

from __future__ import annotations

import json
import subprocess

import pytest

from support.daemon import BIN, toml

ROUTES = """
[[learning.routes]]
adapter = "dreams"
kinds = ["dream"]

[[learning.routes]]
adapter = "family"
profiles = ["alice", "bob"]
kinds = ["conversation"]

[[learning.routes]]
adapter = "alice-journal"
profiles = ["alice"]
kinds = ["journal"]
"""


def ctl(daemon, *args, stdin=None):
    return subprocess.run([BIN / "memwardenctl", "--socket", daemon.socket_path, *map(str, args)],
                          capture_output=True, text=True, timeout=120, input=stdin)


def ctl_json(daemon, *args):
    out = ctl(daemon, "--json", *args)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def record(i=0, **kw):
    base = {"profile": "alice", "kind": "journal", "content": f"memory {i}: " + "words " * 15, "importance": 5}
    base.update(kw)
    return json.dumps(base)


@pytest.fixture
def daemon(make_daemon):
    d = make_daemon(config={"learning": {"importance_threshold": 20}})
    d.write_config(toml(d.sections) + ROUTES)
    return d.start()


def write(daemon, name, lines):
    path = daemon.workdir / name
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_bad_line_is_reported_with_its_number_and_nothing_is_imported(daemon):
    path = write(daemon, "bad.jsonl", [record(1), record(2, importance=11), "", "{oops", record(5, profile=None)])
    out = ctl(daemon, "memories", "import", path)
    assert out.returncode == 1
    lines = out.stderr.splitlines()
    assert lines[0] == "line 2: importance must be a whole number 1–10, got 11"
    assert lines[1].startswith("line 4: not valid JSON")
    assert lines[2] == "line 5: profile is missing"
    assert lines[3] == f"memwardenctl: {path}: 3 bad lines; nothing imported"
    assert ctl_json(daemon, "memories", "count")["total"] == 0


def test_a_large_file_goes_in_chunks_and_a_late_bad_line_keeps_its_number(daemon):
    lines = [record(i, profile=("alice", "bob", "carol")[i % 3]) for i in range(15_000)]
    assert sum(len(x) + 1 for x in lines) > 2 * 1024 * 1024  # more than two requests' worth
    good = write(daemon, "good.jsonl", lines)
    lines[14_320] = record(14_320, kind="")
    bad = write(daemon, "bad.jsonl", lines)

    out = ctl(daemon, "memories", "import", bad)
    assert out.returncode == 1
    assert out.stderr.startswith("line 14321: kind must be a non-empty string")
    assert ctl_json(daemon, "memories", "count")["total"] == 0

    out = ctl(daemon, "memories", "import", good)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("imported 15000 memories (")
    counts = ctl_json(daemon, "memories", "count")
    assert counts["total"] == 15_000 and counts["unconsolidated"] == 15_000
    assert ctl_json(daemon, "memories", "list", "--limit", "1")["memories"][0]["content"].startswith("memory 14999:")


def test_an_unreadable_file_or_line_is_refused(daemon):
    missing = ctl(daemon, "memories", "import", daemon.workdir / "absent.jsonl")
    assert missing.returncode == 2 and "No such file" in missing.stderr
    path = daemon.workdir / "latin1.jsonl"
    latin1 = '{"profile": "alice", "kind": "journal", "content": "café", "importance": 5}'.encode("latin-1")
    path.write_bytes(record(1).encode() + b"\n" + latin1 + b"\n")
    out = ctl(daemon, "memories", "import", path)
    assert out.returncode == 1
    assert out.stderr.startswith("line 2: not valid UTF-8")
    huge = write(daemon, "huge.jsonl", [record(1), record(2, content="x" * (1024 * 1024 + 10)), record(3)])
    out = ctl(daemon, "memories", "import", huge)
    assert out.returncode == 1
    assert out.stderr.startswith("line 2: 1,048,") and "too long to send" in out.stderr
    assert ctl_json(daemon, "memories", "count")["total"] == 0


def test_import_from_stdin_and_json_output(daemon):
    out = ctl(daemon, "--json", "memories", "import", "-", stdin=record(1) + "\n" + record(2) + "\n")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert len(result.pop("import_id")) == 32  # a fresh id per import, committed with it
    assert result == {"imported": 2, "by_adapter": {"alice-journal": 2}, "already_imported": False}


def test_add_list_show(daemon):
    out = ctl(daemon, "memories", "add", "--profile", "bob", "--kind", "conversation", "--importance", "7",
              "--response", "I'm fine, thanks", "How are you?")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "added memory 1 (bob, conversation, importance 7) → adapter family@bob"
    out = ctl(daemon, "memories", "add", "--profile", "bob", "--kind", "dream", "--importance", "3",
              "--created-at", "2026-01-01T00:00:00Z", "-", stdin="a dream of flying\n")
    assert out.returncode == 0, out.stderr

    listing = ctl(daemon, "memories", "list")
    assert listing.returncode == 0
    assert listing.stdout.splitlines()[0].split() == ["ID", "PROFILE", "KIND", "ADAPTER", "IMP", "CREATED",
                                                      "CONSOLIDATED", "BY", "SUPERSEDED", "BY", "CONTENT"]
    assert "How are you?" in listing.stdout and "dreams@bob" in listing.stdout
    data = ctl_json(daemon, "memories", "list", "--kind", "dream")
    assert data["total"] == 1 and data["memories"][0]["created_at"] == 1767225600.0

    shown = ctl(daemon, "memories", "show", "1")
    assert shown.returncode == 0
    assert "adapter:      family@bob" in shown.stdout
    assert shown.stdout.rstrip().endswith("content:\nHow are you?\n\nresponse:\nI'm fine, thanks")
    missing = ctl(daemon, "memories", "show", "99")
    assert missing.returncode == 1 and missing.stderr.strip() == "memwardenctl: no memory with id 99"

    bad = ctl(daemon, "memories", "add", "--profile", "bob", "--kind", "dream", "--importance", "11", "x")
    assert bad.returncode == 1
    assert "importance must be a whole number 1–10, got 11" in bad.stderr


def test_cues_preferences_and_an_update_through_the_import_command(daemon):
    bad = write(daemon, "prefs.jsonl", [
        record(1, cue="my godson Zeno"),
        record(2, kind="preference", content=None, prompt="Tea or coffee?", chosen="Tea.", rejected="Coffee."),
        record(3, kind="preference", prompt="Tea or coffee?", chosen="Tea."),
        record(4, kind="preference", prompt="Tea?", chosen="Tea.", rejected=" tea. "),
        record(5, tags="family")])
    out = ctl(daemon, "memories", "import", bad)
    assert out.returncode == 1
    assert out.stderr.splitlines()[:3] == [
        "line 3: rejected is missing (a preference carries prompt, chosen, rejected)",
        "line 4: chosen and rejected are the same text: nothing to prefer",
        "line 5: tags must be a list of at most 16 strings, got 'family'"]
    assert ctl_json(daemon, "memories", "count")["total"] == 0

    first = write(daemon, "first.jsonl", [
        record(1, content="Zeno lives in Tbilisi.", cue="my godson Zeno", tags=["family"],
               created_at="2026-01-01T00:00:00"),
        record(2, kind="preference", content=None, prompt="Tea or coffee?", chosen="Tea.", rejected="Coffee.")])
    assert ctl(daemon, "memories", "import", first).returncode == 0
    update = write(daemon, "update.jsonl", [record(3, content="Zeno moved to Batumi.", cue="My godson  Zeno",
                                                   created_at="2026-02-01T00:00:00")])
    assert ctl(daemon, "memories", "import", update).returncode == 0

    rows = {m["content"]: m for m in ctl_json(daemon, "memories", "list")["memories"]}
    old, new, pref = rows["Zeno lives in Tbilisi."], rows["Zeno moved to Batumi."], rows["Tea or coffee?"]
    assert old["superseded_by"] == new["id"] and new["superseded_by"] is None and old["tags"] == ["family"]
    assert (pref["prompt"], pref["chosen"], pref["rejected"]) == ("Tea or coffee?", "Tea.", "Coffee.")
    listing = ctl(daemon, "memories", "list").stdout.splitlines()
    column = listing[0].index("SUPERSEDED BY")
    assert next(x for x in listing if "Tbilisi" in x)[column:].split()[0] == str(new["id"])
    shown = ctl(daemon, "memories", "show", str(old["id"])).stdout
    assert "cue:" in shown and "my godson Zeno" in shown and f"by memory {new['id']}" in shown
    counts = ctl_json(daemon, "memories", "count")
    assert counts["superseded"] == 1 and counts["unconsolidated"] == 2
    assert "1 superseded by newer ones" in ctl(daemon, "memories", "count").stdout


def test_profiles_stay_isolated_whatever_the_routes_say(daemon):
    lines = [record(i, profile=p, kind=k) for i, (p, k) in enumerate(
        (p, k) for p in ("alice", "bob", "carol") for k in ("dream", "conversation", "journal", "reflection"))]
    assert ctl(daemon, "memories", "import", write(daemon, "m.jsonl", lines)).returncode == 0
    groups = ctl_json(daemon, "memories", "count")["groups"]
    profiles_of: dict[str, set[str]] = {}
    for g in groups:
        profiles_of.setdefault(g["adapter"], set()).add(g["profile"])
    assert all(len(ps) == 1 for ps in profiles_of.values()), profiles_of
    assert profiles_of == {
        "dreams@alice": {"alice"}, "dreams@bob": {"bob"}, "dreams@carol": {"carol"},
        "family@alice": {"alice"}, "family@bob": {"bob"}, "alice-journal": {"alice"},
        "alice": {"alice"}, "bob": {"bob"}, "carol": {"carol"}}
    only = ctl_json(daemon, "memories", "list", "--adapter", "family@bob")
    assert {m["profile"] for m in only["memories"]} == {"bob"} and only["total"] == 1


def test_count_and_the_trigger_view(daemon):
    lines = [record(i, profile="bob", kind="reflection", importance=8) for i in range(3)]
    lines += [record(9, profile="carol", kind="reflection", importance=4)]
    assert ctl(daemon, "memories", "import", write(daemon, "m.jsonl", lines)).returncode == 0
    out = ctl(daemon, "memories", "count")
    assert out.returncode == 0
    assert "4 memories, 4 not consolidated yet" in out.stdout
    assert any(row.split()[:5] == ["bob", "bob", "3", "24", "/"] for row in out.stdout.splitlines())
    due = {a["adapter"]: a for a in ctl_json(daemon, "call", "learning.due")["adapters"]}
    assert due["bob"]["due"] and due["bob"]["reason"] == "due" and due["bob"]["starts_at"] is not None
    assert due["carol"]["reason"] == "below_threshold" and due["carol"]["shortfall"] == 16

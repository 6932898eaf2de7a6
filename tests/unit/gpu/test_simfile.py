import fcntl
import json
import os
import subprocess

import pytest

from memwarden.gpu import simfile
from memwarden.gpu.simfile import SimFileError

GiB = 1024**3


@pytest.fixture
def sim(tmp_path):
    path = tmp_path / "gpus.json"
    simfile.create(path, [{"index": 0, "name": "Sim 12G", "total_bytes": 12 * GiB},
                          {"index": 1, "name": "Sim 24G", "total_bytes": 24 * GiB, "temperature_c": 55}])
    return path


def write(path, data) -> None:
    path.write_text(data if isinstance(data, str) else json.dumps(data))


# ---- round trips ----------------------------------------------------------------------------------------------


def test_create_then_read(sim):
    data = simfile.read(sim)
    assert data == {"gpus": [
        {"index": 0, "name": "Sim 12G", "total_bytes": 12 * GiB, "processes": []},
        {"index": 1, "name": "Sim 24G", "total_bytes": 24 * GiB, "temperature_c": 55, "processes": []},
    ]}


def test_create_replaces_an_existing_valid_file(sim):
    simfile.book(sim, 0, 4242, GiB)
    simfile.create(sim, [{"index": 3, "total_bytes": GiB}])
    assert simfile.read(sim) == {"gpus": [{"index": 3, "total_bytes": GiB, "processes": []}]}


def test_create_validates_before_writing(tmp_path):
    path = tmp_path / "gpus.json"
    with pytest.raises(SimFileError, match=r"gpus\[0\]\.total_bytes"):
        simfile.create(path, [{"index": 0, "total_bytes": 0}])
    assert not path.exists()


def test_create_overwrites_a_corrupt_file(tmp_path):
    """create writes a *fresh* file: whatever was there before (say a half-written file) must not matter."""
    path = tmp_path / "gpus.json"
    write(path, "{not json")
    simfile.create(path, [{"index": 0, "total_bytes": GiB}])
    assert simfile.read(path)["gpus"][0]["total_bytes"] == GiB


def test_book_adds_replaces_and_removes(sim):
    simfile.book(sim, 0, 100, 2 * GiB)
    simfile.book(sim, 0, 200, 1 * GiB)
    simfile.book(sim, 1, 100, 3 * GiB)
    simfile.book(sim, 0, 100, 5 * GiB)  # replaces pid 100's booking on GPU 0
    gpus = simfile.read(sim)["gpus"]
    assert gpus[0]["processes"] == [{"pid": 200, "used_bytes": 1 * GiB}, {"pid": 100, "used_bytes": 5 * GiB}]
    assert gpus[1]["processes"] == [{"pid": 100, "used_bytes": 3 * GiB}]
    simfile.book(sim, 0, 200, 0)  # zero bytes: no booking
    assert simfile.read(sim)["gpus"][0]["processes"] == [{"pid": 100, "used_bytes": 5 * GiB}]


def test_book_unknown_gpu_names_file_and_index(sim):
    with pytest.raises(SimFileError) as err:
        simfile.book(sim, 7, 100, GiB)
    assert str(sim) in str(err.value)
    assert "no GPU with index 7" in str(err.value)


def test_unbook_removes_pid_from_every_gpu_and_keeps_others(sim):
    simfile.book(sim, 0, 100, GiB)
    simfile.book(sim, 1, 100, GiB)
    simfile.book(sim, 1, 300, GiB)
    simfile.unbook(sim, 100)
    gpus = simfile.read(sim)["gpus"]
    assert gpus[0]["processes"] == []
    assert gpus[1]["processes"] == [{"pid": 300, "used_bytes": GiB}]


def test_edit_writes_changes_back_in_place(sim):
    inode = sim.stat().st_ino
    with simfile.edit(sim) as data:
        data["gpus"][0]["temperature_c"] = 81.5
        data["gpus"][1]["utilization_percent"] = 40
    gpus = simfile.read(sim)["gpus"]
    assert gpus[0]["temperature_c"] == 81.5
    assert gpus[1]["utilization_percent"] == 40
    assert sim.stat().st_ino == inode  # rewritten in place: a reader's lock is on the same inode
    simfile.book(sim, 0, 1, GiB)
    assert sim.stat().st_ino == inode


def test_edit_of_a_shorter_document_leaves_no_trailing_bytes(sim):
    with simfile.edit(sim) as data:
        data["gpus"] = data["gpus"][:1]
    assert json.loads(sim.read_bytes()) == simfile.read(sim)
    assert len(simfile.read(sim)["gpus"]) == 1


def test_edit_holds_an_exclusive_lock_until_written(sim):
    with simfile.edit(sim) as data, open(sim, "rb") as other:
        data["gpus"][0]["temperature_c"] = 70
        with pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_SH | fcntl.LOCK_NB)
    with open(sim, "rb") as other:
        fcntl.flock(other, fcntl.LOCK_SH | fcntl.LOCK_NB)  # released after the write
        assert json.loads(other.read())["gpus"][0]["temperature_c"] == 70


def test_read_takes_a_shared_lock(sim, monkeypatch):
    calls = []
    real = fcntl.flock

    def spy(f, op):
        calls.append(op)
        return real(f, op)

    monkeypatch.setattr(simfile.fcntl, "flock", spy)
    simfile.read(sim)
    assert calls == [fcntl.LOCK_SH]


def test_read_is_not_blocked_by_another_reader(sim):
    with open(sim, "rb") as other:
        fcntl.flock(other, fcntl.LOCK_SH)
        assert simfile.read(sim)["gpus"][0]["index"] == 0


# ---- errors name the file and the field -------------------------------------------------------------------


def test_missing_file(tmp_path):
    path = tmp_path / "nope.json"
    with pytest.raises(SimFileError, match=r"nope\.json: does not exist"):
        simfile.read(path)


def test_invalid_json_names_the_file(tmp_path):
    path = tmp_path / "bad.json"
    write(path, "{")
    with pytest.raises(SimFileError, match=r"bad\.json: not valid JSON"):
        simfile.read(path)


def test_writer_on_invalid_json_raises_sim_file_error_naming_the_file(tmp_path):
    path = tmp_path / "bad.json"
    write(path, "{")
    with pytest.raises(SimFileError, match=r"bad\.json"):
        simfile.book(path, 0, 1, GiB)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ([], '"gpus" list'),
        ({"gpus": {}}, '"gpus" list'),
        ({"gpus": [1]}, r"gpus\[0\] is not an object"),
        ({"gpus": [{"index": -1, "total_bytes": 1}]}, r"gpus\[0\]\.index"),
        ({"gpus": [{"index": True, "total_bytes": 1}]}, r"gpus\[0\]\.index"),
        ({"gpus": [{"index": 0, "total_bytes": 1}, {"index": 0, "total_bytes": 1}]}, r"gpus\[1\]\.index"),
        ({"gpus": [{"index": 0, "total_bytes": 0}]}, r"gpus\[0\]\.total_bytes"),
        ({"gpus": [{"index": 0, "total_bytes": 1.5}]}, r"gpus\[0\]\.total_bytes"),
        ({"gpus": [{"index": 0}]}, r"gpus\[0\]\.total_bytes"),
        ({"gpus": [{"index": 0, "total_bytes": 1, "processes": {}}]}, r"gpus\[0\]\.processes must be a list"),
        ({"gpus": [{"index": 0, "total_bytes": 1, "processes": [{"pid": 1}]}]}, r"gpus\[0\]\.processes\[0\]"),
        ({"gpus": [{"index": 0, "total_bytes": 1, "processes": [{"pid": 1, "used_bytes": 1},
                                                                 {"pid": "2", "used_bytes": 1}]}]},
         r"gpus\[0\]\.processes\[1\]"),
        ({"gpus": [{"index": 0, "total_bytes": 1, "processes": [{"pid": 1, "used_bytes": -1}]}]},
         r"gpus\[0\]\.processes\[0\]"),
        ({"gpus": [{"index": 0, "total_bytes": 1, "temperature_c": "hot"}]}, r"gpus\[0\]\.temperature_c"),
        ({"gpus": [{"index": 0, "total_bytes": 1, "utilization_percent": []}]}, r"gpus\[0\]\.utilization_percent"),
    ],
)
def test_validation_error_names_file_and_field(tmp_path, data, field):
    path = tmp_path / "sim.json"
    write(path, data)
    with pytest.raises(SimFileError, match=r"sim\.json: .*" + field):
        simfile.read(path)
    with pytest.raises(SimFileError, match=r"sim\.json: .*" + field):
        simfile.unbook(path, 1)


def test_validate_accepts_null_temperature_and_fills_processes():
    data = simfile.validate({"gpus": [{"index": 2, "total_bytes": 5, "temperature_c": None}]})
    assert data["gpus"][0]["processes"] == []


# ---- pid_alive ---------------------------------------------------------------------------------------------------


def test_pid_alive_for_this_process():
    assert simfile.pid_alive(os.getpid()) is True


def test_pid_alive_false_for_a_reaped_process():
    proc = subprocess.Popen(["true"])
    proc.wait()
    assert simfile.pid_alive(proc.pid) is False


def test_pid_alive_false_for_a_zombie():
    proc = subprocess.Popen(["true"])
    try:
        # Wait until it has exited but leave it unreaped: a zombie.
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        os.kill(proc.pid, 0)  # a zombie still answers signal 0 ...
        assert simfile.pid_alive(proc.pid) is False  # ... but holds no memory
    finally:
        proc.wait()


def test_pid_alive_true_for_a_live_child():
    proc = subprocess.Popen(["sleep", "60"])
    try:
        assert simfile.pid_alive(proc.pid) is True
    finally:
        proc.kill()
        proc.wait()

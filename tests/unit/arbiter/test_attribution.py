import pytest

from memwarden.arbiter.attribution import locate, runner_model_path
from memwarden.snapshots import Gpu, GpuProcess, GpuSnapshot

GiB = 1024**3
BLOB_A = "/usr/share/ollama/.ollama/models/blobs/sha256-aaaa"
BLOB_B = "/usr/share/ollama/.ollama/models/blobs/sha256-bbbb"
BLOB_C = "/usr/share/ollama/.ollama/models/blobs/sha256-cccc"


@pytest.fixture
def proc_root(tmp_path):
    return tmp_path


def add_proc(root, pid: int, *argv: str) -> None:
    (root / str(pid)).mkdir()
    (root / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")


def gpu(index: int, *pids: int) -> Gpu:
    return Gpu(index, f"G{index}", 24 * GiB, 0, processes=tuple(GpuProcess(p, GiB) for p in pids))


def test_model_path_from_separate_argument(proc_root):
    add_proc(proc_root, 10, "/usr/bin/ollama", "runner", "--model", BLOB_A, "--ctx-size", "8192", "--port", "1")
    assert runner_model_path(10, proc_root) == BLOB_A


def test_model_path_from_equals_form(proc_root):
    add_proc(proc_root, 11, "/usr/bin/ollama", "runner", f"--model={BLOB_B}", "--port", "1")
    assert runner_model_path(11, proc_root) == BLOB_B


def test_model_path_keeps_spaces_and_equals_inside_the_path(proc_root):
    add_proc(proc_root, 12, "ollama", "runner", "--model=/models dir/a=b")
    assert runner_model_path(12, proc_root) == "/models dir/a=b"


@pytest.mark.parametrize(
    "argv",
    [("ollama", "serve"), ("ollama", "runner", "--model"), ("python", "--modelx", BLOB_A), ("ollama", "--mode", "x")],
    ids=["no-flag", "flag-last", "other-flag", "prefix-only"],
)
def test_no_model_path(proc_root, argv):
    add_proc(proc_root, 13, *argv)
    assert runner_model_path(13, proc_root) is None


def test_missing_or_empty_process(proc_root):
    assert runner_model_path(99, proc_root) is None
    (proc_root / "14").mkdir()
    (proc_root / "14" / "cmdline").write_bytes(b"")  # a kernel thread or a zombie
    assert runner_model_path(14, proc_root) is None


def test_locate_maps_gpu_processes_to_models(proc_root):
    add_proc(proc_root, 100, "ollama", "runner", "--model", BLOB_A)
    add_proc(proc_root, 101, "ollama", "runner", f"--model={BLOB_A}")  # a second runner of the same model
    add_proc(proc_root, 200, "ollama", "runner", "--model", BLOB_B)
    add_proc(proc_root, 300, "python3", "train.py")
    add_proc(proc_root, 400, "ollama", "runner", "--model", "/elsewhere/sha256-unknown")
    snap = GpuSnapshot("sim", (gpu(0, 100, 300, 101), gpu(1, 200, 400, 555),
                               Gpu(2, "G2", GiB, 0, processes=None)), 0.0)
    blobs = {"a:latest": BLOB_A, "b:7b": BLOB_B, "c:latest": BLOB_C}
    assert locate(snap, blobs, proc_root) == {"a:latest": (0, (100, 101)), "b:7b": (1, (200,))}


def test_locate_with_nothing_known(proc_root):
    add_proc(proc_root, 100, "ollama", "runner", "--model", BLOB_A)
    assert locate(GpuSnapshot("sim", (gpu(0, 100),), 0.0), {}, proc_root) == {}
    assert locate(GpuSnapshot("none", (), 0.0), {"a": BLOB_A}, proc_root) == {}

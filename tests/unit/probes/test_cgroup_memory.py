from pathlib import Path

import pytest

from memwarden.probes.cgroup_memory import CgroupMemory, cgroup_dir, read_memory

MiB = 1 << 20
PID = 4242
CID = "abc123"

V1_PROC = f"""12:pids:/docker/{CID}
11:cpu,cpuacct:/docker/{CID}
4:memory:/docker/{CID}
1:name=systemd:/docker/{CID}
0::/system.slice/containerd.service
"""
V2_PROC = f"0::/system.slice/docker-{CID}.scope\n"


def write_proc(proc: Path, pid: int, content: str) -> None:
    (proc / str(pid)).mkdir(parents=True, exist_ok=True)
    (proc / str(pid) / "cgroup").write_text(content)


def write_files(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (directory / name).write_text(content)
    return directory


@pytest.fixture
def roots(tmp_path):
    return tmp_path / "proc", tmp_path / "cgroup"


# ---- cgroup_dir --------------------------------------------------------------------------------------------

def test_cgroup_dir_v1_memory_controller(roots):
    proc, cg = roots
    write_proc(proc, PID, V1_PROC)
    expected = write_files(cg / "memory" / "docker" / CID, {"memory.usage_in_bytes": "1\n"})
    assert cgroup_dir(PID, proc, cg) == expected


def test_cgroup_dir_v2_unified(roots):
    proc, cg = roots
    write_proc(proc, PID, V2_PROC)
    expected = write_files(cg / "system.slice" / f"docker-{CID}.scope", {"memory.current": "1\n"})
    assert cgroup_dir(PID, proc, cg) == expected


def test_cgroup_dir_hybrid_uses_the_unified_mount(roots):
    proc, cg = roots
    write_proc(proc, PID, f"5:cpu:/docker/{CID}\n0::/docker/{CID}\n")
    expected = write_files(cg / "unified" / "docker" / CID, {"memory.current": "1\n"})
    assert cgroup_dir(PID, proc, cg) == expected


def test_cgroup_dir_v1_line_without_its_directory_falls_back_to_v2(roots):
    proc, cg = roots
    write_proc(proc, PID, f"4:memory:/docker/{CID}\n0::/docker/{CID}\n")
    expected = write_files(cg / "docker" / CID, {"memory.current": "1\n"})
    assert cgroup_dir(PID, proc, cg) == expected


def test_cgroup_dir_v1_combined_controllers(roots):
    proc, cg = roots
    write_proc(proc, PID, f"3:memory,hugetlb:/docker/{CID}\n")
    expected = write_files(cg / "memory" / "docker" / CID, {"memory.usage_in_bytes": "1\n"})
    assert cgroup_dir(PID, proc, cg) == expected


def test_cgroup_dir_v2_directory_without_memory_current_is_not_found(roots):
    proc, cg = roots
    write_proc(proc, PID, V2_PROC)
    (cg / "system.slice" / f"docker-{CID}.scope").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=str(PID)):
        cgroup_dir(PID, proc, cg)


def test_cgroup_dir_nothing_mounted_is_not_found(roots):
    proc, cg = roots
    write_proc(proc, PID, V1_PROC)
    cg.mkdir()
    with pytest.raises(FileNotFoundError, match="no memory cgroup"):
        cgroup_dir(PID, proc, cg)


def test_cgroup_dir_missing_process(roots):
    proc, cg = roots
    proc.mkdir()
    with pytest.raises(OSError):
        cgroup_dir(PID, proc, cg)


# ---- read_memory -------------------------------------------------------------------------------------------

V1_STAT = f"""cache {300 * MiB}
rss {90 * MiB}
inactive_file {50 * MiB}
hierarchical_memory_limit 9223372036854771712
total_cache {300 * MiB}
total_rss {700 * MiB}
total_inactive_file {200 * MiB}
total_active_file {100 * MiB}
"""

V2_STAT = f"""anon {600 * MiB}
file {350 * MiB}
kernel_stack 65536
active_file {150 * MiB}
inactive_file {250 * MiB}
"""


def test_read_memory_v1(tmp_path):
    d = write_files(tmp_path / "v1", {"memory.usage_in_bytes": f"{1000 * MiB}\n", "memory.stat": V1_STAT})
    assert read_memory(d) == CgroupMemory(usage=1000 * MiB, working_set=800 * MiB, rss=700 * MiB, version=1)


def test_read_memory_v1_without_hierarchical_totals(tmp_path):
    stat = f"cache {300 * MiB}\nrss {90 * MiB}\ninactive_file {50 * MiB}\n"
    d = write_files(tmp_path / "v1", {"memory.usage_in_bytes": f"{400 * MiB}\n", "memory.stat": stat})
    m = read_memory(d)
    assert (m.working_set, m.rss, m.version) == (350 * MiB, 90 * MiB, 1)


def test_read_memory_v2(tmp_path):
    d = write_files(tmp_path / "v2", {"memory.current": f"{1000 * MiB}\n", "memory.stat": V2_STAT})
    assert read_memory(d) == CgroupMemory(usage=1000 * MiB, working_set=750 * MiB, rss=600 * MiB, version=2)


def test_read_memory_v2_without_anon_or_inactive(tmp_path):
    d = write_files(tmp_path / "v2", {"memory.current": "4096\n", "memory.stat": "file 0\n"})
    assert read_memory(d) == CgroupMemory(usage=4096, working_set=4096, rss=None, version=2)


def test_read_memory_v2_preferred_when_both_kinds_of_file_exist(tmp_path):
    d = write_files(tmp_path / "both", {"memory.current": "2000\n", "memory.usage_in_bytes": "9999\n",
                                        "memory.stat": "inactive_file 500\nanon 1500\n"})
    m = read_memory(d)
    assert (m.usage, m.working_set, m.version) == (2000, 1500, 2)


@pytest.mark.parametrize(("usage_file", "stat"), [
    ("memory.current", f"inactive_file {2 * MiB}\n"),
    ("memory.usage_in_bytes", f"total_inactive_file {2 * MiB}\n"),
])
def test_working_set_never_negative(tmp_path, usage_file, stat):
    d = write_files(tmp_path / "x", {usage_file: f"{MiB}\n", "memory.stat": stat})
    m = read_memory(d)
    assert m.usage == MiB
    assert m.working_set == 0


def test_read_memory_ignores_malformed_stat_lines(tmp_path):
    stat = "inactive_file notanumber\nweird\n\nanon 10\n"
    d = write_files(tmp_path / "v2", {"memory.current": "100\n", "memory.stat": stat})
    m = read_memory(d)
    assert (m.working_set, m.rss) == (100, 10)


def test_read_memory_of_a_vanished_cgroup_raises_oserror(tmp_path):
    with pytest.raises(OSError):
        read_memory(tmp_path / "gone")

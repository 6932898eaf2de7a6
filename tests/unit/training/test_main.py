import platform
import subprocess
import sys

import pytest

from memwarden.malloc import M_MMAP_THRESHOLD, M_TRIM_THRESHOLD
from memwarden.training.__main__ import (
    keep_freed_memory,
    leave_out_bitsandbytes,
    torch_threads,
)


def test_a_cpu_run_leaves_one_core_to_serving_and_the_daemon():
    assert torch_threads(None, "cpu", {}, cpus=8) == 7
    assert torch_threads(None, "cpu", {}, cpus=1) == 1


def test_the_job_spec_and_an_operators_omp_num_threads_decide_before_the_default():
    assert torch_threads(3, "cpu", {}, cpus=8) == 3
    assert torch_threads(None, "cpu", {"OMP_NUM_THREADS": "4"}, cpus=8) is None  # torch reads it itself


def test_a_gpu_run_keeps_torchs_default():
    assert torch_threads(None, "cuda", {}, cpus=8) is None
    assert torch_threads(None, "cuda:1", {}, cpus=8) is None


def test_a_job_that_quantizes_nothing_is_run_as_if_bitsandbytes_were_not_installed():
    modules: dict = {}
    leave_out_bitsandbytes("lora", modules)
    assert modules == {"bitsandbytes": None}
    full: dict = {}
    leave_out_bitsandbytes("full", full)
    assert full == {"bitsandbytes": None}


def test_a_qlora_job_keeps_bitsandbytes():
    modules: dict = {}
    leave_out_bitsandbytes("qlora", modules)
    assert modules == {}


FAULTS = """
import resource, sys
from memwarden.training.__main__ import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
bytearray(40 * 2**20)  # the first: faulted in either way
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    bytearray(40 * 2**20)  # zero-filled: every page touched
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt's parameters are glibc's")
def test_memory_a_step_frees_is_kept_for_the_next_instead_of_faulted_in_again():
    def faults(mode: str) -> int:
        proc = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return int(proc.stdout)

    pages = 40 * 2**20 // 4096
    assert faults("default") >= 4 * pages  # each block given back when freed and faulted in again
    assert faults("keep") < pages


def test_the_thresholds_are_set_through_mallopt_and_a_libc_without_it_is_left_alone():
    calls = []

    class Libc:
        def mallopt(self, param: int, value: int) -> int:
            calls.append((param, value))
            return 1

    assert keep_freed_memory(Libc())
    assert calls == [(M_MMAP_THRESHOLD, 64 * 2**20), (M_TRIM_THRESHOLD, 256 * 2**20)]
    assert not keep_freed_memory(object())

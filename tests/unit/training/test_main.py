from memwarden.training.__main__ import leave_out_bitsandbytes, torch_threads


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

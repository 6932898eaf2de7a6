from memwarden.policies.placement import (
    GpuBudget,
    Held,
    Plan,
    Refusal,
    Resident,
    available,
    gpu_budgets,
    holders_on,
    model_budget,
    plan_lease,
)
from memwarden.snapshots import Gpu, GpuProcess

GiB = 1024**3
MiB = 1024**2


def gpu(index: int = 0, total: int = 24 * GiB, used: int = 0, name: str | None = None,
        processes: tuple[GpuProcess, ...] | None = None) -> Gpu:
    return Gpu(index, name or f"Test {index}", total, used, processes=processes)


def held(lease_id: str = "L1", gpu_index: int = 0, size: int = 4 * GiB, outstanding: int | None = None,
         holder: str = "trainer", pids: tuple[int, ...] = ()) -> Held:
    return Held(lease_id, holder, gpu_index, size, size if outstanding is None else outstanding, pids)


# ---- available --------------------------------------------------------------------------------------------


def test_available_subtracts_reserve_and_outstanding_leases_on_this_gpu_only():
    g = gpu(0, total=24 * GiB, used=14 * GiB)  # 10 GiB free
    leases = [held("here", 0, size=5 * GiB, outstanding=3 * GiB), held("there", 1, size=5 * GiB)]
    assert available(g, leases, reserve=1 * GiB) == 6 * GiB


def test_available_can_go_negative_when_promises_exceed_free_memory():
    g = gpu(0, total=8 * GiB, used=7 * GiB)
    assert available(g, [held("a", 0, outstanding=2 * GiB)], reserve=512 * MiB) < 0


# ---- plan_lease: where and what to evict ------------------------------------------------------------------


def test_gpu_with_room_is_chosen_without_eviction():
    gpus = [gpu(0, used=23 * GiB), gpu(1, used=2 * GiB)]
    residents = [Resident("big:latest", 20 * GiB, gpu=0)]
    plan = plan_lease(8 * GiB, gpus, residents, [], reserve=512 * MiB)
    assert isinstance(plan, Plan)
    assert plan.gpu == 1
    assert plan.evict == ()
    assert plan.evicted_bytes == 0
    assert plan.available_now == 22 * GiB - 512 * MiB
    assert plan.available_after == plan.available_now


def test_gpu_needing_the_fewest_evicted_bytes_wins():
    gpus = [gpu(0, used=20 * GiB), gpu(1, used=18 * GiB)]  # 4 GiB and 6 GiB free
    residents = [Resident("a:latest", 8 * GiB, gpu=0), Resident("b:latest", 4 * GiB, gpu=1)]
    plan = plan_lease(10 * GiB, gpus, residents, [], reserve=0)
    assert isinstance(plan, Plan)
    assert (plan.gpu, plan.evict, plan.evicted_bytes) == (1, ("b:latest",), 4 * GiB)
    assert plan.available_now == 6 * GiB
    assert plan.available_after == 10 * GiB


def test_equal_bytes_prefers_fewer_models_then_lower_index():
    gpus = [gpu(0, used=24 * GiB), gpu(1, used=24 * GiB)]
    residents = [Resident("s1", 3 * GiB, gpu=0), Resident("s2", 3 * GiB, gpu=0), Resident("one", 6 * GiB, gpu=1)]
    plan = plan_lease(6 * GiB, gpus, residents, [], reserve=0)
    assert isinstance(plan, Plan)
    assert (plan.gpu, plan.evict) == (1, ("one",))

    tie = [Resident("x", 6 * GiB, gpu=1), Resident("y", 6 * GiB, gpu=0)]
    plan = plan_lease(6 * GiB, gpus, tie, [], reserve=0)
    assert isinstance(plan, Plan)
    assert (plan.gpu, plan.evict) == (0, ("y",))


def test_eviction_follows_the_given_order_and_stops_once_it_fits():
    g = gpu(0, total=16 * GiB, used=16 * GiB)
    residents = [Resident("third", 4 * GiB, gpu=0), Resident("first", 4 * GiB, gpu=0),
                 Resident("second", 4 * GiB, gpu=0), Resident("fourth", 4 * GiB, gpu=0)]
    plan = plan_lease(7 * GiB, [g], residents, [], reserve=0)
    assert isinstance(plan, Plan)
    assert plan.evict == ("third", "first")
    assert plan.evicted_bytes == 8 * GiB
    assert plan.available_after == 8 * GiB


def test_a_model_whose_room_the_later_larger_victims_already_make_stays_loaded():
    g = gpu(0, total=16 * GiB, used=16 * GiB)
    residents = [Resident("small", 2 * GiB, gpu=0), Resident("big", 8 * GiB, gpu=0), Resident("kept", 6 * GiB, gpu=0)]
    plan = plan_lease(7 * GiB, [g], residents, [], reserve=0)
    assert isinstance(plan, Plan)
    assert plan.evict == ("big",) and plan.evicted_bytes == 8 * GiB and plan.available_after == 8 * GiB
    two = plan_lease(9 * GiB, [g], residents, [], reserve=0)  # now the small one is needed beside the big one
    assert isinstance(two, Plan) and two.evict == ("small", "big")


def test_pinned_models_are_never_evicted():
    g = gpu(0, total=16 * GiB, used=16 * GiB)
    residents = [Resident("pinned", 10 * GiB, gpu=0, pinned=True), Resident("small", 6 * GiB, gpu=0)]
    plan = plan_lease(4 * GiB, [g], residents, [], reserve=0)
    assert isinstance(plan, Plan)
    assert plan.evict == ("small",)

    refusal = plan_lease(8 * GiB, [g], residents, [], reserve=0)
    assert isinstance(refusal, Refusal)
    assert "model pinned 10.0 GiB, pinned" in refusal.reason


def test_residents_on_another_gpu_are_not_evicted_but_unplaced_ones_may_be():
    g0 = gpu(0, total=16 * GiB, used=16 * GiB)
    elsewhere = [Resident("on-gpu1", 12 * GiB, gpu=1)]
    assert isinstance(plan_lease(4 * GiB, [g0], elsewhere, [], reserve=0), Refusal)

    unplaced = [Resident("on-gpu1", 12 * GiB, gpu=1), Resident("somewhere", 5 * GiB, gpu=None)]
    plan = plan_lease(4 * GiB, [g0], unplaced, [], reserve=0)
    assert isinstance(plan, Plan)
    assert plan.evict == ("somewhere",)


def test_explicit_gpu_is_used_even_when_another_has_room():
    gpus = [gpu(0, used=24 * GiB), gpu(1, used=0)]
    residents = [Resident("m", 10 * GiB, gpu=0)]
    plan = plan_lease(8 * GiB, gpus, residents, [], reserve=0, gpu=0)
    assert isinstance(plan, Plan)
    assert (plan.gpu, plan.evict) == (0, ("m",))


def test_reserve_and_outstanding_leases_shrink_what_fits():
    g = gpu(0, total=24 * GiB, used=14 * GiB)  # 10 GiB free
    leases = [held("L1", 0, size=6 * GiB, outstanding=3 * GiB), held("L9", 1, size=20 * GiB)]
    fits = plan_lease(6 * GiB, [g], [], leases, reserve=1 * GiB)
    assert isinstance(fits, Plan)
    assert fits.available_now == 6 * GiB
    assert isinstance(plan_lease(6 * GiB + 1, [g], [], leases, reserve=1 * GiB), Refusal)
    # Without the outstanding lease the same request fits.
    assert isinstance(plan_lease(6 * GiB + 1, [g], [], [], reserve=1 * GiB), Plan)


# ---- refusals -------------------------------------------------------------------------------------------


def test_refusal_names_models_leases_and_unknown_pids_on_each_gpu():
    g0 = gpu(0, total=24 * GiB, used=24 * GiB, name="Card A", processes=(
        GpuProcess(100, 10 * GiB, "ollama"),  # the runner of llama: accounted for by the resident
        GpuProcess(200, 6 * GiB, "trainer"),  # the lease's process
        GpuProcess(300, 2 * GiB, "python3"),  # nobody's
    ))
    g1 = gpu(1, total=12 * GiB, used=12 * GiB, name="Card B", processes=(GpuProcess(400, None, None),))
    residents = [Resident("llama:latest", 10 * GiB, gpu=0, pinned=True, runner_pids=(100,))]
    leases = [held("abc123", 0, size=6 * GiB, outstanding=0, holder="finetune", pids=(200,))]
    refusal = plan_lease(8 * GiB, [g0, g1], residents, leases, reserve=1 * GiB)
    assert isinstance(refusal, Refusal)
    reason = refusal.reason
    assert reason.startswith("cannot lease 8.0 GiB on any GPU: ")
    assert "GPU 0 (Card A) has 0 B free of 23.0 GiB usable after the 1.0 GiB reserve" in reason
    assert "GPU 1 (Card B) has 0 B free of 11.0 GiB usable after the 1.0 GiB reserve" in reason
    assert reason.endswith("; wait for it (--wait), or free what holds it (pinned models are never evicted)")
    assert "model llama:latest 10.0 GiB, pinned" in reason
    assert "lease abc123 (finetune) 6.0 GiB" in reason
    assert "pid 300 python3 2.0 GiB" in reason
    assert "pid 400 ?" in reason
    assert "pid 100" not in reason and "pid 200" not in reason
    assert refusal.holders == ("model llama:latest 10.0 GiB, pinned", "lease abc123 (finetune) 6.0 GiB",
                               "pid 300 python3 2.0 GiB", "pid 400 ?")


def test_refusal_on_an_explicit_gpu_says_which_and_that_nothing_it_can_name_holds_it():
    gpus = [gpu(0, total=8 * GiB, used=8 * GiB, processes=()), gpu(1, used=0)]
    refusal = plan_lease(4 * GiB, gpus, [], [], reserve=0, gpu=0)
    assert isinstance(refusal, Refusal)
    assert refusal.reason.startswith("cannot lease 4.0 GiB on GPU 0: ")
    assert "GPU 1" not in refusal.reason
    assert "held by: nothing memwarden can name (a process NVML does not list?)" in refusal.reason
    assert refusal.holders == ()


def test_a_lease_larger_than_the_gpu_says_so_not_who_holds_it():
    g = gpu(0, total=12 * GiB, used=512 * MiB, processes=())
    refusal = plan_lease(20 * GiB, [g], [], [], reserve=512 * MiB)
    assert refusal == Refusal("20.0 GiB is more than GPU 0's 12.0 GiB (total): ask for at most 11.5 GiB (the total "
                              "less the 512.0 MiB gpu.reserve)", (), never=True)


def test_a_lease_larger_than_every_gpu_names_each_total():
    gpus = [gpu(0, total=12 * GiB), gpu(1, total=8 * GiB)]
    refusal = plan_lease(20 * GiB, gpus, [], [], reserve=0)
    assert isinstance(refusal, Refusal)
    assert refusal.reason.startswith("20.0 GiB is more than every GPU's total (GPU 0 12.0 GiB, GPU 1 8.0 GiB): "
                                     "ask for at most 12.0 GiB")


def test_a_lease_too_big_for_one_gpu_but_blocked_on_the_other_names_both():
    gpus = [gpu(0, total=24 * GiB, used=24 * GiB, processes=()), gpu(1, total=8 * GiB)]
    refusal = plan_lease(12 * GiB, gpus, [], [], reserve=0)
    assert isinstance(refusal, Refusal)
    assert "GPU 1 (Test 1) has only 8.0 GiB in all" in refusal.reason
    assert "GPU 0 (Test 0) has 0 B free of 24.0 GiB usable" in refusal.reason


def test_no_gpus_is_refused():
    refusal = plan_lease(1 * GiB, [], [], [], reserve=0)
    assert isinstance(refusal, Refusal)
    assert "no GPU is visible" in refusal.reason
    assert refusal.holders == ()


def test_unknown_gpu_index_is_refused_listing_the_gpus():
    refusal = plan_lease(1 * GiB, [gpu(0), gpu(1)], [], [], reserve=0, gpu=3)
    assert isinstance(refusal, Refusal)
    assert refusal.reason == "there is no GPU 3; GPUs: 0, 1"


# ---- holders_on ----------------------------------------------------------------------------------------------


def test_holders_on_lists_largest_first_and_skips_other_gpus():
    g = gpu(0, processes=(GpuProcess(7, 1 * GiB, None),))
    residents = [Resident("small", 2 * GiB, gpu=0), Resident("other", 9 * GiB, gpu=1),
                 Resident("anywhere", 3 * GiB, gpu=None)]
    leases = [held("big", 0, size=5 * GiB), held("far", 1, size=7 * GiB)]
    assert holders_on(g, residents, leases) == [
        "lease big (trainer) 5.0 GiB", "model anywhere 3.0 GiB", "model small 2.0 GiB", "pid 7 1.0 GiB"]


def test_holders_on_unknown_process_list_lists_only_models_and_leases():
    g = gpu(0, processes=None)
    assert holders_on(g, [Resident("m", 1 * GiB, gpu=0)], []) == ["model m 1.0 GiB"]


# ---- the GPU view: leasable bytes and model budget per GPU ---------------------------------------------------

def test_each_gpu_budget_counts_only_its_own_leases_outstanding_for_leasing_and_in_full_for_models():
    gpus = [gpu(0, total=24 * GiB, used=10 * GiB), gpu(1, total=12 * GiB, used=GiB)]
    leases = [held("L1", 0, size=8 * GiB, outstanding=2 * GiB), held("L2", 1, size=4 * GiB)]
    assert gpu_budgets(gpus, leases, GiB) == (
        GpuBudget(0, 24 * GiB - 10 * GiB - GiB - 2 * GiB, 24 * GiB - GiB - 8 * GiB),
        GpuBudget(1, 12 * GiB - GiB - GiB - 4 * GiB, 12 * GiB - GiB - 4 * GiB))


def test_budgets_never_go_below_zero():
    [view] = gpu_budgets([gpu(0, total=8 * GiB, used=8 * GiB)], [held("L1", 0, size=16 * GiB)], GiB)
    assert view == GpuBudget(0, 0, 0)
    assert model_budget(gpu(0, total=8 * GiB), 9 * GiB, 0) == 0

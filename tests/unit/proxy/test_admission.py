import asyncio
import dataclasses
import json
import time

import pytest

from memwarden.arbiter.errors import ArbiterError
from memwarden.config.schema import ProxyConfig
from memwarden.ollama.client import OllamaError
from memwarden.proxy.admission import RETRY_AFTER_S, Admission, Admitter, ModelRequest, read_request
from memwarden.proxy.bodies import Refusal


def body(**fields) -> bytes:
    return json.dumps(fields).encode()


@pytest.mark.parametrize(
    ("given", "stored"),
    [(None, None), (300, "300s"), ("10m", "600s"), (-1, "-1m"), ("-1m", "-1m"), (0.5, "500ms")],
)
def test_a_keep_alive_ollama_accepts_is_read_in_one_spelling(given, stored):
    req = read_request("/api/generate", body(model="llama3", prompt="hi", keep_alive=given))
    assert req == ModelRequest("llama3:latest", stored, unload=False, refused=None)


@pytest.mark.parametrize("given", ["garbage", "5", "", True, [1], {"m": 1}, "10000000000h"])
def test_a_keep_alive_ollama_refuses_marks_the_request_refused_and_keeps_nothing(given):
    req = read_request("/api/chat", body(model="m:1b", messages=[], keep_alive=given))
    assert req.refused is not None and "keep_alive" in req.refused
    assert req.keep_alive is None and req.model == "m:1b"


@pytest.mark.parametrize("raw", [b"", b"{", b"[1]", b'"m"', b'{"model": 7}', b'{"prompt": "x"}',
                                 b'{"model": "m", "keep_alive": NaN}', b'{"model": "m", "keep_alive": Infinity}',
                                 b"[" * 100_000])
def test_a_body_ollama_would_refuse_is_refused_without_a_model_or_keep_alive(raw):
    req = read_request("/api/generate", raw)
    assert req.refused is not None and req.keep_alive is None


@pytest.mark.parametrize(
    ("path", "fields", "unload"),
    [("/api/generate", {"prompt": "", "keep_alive": 0}, True),
     ("/api/generate", {"keep_alive": "0s"}, True),
     ("/api/chat", {"messages": [], "keep_alive": "0m"}, True),
     ("/api/generate", {"prompt": "hi", "keep_alive": 0}, False),
     ("/api/generate", {"prompt": ""}, False),
     ("/api/embed", {"input": "x", "keep_alive": 0}, False)],  # an embedding loads the model: room is needed
)
def test_an_unload_is_an_empty_generate_or_chat_with_keep_alive_zero(path, fields, unload):
    assert read_request(path, body(model="m", **fields)).unload is unload


class NoArbiter:
    """Any use fails the test: a request Ollama will refuse must not reach the scheduler."""

    def __getattr__(self, name):
        raise AssertionError(f"the arbiter was asked for {name}")


@pytest.mark.parametrize("req", [ModelRequest(None, refused="invalid JSON"),
                                 ModelRequest("m:latest", refused="keep_alive: time: invalid duration"),
                                 ModelRequest("m:latest", "0s", unload=True)])
async def test_refused_requests_and_unloads_are_forwarded_without_touching_the_scheduler(req):
    assert await Admitter(NoArbiter(), ProxyConfig()).admit(req) == Admission()


class Arbiter:
    def __init__(self, installed: set[str]):
        self.installed = installed
        self.asked: list[tuple] = []

    def resident(self, name: str) -> bool:
        return False

    async def installed_size(self, name: str) -> int | None:
        return 1 if name in self.installed else None

    async def ensure(self, name, keep_alive=None, load=True):
        self.asked.append((name, keep_alive, load))
        return {"model": name}


async def test_an_uninstalled_model_is_forwarded_for_ollamas_404_and_never_reaches_ensure():
    arbiter = Arbiter({"real:latest"})
    admitter = Admitter(arbiter, ProxyConfig())
    assert await admitter.admit(ModelRequest("junk:latest", "600s")) == Admission()
    assert arbiter.asked == []
    assert await admitter.admit(ModelRequest("real:latest", "600s")) == Admission("real:latest")
    assert arbiter.asked == [("real:latest", "600s", False)]



# ---- admission against a scripted arbiter ------------------------------------------------------------------

class Lease:
    def __init__(self, id: str, preemptible: bool, state: str = "active"):
        self.id, self.preemptible, self.state = id, preemptible, state


class Scripted(Arbiter):
    """ensure() raises the scripted outcomes in turn, then makes room; preempt() is recorded."""

    def __init__(self, outcomes=(), resident=(), leases=()):
        super().__init__({"m:latest"})
        self.outcomes = list(outcomes)
        self.residents = set(resident)
        self.used: list[tuple] = []
        self.preempted: list[str] = []
        self.leases = {lease.id: lease for lease in leases}
        self.changed = asyncio.Condition()
        self.serving_busy_until = 0.0

    def resident(self, name):
        return name in self.residents

    def note_use(self, name, keep_alive):
        self.used.append((name, keep_alive))

    async def ensure(self, name, keep_alive=None, load=True):
        await super().ensure(name, keep_alive, load)
        if self.outcomes:
            raise self.outcomes.pop(0)
        return {"model": name}

    async def preempt(self, lease_id, reason):
        self.preempted.append(lease_id)


def proxy_config(**fields) -> ProxyConfig:
    return dataclasses.replace(ProxyConfig(), **fields)


async def test_a_resident_model_is_a_hit_fed_to_the_scheduler_without_making_room():
    arbiter = Scripted(resident={"m:latest"})
    assert await Admitter(arbiter, ProxyConfig()).admit(ModelRequest("m:latest", "600s")) == Admission("m:latest")
    assert arbiter.used == [("m:latest", "600s")] and arbiter.asked == []


async def test_no_room_within_hold_timeout_is_a_503_with_retry_after():
    arbiter = Scripted([ArbiterError("a lease holds GPU 0")])
    admission = await Admitter(arbiter, proxy_config(hold_timeout=0.0)).admit(ModelRequest("m:latest"))
    assert admission.refusal == Refusal(503, "memwarden: GPU busy, a lease holds GPU 0", RETRY_AFTER_S)


@pytest.mark.parametrize("where", ["installed", "ensure"])
async def test_ollama_unreachable_is_a_502(where):
    arbiter = Scripted([OllamaError("connection refused")] if where == "ensure" else [])
    if where == "installed":
        async def unreachable(name):
            raise OllamaError("connection refused")
        arbiter.installed_size = unreachable
    admission = await Admitter(arbiter, ProxyConfig()).admit(ModelRequest("m:latest"))
    assert admission.refusal == Refusal(502, "memwarden proxy: connection refused")


async def test_with_preempt_serving_asks_preemptible_leases_once_each_and_goes_once_room_is_made():
    arbiter = Scripted([ArbiterError("held")] * 2,
                       leases=[Lease("train", True), Lease("infer", False), Lease("yielding", True, "preempting")])
    admitter = Admitter(arbiter, proxy_config(preempt=True, hold_timeout=60.0, resume_after_idle=120.0))
    before = time.monotonic()
    task = asyncio.create_task(admitter.admit(ModelRequest("m:latest")))
    for _ in range(2):  # each refusal: the request waits for a lease to change
        while not any(not waiter.done() for waiter in arbiter.changed._waiters):  # parked, not just woken
            await asyncio.sleep(0)
        async with arbiter.changed:
            arbiter.changed.notify_all()
    assert await task == Admission("m:latest")
    assert arbiter.preempted == ["train"], "only an active preemptible lease, and only once"
    assert admitter.preemptions == 1 and admitter.held == 2
    assert arbiter.serving_busy_until >= before + 120.0, "serving counts as busy for resume_after_idle"

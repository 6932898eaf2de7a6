import json

import pytest

from memwarden.config.schema import ProxyConfig
from memwarden.proxy.admission import Admission, Admitter, ModelRequest, read_request


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


import json

import pytest

from memwarden.control.protocol import (
    APPLICATION_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    PARSE_ERROR,
    ApplicationError,
    InvalidParams,
    Request,
    RpcError,
    encode,
    error_line,
    parse_request,
    request_line,
    result_line,
)


def req(**obj) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def rpc_error(line: bytes) -> RpcError:
    with pytest.raises(RpcError) as info:
        parse_request(line)
    return info.value


# ---- valid requests --------------------------------------------------------------------------------------


def test_parses_a_full_request():
    r = parse_request(req(jsonrpc="2.0", method="alerts", params={"limit": 5}, id=7))
    assert r == Request("alerts", {"limit": 5}, 7)
    assert not r.is_notification


@pytest.mark.parametrize("req_id", ["abc", 0, -3, None, 2**40])
def test_valid_ids(req_id):
    r = parse_request(req(jsonrpc="2.0", method="status", id=req_id))
    assert r.id == req_id
    assert not r.is_notification  # a null id is a request, not a notification


def test_missing_params_means_empty_object():
    assert parse_request(req(jsonrpc="2.0", method="status", id=1)).params == {}


def test_empty_params_list_is_accepted_as_no_params():
    assert parse_request(req(jsonrpc="2.0", method="status", params=[], id=1)).params == {}


def test_notification_has_no_id():
    r = parse_request(req(jsonrpc="2.0", method="status"))
    assert r.is_notification
    assert r.method == "status"


def test_surrounding_whitespace_is_fine():
    assert parse_request(b'  {"jsonrpc":"2.0","method":"m","id":1}  \n').method == "m"


# ---- errors ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("line", [b"", b"not json", b'{"jsonrpc": "2.0",', b"\xff\xfe\x00garbage", b"{'a': 1}"])
def test_non_json_is_parse_error(line):
    err = rpc_error(line)
    assert err.code == PARSE_ERROR
    assert err.message.startswith("parse error: ")
    assert err.data is None


def test_batch_array_is_rejected():
    err = rpc_error(b'[{"jsonrpc":"2.0","method":"status","id":1}]')
    assert err.code == INVALID_REQUEST
    assert "batches are not supported" in err.message


@pytest.mark.parametrize(("line", "typename"), [(b"1", "int"), (b'"x"', "str"), (b"null", "NoneType"),
                                                (b"true", "bool")])
def test_non_object_is_invalid_request(line, typename):
    err = rpc_error(line)
    assert err.code == INVALID_REQUEST
    assert err.message == f"invalid request: expected a JSON object, got {typename}"


@pytest.mark.parametrize("version", [None, "1.0", 2.0, "2"])
def test_bad_jsonrpc_version_keeps_id(version):
    obj = {"method": "status", "id": 9}
    if version is not None:
        obj["jsonrpc"] = version
    err = rpc_error(req(**obj))
    assert err.code == INVALID_REQUEST
    assert "'jsonrpc' must be \"2.0\"" in err.message
    assert err.data == {"id": 9}


@pytest.mark.parametrize("method", [None, "", 5, ["status"]])
def test_missing_or_bad_method(method):
    obj = {"jsonrpc": "2.0", "id": "a"}
    if method is not None:
        obj["method"] = method
    err = rpc_error(req(**obj))
    assert err.code == INVALID_REQUEST
    assert "'method' must be a non-empty string" in err.message
    assert err.data == {"id": "a"}


def test_positional_params_are_invalid_params():
    err = rpc_error(req(jsonrpc="2.0", method="alerts", params=[5], id=3))
    assert err.code == INVALID_PARAMS
    assert "pass params by name" in err.message
    assert err.data == {"id": 3}


@pytest.mark.parametrize("params", [5, "x", True, None])
def test_non_object_params(params):
    err = rpc_error(req(jsonrpc="2.0", method="alerts", params=params, id=3))
    assert err.code == INVALID_REQUEST
    assert "'params' must be an object" in err.message
    assert err.data == {"id": 3}


@pytest.mark.parametrize("req_id", [True, False, 1.5, [1], {"a": 1}])
def test_bad_ids(req_id):
    err = rpc_error(req(jsonrpc="2.0", method="status", id=req_id))
    assert err.code == INVALID_REQUEST
    assert "'id' must be a string, a number or null" in err.message
    assert err.data is None  # the id could not be read, so no id to answer with


def test_unexpected_members():
    err = rpc_error(req(jsonrpc="2.0", method="status", id=1, extra=1, more=2))
    assert err.code == INVALID_REQUEST
    assert "unexpected member(s) ['extra', 'more']" in err.message
    assert err.data == {"id": 1}


def test_invalid_notification_reports_null_id():
    err = rpc_error(req(jsonrpc="1.0", method="status"))
    assert err.data == {"id": None}


# ---- encoding --------------------------------------------------------------------------------------------


def test_encode_is_one_compact_line():
    line = encode({"a": [1, 2], "b": "x\ny"})
    assert line == b'{"a":[1,2],"b":"x\\ny"}\n'
    assert line.count(b"\n") == 1


def test_encode_stringifies_unknown_types_and_refuses_nan():
    from pathlib import Path

    assert json.loads(encode({"p": Path("/a")})) == {"p": "/a"}
    with pytest.raises(ValueError):
        encode({"x": float("nan")})


def test_result_line_round_trip():
    line = result_line(4, {"ok": True, "items": [1, "two"]})
    assert line.endswith(b"\n")
    assert json.loads(line) == {"jsonrpc": "2.0", "id": 4, "result": {"ok": True, "items": [1, "two"]}}


def test_error_line_round_trip_with_and_without_data():
    assert json.loads(error_line("x", RpcError(-32601, "nope"))) == {
        "jsonrpc": "2.0", "id": "x", "error": {"code": -32601, "message": "nope"}}
    assert json.loads(error_line(None, RpcError(-32000, "bad", {"why": 1}))) == {
        "jsonrpc": "2.0", "id": None, "error": {"code": -32000, "message": "bad", "data": {"why": 1}}}


def test_request_line_round_trips_through_parse_request():
    line = request_line("alerts", {"limit": 3}, req_id="q1")
    assert line.endswith(b"\n")
    assert parse_request(line) == Request("alerts", {"limit": 3}, "q1")


def test_request_line_omits_empty_params():
    assert "params" not in json.loads(request_line("status"))
    assert parse_request(request_line("status")) == Request("status", {}, 1)


def test_error_classes():
    app = ApplicationError("disk full", {"free": 0})
    assert (app.code, app.message, app.data) == (APPLICATION_ERROR, "disk full", {"free": 0})
    assert str(app) == "disk full"
    bad = InvalidParams("limit must be positive")
    assert bad.code == INVALID_PARAMS
    assert bad.to_dict() == {"code": INVALID_PARAMS, "message": "invalid params: limit must be positive"}


@pytest.mark.parametrize("line", [b"[" * 5000 + b"]" * 5000, b'{"a":' * 3000 + b"1" + b"}" * 3000])
def test_json_nested_too_deeply_is_a_parse_error(line):
    # json.loads raised RecursionError, which killed the connection's handler without an answer.
    with pytest.raises(RpcError) as info:
        parse_request(line)
    assert info.value.code == PARSE_ERROR and "nested too deeply" in info.value.message


def test_an_integer_too_long_to_convert_is_a_parse_error():
    for where in (b'"id":' + b"7" * 5000, b'"params":{"limit":' + b"9" * 4301 + b"}"):
        err = rpc_error(b'{"jsonrpc":"2.0","method":"alerts",' + where + b"}\n")
        assert err.code == PARSE_ERROR and "more than 4,300 digits" in err.message

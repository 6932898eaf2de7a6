import pytest

from memwarden.control.protocol import INVALID_PARAMS, METHOD_NOT_FOUND, PERMISSION_DENIED, RpcError
from memwarden.control.registry import Registry


async def echo(text: str, times: int = 1) -> str:
    """Repeat text.

    More detail that is not part of the one-line doc.
    """
    return text * times


async def reload() -> dict:
    """Reload things."""
    return {"reloaded": True}


@pytest.fixture
def registry() -> Registry:
    reg = Registry()
    reg.add("echo", echo)
    reg.add("reload", reload, admin=True)
    return reg


async def test_calls_handler_with_params(registry):
    assert await registry.call("echo", {"text": "ab", "times": 2}, may_change_state=False) == "abab"
    assert await registry.call("echo", {"text": "ab"}, may_change_state=False) == "ab"


async def test_method_not_found(registry):
    with pytest.raises(RpcError) as info:
        await registry.call("nope", {}, may_change_state=True)
    assert info.value.code == METHOD_NOT_FOUND
    assert "'nope'" in info.value.message


async def test_admin_method_denied_without_permission(registry):
    with pytest.raises(RpcError) as info:
        await registry.call("reload", {}, may_change_state=False)
    assert info.value.code == PERMISSION_DENIED
    assert "'reload' changes state" in info.value.message
    assert "daemon.admin_group" in info.value.message  # the key that grants it, not "the admin group"


async def test_admin_method_allowed_with_permission(registry):
    assert await registry.call("reload", {}, may_change_state=True) == {"reloaded": True}


async def test_permission_checked_before_params(registry):
    with pytest.raises(RpcError) as info:
        await registry.call("reload", {"bogus": 1}, may_change_state=False)
    assert info.value.code == PERMISSION_DENIED


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({}, "missing a required argument: 'text'"),
        ({"text": "a", "color": "red"}, "unexpected keyword argument 'color'"),
    ],
)
async def test_invalid_params_from_signature(registry, params, fragment):
    with pytest.raises(RpcError) as info:
        await registry.call("echo", params, may_change_state=True)
    assert info.value.code == INVALID_PARAMS
    assert info.value.message.startswith("invalid params: echo: ")
    assert fragment in info.value.message


async def test_type_error_inside_handler_is_not_invalid_params():
    async def broken() -> None:
        raise TypeError("bug inside the handler")

    reg = Registry()
    reg.add("broken", broken)
    with pytest.raises(TypeError, match="bug inside"):
        await reg.call("broken", {}, may_change_state=True)


def test_doc_is_first_docstring_line_or_explicit(registry):
    assert registry.methods["echo"].doc == "Repeat text."
    assert registry.methods["echo"].admin is False
    assert registry.methods["reload"].admin is True
    reg = Registry()
    reg.add("r", reload, doc="explicit")
    assert reg.methods["r"].doc == "explicit"

    async def undocumented() -> None:
        return None

    reg.add("u", undocumented)
    assert reg.methods["u"].doc == ""


def test_duplicate_registration_is_refused(registry):
    with pytest.raises(ValueError, match="registered twice"):
        registry.add("echo", echo)


async def test_a_method_renamed_in_0_2_names_its_new_name():
    reg = Registry()

    async def models_list() -> list:
        return []

    reg.add("models.list", models_list)
    with pytest.raises(RpcError) as err:
        await reg.call("adapters", {}, may_change_state=False)
    assert err.value.code == METHOD_NOT_FOUND
    assert "'adapters' was renamed 'models.list'" in err.value.message
    with pytest.raises(RpcError, match=r"'nonsense' \(try 'methods'\)"):
        await reg.call("nonsense", {}, may_change_state=False)

"""The D-Bus calls the systemd executor makes, against a stand-in bus: method, signature and body as systemd's
Manager takes them, errors turned into UnitBusError, an unloaded unit into None."""

from __future__ import annotations

import pytest
from dbus_fast import Message, MessageType, Variant

from memwarden.learning.systemd_bus import NO_SUCH_UNIT, BusUnitManager, UnitBusError
from memwarden.learning.systemd_executor import UnitState

UNIT = "memwarden-train@r1.service"
PATH = "/org/freedesktop/systemd1/unit/memwarden_2dtrain_40r1_2eservice"


class Bus:
    def __init__(self, replies=None):
        self.sent: list[Message] = []
        self.replies = replies or {}

    async def call(self, msg: Message) -> Message:
        self.sent.append(msg)
        msg.serial = len(self.sent)  # as the bus numbers what it sends
        reply = self.replies.get(msg.member, [])
        if isinstance(reply, tuple):
            return Message.new_error(msg, *reply)
        return Message(message_type=MessageType.METHOD_RETURN, reply_serial=1, body=reply,
                       signature={"GetUnit": "o", "Get": "v", "GetAll": "a{sv}"}.get(msg.member, ""))


async def test_each_call_is_the_managers_method_with_its_signature():
    bus = Bus()
    units = BusUnitManager(bus)
    await units.set_memory_max(UNIT, 2**30)
    await units.start(UNIT)
    await units.kill(UNIT, 15)
    await units.kill(UNIT, 9)
    await units.stop(UNIT)
    await units.reset_failed(UNIT)
    calls = [(m.member, m.signature, m.body) for m in bus.sent]
    assert calls == [
        ("SetUnitProperties", "sba(sv)", [UNIT, True, [["MemoryMax", Variant("t", 2**30)]]]),
        ("StartUnit", "ss", [UNIT, "replace"]),
        ("KillUnit", "ssi", [UNIT, "main", 15]),
        ("KillUnit", "ssi", [UNIT, "all", 9]),
        ("StopUnit", "ss", [UNIT, "replace"]),
        ("ResetFailedUnit", "s", [UNIT]),
    ]
    assert {m.destination for m in bus.sent} == {"org.freedesktop.systemd1"}


async def test_a_refusal_names_the_call_the_unit_and_the_reason():
    bus = Bus({"StartUnit": ("org.freedesktop.DBus.Error.AccessDenied", "Access denied")})
    with pytest.raises(UnitBusError, match=rf"systemd refused StartUnit of {UNIT}: .*AccessDenied: Access denied"):
        await BusUnitManager(bus).start(UNIT)


async def test_state_reads_the_unit_and_service_properties():
    bus = Bus({"GetUnit": [PATH], "Get": [Variant("s", "failed")],
               "GetAll": [{"Result": Variant("s", "oom-kill"), "MainPID": Variant("u", 0),
                           "ExecMainStatus": Variant("i", 9),
                           "ExecMainStartTimestampMonotonic": Variant("t", 123_456_789)}]})
    assert await BusUnitManager(bus).state(UNIT) == UnitState("failed", "oom-kill", 0, 9, started_at=123_456_789)
    assert bus.sent[1].path == PATH and bus.sent[1].body == ["org.freedesktop.systemd1.Unit", "ActiveState"]
    assert await BusUnitManager(Bus({"GetUnit": (NO_SUCH_UNIT, "not loaded")})).state(UNIT) is None
    silent = Bus({"GetUnit": [PATH], "Get": [Variant("s", "inactive")],
                  "GetAll": [{"Result": Variant("s", "success"), "MainPID": Variant("u", 0),
                              "ExecMainStatus": Variant("i", 0)}]})  # a systemd that does not say when it started
    assert (await BusUnitManager(silent).state(UNIT)).started_at == 0

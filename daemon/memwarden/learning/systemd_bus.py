"""systemd's Manager over the system bus with dbus-fast (docs/dependencies.md says why): the UnitManager of
systemd_executor.py. The polkit rule shipped in the .deb (packaging/deb/memwarden-train.rules) lets the memwarden
user start, stop, signal, reset and set properties of memwarden-train@* units only; any other unit is refused
by systemd, not by this module.
"""

from __future__ import annotations

from typing import Any

from memwarden.learning.systemd_executor import UnitState

SYSTEMD = "org.freedesktop.systemd1"
MANAGER_PATH = "/org/freedesktop/systemd1"
MANAGER = "org.freedesktop.systemd1.Manager"
NO_SUCH_UNIT = "org.freedesktop.systemd1.NoSuchUnit"


class UnitBusError(RuntimeError):
    def __init__(self, call: str, unit: str, name: str, text: str):
        super().__init__(f"systemd refused {call} of {unit}: {name}: {text}")
        self.name = name


class BusUnitManager:
    def __init__(self, bus: Any = None):
        self._bus = bus  # a connected dbus_fast.aio.MessageBus, made on first use when None

    async def _connect(self) -> Any:
        if self._bus is None:
            from dbus_fast import BusType
            from dbus_fast.aio import MessageBus

            self._bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
        return self._bus

    async def _call(self, unit: str, member: str, signature: str, body: list[Any], path: str = MANAGER_PATH,
                    interface: str = MANAGER) -> list[Any]:
        from dbus_fast import Message, MessageType

        bus = await self._connect()
        reply = await bus.call(Message(destination=SYSTEMD, path=path, interface=interface, member=member,
                                       signature=signature, body=body))
        if reply.message_type == MessageType.ERROR:
            raise UnitBusError(member, unit, reply.error_name or "", str(reply.body[0] if reply.body else ""))
        return reply.body

    async def set_memory_max(self, unit: str, nbytes: int) -> None:
        from dbus_fast import Variant

        # runtime=True: the cap lives in /run and is gone at the next boot, as the run's launch file is.
        await self._call(unit, "SetUnitProperties", "sba(sv)", [unit, True, [["MemoryMax", Variant("t", nbytes)]]])

    async def start(self, unit: str) -> None:
        await self._call(unit, "StartUnit", "ss", [unit, "replace"])

    async def stop(self, unit: str) -> None:
        await self._call(unit, "StopUnit", "ss", [unit, "replace"])

    async def kill(self, unit: str, signal: int) -> None:
        # SIGTERM to the main process (unit_entry forwards it to the trainer); anything else to the whole cgroup.
        await self._call(unit, "KillUnit", "ssi", [unit, "main" if signal == 15 else "all", signal])

    async def reset_failed(self, unit: str) -> None:
        await self._call(unit, "ResetFailedUnit", "s", [unit])

    async def state(self, unit: str) -> UnitState | None:
        try:
            (path,) = await self._call(unit, "GetUnit", "s", [unit])
        except UnitBusError as exc:
            if exc.name == NO_SUCH_UNIT:
                return None
            raise
        props = "org.freedesktop.DBus.Properties"
        (active,) = await self._call(unit, "Get", "ss", [f"{SYSTEMD}.Unit", "ActiveState"], path, props)
        (service,) = await self._call(unit, "GetAll", "s", [f"{SYSTEMD}.Service"], path, props)
        return UnitState(active.value, service["Result"].value, int(service["MainPID"].value),
                         int(service["ExecMainStatus"].value), started_at(service))

    async def close(self) -> None:
        if self._bus is not None:
            self._bus.disconnect()
            self._bus = None


def started_at(service: dict[str, Any]) -> int:
    """When the service's main process last started (µs, monotonic); 0 when never, or when this systemd does not
    say (the executor then waits for the trainer's exit record instead)."""
    value = service.get("ExecMainStartTimestampMonotonic")
    return int(value.value) if value is not None else 0

"""What every tunnel experiment shares: its input is one endpoint URL, parsed once by the
experiment's ``parse``; which inputs it accepts and whose politeness slot a target takes
follow from that, and ``run`` hands the parsed endpoint to the protocol's ``handshake``."""

from __future__ import annotations

from typing import ClassVar, Generic, TypeVar

from probe.experiments.base import Experiment, InputError, Observation, Target
from probe.experiments.context import MeasurementContext
from probe.experiments.tunnels.endpoints import Endpoint
from probe.experiments.tunnels.transport import preload

C = TypeVar("C")


class TunnelExperiment(Experiment, Generic[C]):
    """A tunnel handshake with one endpoint. Subclasses implement ``parse`` (the endpoint and
    the protocol's own parameters ``C``, or InputError naming what is wrong) and ``handshake``.
    ``wire_module`` is a slow module (scapy's protocol layer) imported off the event loop first.
    """

    wire_module: ClassVar[str | None] = None

    def parse(self, url: str) -> tuple[Endpoint, C]:
        raise NotImplementedError

    async def handshake(self, ep: Endpoint, config: C, net: MeasurementContext) -> list[Observation]:
        raise NotImplementedError

    async def run(self, target: Target, net: MeasurementContext) -> list[Observation]:
        ep, config = self.parse(target.input)
        if self.wire_module is not None:
            await preload(self.wire_module)
        return await self.handshake(ep, config, net)

    def input_problem(self, input_: str) -> str | None:
        try:
            self.parse(input_)
        except InputError as exc:
            return str(exc)
        return None

    def host_key(self, target: Target) -> str:
        # The server's address: several endpoints of one server share its politeness limit.
        try:
            return self.parse(target.input)[0].ip
        except InputError:
            return target.input

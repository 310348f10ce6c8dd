"""Stateful simulators of Rootly and incident.io, shipped in the product.

They serve `bridge serve --sandbox`, `bridge demo`, end-to-end tests and benchmarks. See
`bridge/sandbox/README.md` for the control API and the modelled behaviour.
"""

from __future__ import annotations

from bridge.sandbox.common import Faults, RecordedRequest, SimError
from bridge.sandbox.incident_io import IncidentIoSimulator
from bridge.sandbox.rootly import RootlySimulator
from bridge.sandbox.sandbox import Sandbox
from bridge.sandbox.webhooks import DeliveryRecord

__all__ = [
    "DeliveryRecord",
    "Faults",
    "IncidentIoSimulator",
    "RecordedRequest",
    "RootlySimulator",
    "Sandbox",
    "SimError",
]

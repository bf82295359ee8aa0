"""Fleet simulator: realistic vending machines, injectable faults, a device-like HTTP sender.

Offline (no HTTP), for tests and notebooks::

    from vendwatch.simulate import Fleet, FaultPlan
    fleet = Fleet(seed=1, n_devices=50, start=..., faults=FaultPlan.parse("cooling_failure=2"))
    events = fleet.run_for(3600)        # list[vendwatch.events.DeviceEvent]
    fleet.injected                      # ground truth of injected faults

Live: ``vendwatch simulate`` (``LiveRun`` + ``Sender``) and ``vendwatch demo``.
"""

from vendwatch.simulate.clock import SimClock
from vendwatch.simulate.faults import (
    FAULTS,
    FaultPlan,
    FaultSpecError,
    InjectedFault,
    ScheduledFault,
)
from vendwatch.simulate.fleet import Fleet, layout, showcase_plan
from vendwatch.simulate.live import LiveRun
from vendwatch.simulate.sender import RetryPolicy, Sender, SendStats

__all__ = [
    "FAULTS", "FaultPlan", "FaultSpecError", "Fleet", "InjectedFault", "LiveRun", "RetryPolicy",
    "ScheduledFault", "SendStats", "Sender", "SimClock", "layout", "showcase_plan",
]

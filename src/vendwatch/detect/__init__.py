"""Real-time incident detection: rules as data, a pure engine, and the detector role.

``rules`` (YAML format, validation) -> ``kinds`` (per-type evaluation) -> ``engine``
(per-device state, timers, site correlation) -> ``role`` (log in, signals out,
checkpoints). ``backtest`` replays stored events through a rule set without side effects.
"""

"""vendwatch: telemetry, incident detection and analytics for vending-machine fleets."""

__version__ = "0.1.0"

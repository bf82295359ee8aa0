"""Prometheus metrics of the detector (``vendwatch_detect_*``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from vendwatch.observe.histogram import FastHistogram

_LAT = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

EVENTS = Counter("vendwatch_detect_events_total",
                 "Events read by the detector, by outcome (evaluated, duplicate, undecodable)", ["outcome"])
SIGNALS = Counter("vendwatch_detect_signals_total", "Signals emitted, by rule and status", ["rule", "status"])
RETRACTIONS = Counter("vendwatch_detect_retractions_total",
                      "Signals withdrawn because a late event showed the condition never held (false alarms)",
                      ["rule"])
SUPPRESSED = Counter("vendwatch_detect_signals_suppressed_total",
                     "Signals not re-emitted after a restart because they were already on the signals topic")
EVAL_SECONDS = FastHistogram("vendwatch_detect_eval_seconds", "Time to evaluate one batch of events (rules + timers)",
                         buckets=_LAT)
CHECKPOINT_SECONDS = FastHistogram("vendwatch_detect_checkpoint_seconds", "Time to save state and offsets", buckets=_LAT)
DEVICES = Gauge("vendwatch_detect_devices", "Devices with state in this detector")
STATE_BYTES = Gauge("vendwatch_detect_state_bytes", "Encoded detector state (last checkpoint estimate), bytes")
LAG_RECORDS = Gauge("vendwatch_detect_lag_records", "Events on the log not yet evaluated")
WATERMARK_LAG = Gauge("vendwatch_detect_watermark_lag_seconds", "Wall time minus the detector's timer watermark")

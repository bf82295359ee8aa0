"""The "seen event ids" index of the embedded collector (pure, no I/O).

A dedupe key is a 128-bit hash of (device_id, event_id). Keys are remembered for the
dedupe window, grouped in receive-time buckets so expiry drops whole buckets instead of
scanning. The index lives in memory only: ``SqliteIngestSink`` rebuilds it from the
log itself (the log is the truth), so it never needs a write of its own.
"""

from __future__ import annotations

import hashlib


def dedupe_key(device_id: str, event_id: str) -> bytes:
    """128-bit key: a collision (a new event taken for a duplicate) is ~1e-20 likely at 1e9 ids."""
    return _blake2b(f"{device_id}\x00{event_id}".encode(), digest_size=16).digest()


_blake2b = hashlib.blake2b


class SeenIndex:
    """Keys seen within ``window_s``; a key is kept at least ``window_s`` after it was first seen."""

    def __init__(self, window_s: float, bucket_s: float | None = None) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be > 0")
        self.window_s = window_s
        # ~24 buckets per window: expiry is at most 1/24 of the window late (remembering
        # a little longer is harmless), and a bucket is dropped in one go
        self.bucket_s = bucket_s or max(60.0, window_s / 24)
        self._bucket_of: dict[bytes, int] = {}
        self._buckets: dict[int, list[bytes]] = {}

    def __len__(self) -> int:
        return len(self._bucket_of)

    def __contains__(self, key: bytes) -> bool:
        return key in self._bucket_of

    def add(self, key: bytes, at_s: float) -> None:
        """Remember ``key`` as seen at ``at_s`` (epoch seconds); the first sighting counts."""
        if key in self._bucket_of:
            return
        b = int(at_s // self.bucket_s)
        self._bucket_of[key] = b
        bucket = self._buckets.get(b)
        if bucket is None:
            bucket = self._buckets[b] = []
        bucket.append(key)

    def add_many(self, keys: list[bytes], at_s: float) -> None:
        """``add`` for many keys seen at the same time (the hot path: one call per group commit)."""
        b = int(at_s // self.bucket_s)
        bucket_of = self._bucket_of
        bucket = self._buckets.setdefault(b, [])
        for k in keys:
            if k not in bucket_of:
                bucket_of[k] = b
                bucket.append(k)

    def membership(self) -> dict[bytes, int]:
        """A read-only view for fast ``key in view`` tests in a loop (do not mutate)."""
        return self._bucket_of

    def expire(self, now_s: float) -> int:
        """Forget buckets whose every key is older than the window; returns how many keys."""
        # bucket b holds keys seen in [b*bs, (b+1)*bs): all are older than the window
        # once (b+1)*bs <= now - window
        last_dead = int((now_s - self.window_s) // self.bucket_s) - 1
        dropped = 0
        for b in sorted(self._buckets):
            if b > last_dead:
                break
            for k in self._buckets.pop(b):
                if self._bucket_of.get(k) == b:
                    del self._bucket_of[k]
                    dropped += 1
        return dropped

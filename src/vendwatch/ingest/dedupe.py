"""The "seen event ids" index of the embedded collector (pure, no I/O).

A dedupe key is a 128-bit hash of (device_id, event_id). Keys are remembered for the
dedupe window, grouped in receive-time buckets so expiry drops whole buckets instead of
scanning. The index lives in memory only: ``SqliteIngestSink`` rebuilds it from the
log itself (the log is the truth), so it never needs a write of its own.

Nothing in the index is visible to Python's cyclic garbage collector: the key -> bucket
dict holds only bytes and ints (CPython leaves such a dict untracked) and each bucket is
one ``bytearray`` of fixed-width keys. A list per bucket, as before, made every full
collection (about one a second under load) walk every key of the window: ~15 ms per
million keys on the reference machine, and a window holds events/s x window keys
(docs/benchmarks.md).
"""

from __future__ import annotations

import hashlib

KEY_BYTES = 16


def dedupe_key(device_id: str, event_id: str) -> bytes:
    """128-bit key: a collision (a new event taken for a duplicate) is ~1e-20 likely at 1e9 ids."""
    return _blake2b(f"{device_id}\x00{event_id}".encode(), digest_size=KEY_BYTES).digest()


_blake2b = hashlib.blake2b


class SeenIndex:
    """Keys seen within ``window_s``; a key is kept at least ``window_s`` after it was first seen.

    Keys are ``key_bytes`` long (``dedupe_key``'s 16 by default)."""

    def __init__(self, window_s: float, bucket_s: float | None = None, key_bytes: int = KEY_BYTES) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be > 0")
        self.window_s = window_s
        # ~24 buckets per window: expiry is at most 1/24 of the window late (remembering
        # a little longer is harmless), and a bucket is dropped in one go
        self.bucket_s = bucket_s or max(60.0, window_s / 24)
        self.key_bytes = key_bytes
        self._bucket_of: dict[bytes, int] = {}
        self._buckets: dict[int, bytearray] = {}  # the bucket's keys, concatenated

    def __len__(self) -> int:
        return len(self._bucket_of)

    def __contains__(self, key: bytes) -> bool:
        return key in self._bucket_of

    def _check(self, key: bytes) -> None:
        if len(key) != self.key_bytes:
            raise ValueError(f"dedupe keys are {self.key_bytes} bytes, got {len(key)}")

    def add(self, key: bytes, at_s: float) -> None:
        """Remember ``key`` as seen at ``at_s`` (epoch seconds); the first sighting counts."""
        if key in self._bucket_of:
            return
        self._check(key)
        b = int(at_s // self.bucket_s)
        self._bucket_of[key] = b
        bucket = self._buckets.get(b)
        if bucket is None:
            bucket = self._buckets[b] = bytearray()
        bucket += key

    def add_many(self, keys: list[bytes], at_s: float) -> None:
        """``add`` for many keys seen at the same time (the hot path: one call per group commit)."""
        b = int(at_s // self.bucket_s)
        bucket_of = self._bucket_of
        new = [k for k in keys if k not in bucket_of]
        if not new:
            return
        joined = b"".join(new)
        if len(joined) != len(new) * self.key_bytes:
            for k in new:
                self._check(k)
        bucket_of.update(dict.fromkeys(new, b))
        bucket = self._buckets.get(b)
        if bucket is None:
            bucket = self._buckets[b] = bytearray()
        bucket += joined

    def membership(self) -> dict[bytes, int]:
        """A read-only view for fast ``key in view`` tests in a loop (do not mutate)."""
        return self._bucket_of

    def expire(self, now_s: float) -> int:
        """Forget buckets whose every key is older than the window; returns how many keys."""
        # bucket b holds keys seen in [b*bs, (b+1)*bs): all are older than the window
        # once (b+1)*bs <= now - window
        last_dead = int((now_s - self.window_s) // self.bucket_s) - 1
        dropped = 0
        w = self.key_bytes
        for b in sorted(self._buckets):
            if b > last_dead:
                break
            keys = bytes(self._buckets.pop(b))
            for i in range(0, len(keys), w):
                k = keys[i : i + w]
                if self._bucket_of.get(k) == b:
                    del self._bucket_of[k]
                    dropped += 1
        return dropped

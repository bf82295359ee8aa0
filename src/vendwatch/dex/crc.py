"""CRC-16/ARC, the G85 integrity check of EVA-DTS (reflected polynomial 0xA001, init 0).

Thirty lines of table-driven code: no dependency is worth it, and the exact variant
(ARC, not CCITT/XMODEM which many libraries default to) must be pinned here.
"""

from __future__ import annotations


def _table() -> tuple[int, ...]:
    out = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0xA001 if c & 1 else c >> 1
        out.append(c)
    return tuple(out)


_TABLE = _table()


def crc16_arc(data: bytes) -> int:
    """CRC-16/ARC of ``data`` (check value of b"123456789" is 0xBB3D)."""
    crc = 0
    for b in data:
        crc = (crc >> 8) ^ _TABLE[(crc ^ b) & 0xFF]
    return crc


def swap_bytes(crc: int) -> int:
    """The same CRC written least significant byte first (how pre-6.0 machines print it)."""
    return ((crc & 0xFF) << 8) | (crc >> 8)

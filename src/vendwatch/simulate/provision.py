"""Registering a simulated fleet and keeping its tokens (``vendwatch demo``, ``simulate --data-dir``).

Idempotent: machines already registered are reused; a machine whose token is not in
the tokens file gets a new one (``rotate-secret`` with no grace). Tokens are kept in
``DATA_DIR/fleet/tokens.csv`` (mode 0600), the format ``devices import --tokens-out``
writes, so ``simulate --tokens`` reads either.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

from vendwatch.simulate.fleet import layout, profiles_for
from vendwatch.state.store import StateStore

log = logging.getLogger("vendwatch.simulate")

TOKENS_FILE = Path("fleet") / "tokens.csv"


class TokensFileError(Exception):
    """The tokens file is missing, unreadable or lacks devices."""


def read_tokens(path: str | os.PathLike[str]) -> dict[str, str]:
    """``device_id,token`` CSV (with header) -> {device_id: token}, in file order."""
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"device_id", "token"} <= set(reader.fieldnames):
                raise TokensFileError(f"{path}: needs a header row with device_id and token columns")
            out = {}
            for n, row in enumerate(reader, start=2):
                did, tok = (row.get("device_id") or "").strip(), (row.get("token") or "").strip()
                if not did or not tok:
                    raise TokensFileError(f"{path}, line {n}: empty device_id or token")
                out[did] = tok
            return out
    except FileNotFoundError:
        raise TokensFileError(f"tokens file not found: {path}") from None


def write_tokens(path: Path, tokens: dict[str, str]) -> None:
    """Write atomically, readable by the owner only (the tokens are credentials)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["device_id", "token"])
        w.writerows(sorted(tokens.items()))
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def provision_fleet(
    state: StateStore, data_dir: Path, n_devices: int, n_sites: int | None, seed: int, heartbeat_s: int = 300
) -> tuple[list[tuple[str, str | None]], dict[str, str], int]:
    """Make sure machines VM-00001..N exist with known tokens.

    Returns the fleet layout (device, site as registered), the tokens, and how many
    machines were newly registered.
    """
    path = data_dir / TOKENS_FILE
    tokens = read_tokens(path) if path.exists() else {}
    wanted = layout(n_devices, n_sites)
    profiles = {p.device_id: p for p in profiles_for(seed, wanted)}
    devices: list[tuple[str, str | None]] = []
    added = 0
    changed = False
    existing = {did: state.get_device(did) for did, _ in wanted}
    with state.db.transaction() as tx:
        for did, site in wanted:
            dev = existing[did]
            if dev is None:
                p = profiles[did]
                tokens[did] = state.add_device(did, site, serial=p.serial, model=p.model,
                                               location=f"{site} machine {p.index + 1}", heartbeat_interval_s=heartbeat_s, tx=tx)
                added += 1
                changed = True
                devices.append((did, site))
                continue
            if dev.status != "active":
                log.warning("device %s is %s: left out of the simulated fleet", did, dev.status)
                continue
            devices.append((did, dev.site_id))
    for did, _ in devices:
        if did not in tokens:
            tokens[did] = state.rotate_device_token(did, grace_s=0)
            changed = True
    if changed or not path.exists():
        write_tokens(path, tokens)
    return devices, {d: tokens[d] for d, _ in devices}, added

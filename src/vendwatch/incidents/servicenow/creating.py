"""Look up, then create: resumable under a rate limit and safe across crashes.

A record vendwatch creates (a ticket, a CI) is found again by its opaque correlation
id. Progress is recorded durably between the steps, so a sync that runs out of tokens
resumes where it stopped instead of repeating its lookup, and a create whose answer was
lost (crash, timeout) is always followed by a lookup before anything is created again:

    ""         -> look up; found: adopt it; else record "checked"
    "checked"  -> take the create's token, record "creating", create
    "creating" -> an earlier create may have landed: look up first (as for "")
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vendwatch.delivery.dispatch import Gate

CHECKED, CREATING = "checked", "creating"


def find_or_create(gate: Gate, stage: str, set_stage: Callable[[str], None],
                   lookup: Callable[[], dict[str, Any] | None], prepare: Callable[[], None],
                   create: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], bool]:
    """Returns (record, created).

    ``prepare`` gathers what the create needs (it may spend tokens and be throttled: the
    lookup is not repeated); ``create`` must send its call ``prepaid`` (its token is taken here).
    """
    if stage != CHECKED:
        found = lookup()
        if found is not None:
            return found, False
        set_stage(CHECKED)
    prepare()
    gate.take_token()  # Throttled here leaves "checked": the next attempt goes straight to the create
    set_stage(CREATING)
    return create(), True

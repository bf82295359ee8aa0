"""Files holding secrets or fleet data are private to the account running vendwatch.

The data directory holds the registry (token hashes), the log (every event) and the
lake; token files hold device credentials in clear. Created with the default umask
they were 0644 in 0755 folders: readable by every local account. Now the data
directory is 0700 (tightened when it already exists and belongs to us), the CLI runs
with umask 077, and token files are created 0600.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

log = logging.getLogger("vendwatch.files")
PRIVATE_UMASK = 0o077


def private_dir(path: Path) -> Path:
    """Create ``path`` (mode 0700) or tighten it to 0700 when we own it; warn when we cannot."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if stat.S_IMODE(st.st_mode) & 0o077:
        if st.st_uid == os.geteuid():
            os.chmod(path, 0o700)
        else:
            log.warning("data directory %s is readable by others and not ours to tighten (mode %s)",
                        path, oct(stat.S_IMODE(st.st_mode)))
    return path


@contextmanager
def private_file(path: str | os.PathLike[str]) -> Iterator[TextIO]:
    """Open ``path`` for writing as a 0600 file (an existing file is truncated and tightened)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w", newline="") as f:
        yield f

"""Files written all at once: a reader (or a rerun after a crash) sees the old file or the
whole new one, never a half-written one."""
from __future__ import annotations

import os
import tempfile


def atomic_write(path, write, mode="wb"):
    """``write(f)`` fills a temporary file in ``path``'s folder, which is flushed to disk
    and renamed over ``path``; on any error the temporary file is removed and ``path`` is
    left as it was."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".lowbit-", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise

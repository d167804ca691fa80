"""One audit line per query (and per refused connection), to stderr and/or a file.

    2026-11-26T23:40:01.123Z audit proto=https client="CN=alice,OU=client,O=stenoxdp" peer=127.0.0.1:50312
        query="host 198.18.0.2" packets=12 bytes=2480 seconds=0.012 outcome=ok

(one line; values with spaces or quotes are JSON-quoted). Logger name:
`stenoxdp.audit`; the lines are written whether or not logging is configured.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from pathlib import Path

_lock = threading.Lock()


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    if isinstance(v, (int,)):
        return str(v)
    s = str(v)
    if s and all(c.isalnum() or c in "._:-/=,@" for c in s):
        return s
    return json.dumps(s)


class AuditLog:
    def __init__(self, path: os.PathLike | str | None = None, stderr: bool = True):
        self.path = Path(path) if path else None
        self.stderr = stderr
        self._fh = None
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            self._fh = os.fdopen(fd, "a", buffering=1)
        self.log = logging.getLogger("stenoxdp.audit")
        self.lines_written = 0

    def line(self, event: str = "query", **fields) -> str:
        t = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"
        text = f"{stamp} audit {event} " + " ".join(f"{k}={_fmt(v)}" for k, v in fields.items())
        with _lock:
            if self.stderr:
                try:
                    sys.stderr.write(text + "\n")
                    sys.stderr.flush()
                except (OSError, ValueError):
                    pass
            if self._fh:
                try:
                    self._fh.write(text + "\n")
                except (OSError, ValueError):
                    pass
            self.lines_written += 1
        return text

    def close(self) -> None:
        with _lock:
            if self._fh:
                self._fh.close()
                self._fh = None

"""The transport-neutral half of the query server: limits, concurrency, the
engine thread, audit. gRPC and HTTPS both go through QueryService.start().

Flow of one query:
  transport thread  -- start(): take a slot (or BusyError), parse + plan via the
                       engine (QueryError at once), start the engine thread
  engine thread     -- nice +10 (Linux: per thread), iterates the engine's pcap
                       stream into a bounded queue (at most queue_chunks chunks)
  transport thread  -- iterates Answer: coalesces queued chunks, sends them; at
                       the end raises AnswerTooLarge / QueryTimeout if a server
                       limit (not the client's own) stopped the answer
  watchdog          -- calls the transport's abort hook for answers past their
                       deadline or whose client accepted nothing for send_timeout
A slow client therefore only ever holds its own slot, queue and thread.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import asdict, dataclass
from typing import Callable, Iterator

from stenoxdp.errors import QueryError, StenoError

from .audit import AuditLog

log = logging.getLogger("stenoxdp.server")
QUERY_NICE = 10


def lower_thread_priority() -> None:
    """nice +QUERY_NICE for the calling thread only (Linux priorities are per thread)."""
    try:
        tid = threading.get_native_id()
        if os.getpriority(os.PRIO_PROCESS, tid) < QUERY_NICE:
            os.setpriority(os.PRIO_PROCESS, tid, QUERY_NICE)
    except (OSError, AttributeError):
        pass


@dataclass
class Limits:
    max_concurrent: int = 16             # queries at once, all transports; more -> BusyError
    slot_wait: float = 5.0               # how long a query waits for a free slot before BusyError
    max_answer_bytes: int = 4 << 30      # server cap on one answer; 0 = none
    max_seconds: float = 3600.0          # server cap on one query's duration; 0 = none
    send_timeout: float = 60.0           # a client that accepts no data this long is dropped
    queue_chunks: int = 4                # engine -> sender queue depth (bounded memory per query)
    max_query_chars: int = 65536
    coalesce_bytes: int = 1 << 20        # merge queued chunks up to this before sending

    def as_dict(self) -> dict:
        return asdict(self)


class ServerError(StenoError):
    """A failure with a transport-neutral kind: invalid, busy, too_large,
    timeout, unauthenticated, cancelled, internal."""

    kind = "internal"


class BusyError(ServerError):
    kind = "busy"


class AnswerTooLarge(ServerError):
    kind = "too_large"


class QueryTimeout(ServerError):
    kind = "timeout"


class ClientGone(ServerError):
    kind = "cancelled"


class Unauthenticated(ServerError):
    kind = "unauthenticated"


@dataclass
class Client:
    proto: str                # "grpc", "grpc-steno", "https"
    subject: str = "?"
    serial: int = 0
    peer: str = "?"


_END = object()


class Counters:
    NAMES = ("queries", "queries_active", "queries_ok", "queries_failed", "queries_invalid", "queries_busy",
             "queries_too_large", "queries_timeout", "queries_cancelled", "packets_sent", "bytes_sent",
             "refused_revoked", "refused_tls")

    def __init__(self):
        self._lock = threading.Lock()
        self.v = {n: 0 for n in self.NAMES}

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.v[name] = self.v.get(name, 0) + n

    def snapshot(self) -> dict:
        with self._lock:
            return dict(self.v)


class Answer:
    """Iterate for pcap chunks (bytes). Always close() (or exhaust) it."""

    def __init__(self, svc: "QueryService", stream, text: str, client: Client, server_bound: bool,
                 limit_packets: int = 0):
        self.svc = svc
        self.stream = stream
        self.text = text
        self.client = client
        self.server_bound = server_bound  # the byte limit in force is the server's, not the client's
        self.limit_packets = limit_packets
        self.t0 = time.monotonic()
        ms = svc.limits.max_seconds
        self.deadline = self.t0 + ms if ms and ms > 0 else float("inf")
        self.last_progress = self.t0
        self.bytes = 0
        self.q: queue.Queue = queue.Queue(maxsize=max(1, svc.limits.queue_chunks))
        self.cancel = threading.Event()
        self.outcome: str | None = None
        self.abort_hook: Callable[[str], None] | None = None
        self.aborted: str | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._produce, name="steno-query", daemon=True)
        self._thread.start()

    # -- engine side ---------------------------------------------------------
    def _produce(self) -> None:
        lower_thread_priority()
        item = _END
        try:
            for chunk in self.stream:
                if not chunk:
                    continue
                if not self._put(chunk):
                    return
        except BaseException as e:  # handed to the sender, which reports it
            item = e
        finally:
            if self.cancel.is_set():
                close = getattr(self.stream, "close", None)
                if close:
                    try:
                        close()
                    except Exception:
                        pass
        self._put(item)

    def _put(self, item) -> bool:
        while not self.cancel.is_set():
            try:
                self.q.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    # -- sender side ---------------------------------------------------------
    @property
    def packets(self) -> int:
        return int(getattr(self.stream, "packets", 0) or 0)

    def _server_cut(self) -> bool:
        """The server's byte cap (not a limit the client asked for) stopped the answer."""
        if not (self.server_bound and getattr(self.stream, "truncated", False)):
            return False
        return not (self.limit_packets and self.packets >= self.limit_packets)

    @property
    def warnings(self) -> list[str]:
        return list(getattr(self.stream, "warnings", []) or [])

    @property
    def truncated(self) -> bool:
        return bool(getattr(self.stream, "truncated", False)) and not self._server_cut()

    def __iter__(self) -> Iterator[bytes]:
        lim = self.svc.limits
        try:
            while True:
                remaining = self.deadline - time.monotonic()
                if remaining <= 0:
                    raise QueryTimeout(f"query stopped after the server's limit of {lim.max_seconds:g} s "
                                       f"({self.bytes} bytes sent); narrow the query or its time range")
                try:
                    item = self.q.get(timeout=min(remaining, 0.5))
                except queue.Empty:
                    if self.aborted:
                        raise ClientGone(self.aborted)
                    continue
                if item is _END:
                    self._finish_checks()
                    self.outcome = self.outcome or "ok"
                    return
                if isinstance(item, BaseException):
                    raise item
                buf = [item]
                size = len(item)
                while size < lim.coalesce_bytes:
                    try:
                        nxt = self.q.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is _END or isinstance(nxt, BaseException):
                        self.q.put(nxt)  # queue has room: we just took from it
                        break
                    buf.append(nxt)
                    size += len(nxt)
                data = buf[0] if len(buf) == 1 else b"".join(buf)
                self.bytes += len(data)
                yield data
                self.last_progress = time.monotonic()
                if self.aborted:
                    raise ClientGone(self.aborted)
        except GeneratorExit:
            self.outcome = self.outcome or "cancelled: client went away"
            raise
        except ServerError as e:
            self.outcome = f"{e.kind}: {e}"
            raise
        except QueryError as e:
            self.outcome = f"invalid: {e}"
            raise
        except Exception as e:
            self.outcome = f"internal: {type(e).__name__}: {e}"
            raise
        finally:
            self.close()

    def _finish_checks(self) -> None:
        lim = self.svc.limits
        if self._server_cut():
            raise AnswerTooLarge(f"answer exceeds the server's limit of {lim.max_answer_bytes} bytes "
                                 f"({self.packets} packets, {self.bytes} bytes sent); narrow the query or "
                                 f"ask for less with a byte/packet limit")

    def close(self, outcome: str | None = None) -> None:
        if self._closed:
            return
        self._closed = True
        if outcome and not self.outcome:
            self.outcome = outcome
        self.cancel.set()
        self.svc._finished(self)


class QueryService:
    def __init__(self, stores: list, limits: Limits | None = None, audit: AuditLog | None = None,
                 engine=None, status_dir=None):
        self.stores = list(stores)
        self.limits = limits or Limits()
        self.audit = audit or AuditLog()
        self._engine = engine
        self.status_dir = status_dir
        self.counters = Counters()
        self.started = time.time()
        self._slots = threading.BoundedSemaphore(max(1, self.limits.max_concurrent))
        self._active: set[Answer] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watchdog = threading.Thread(target=self._watch, name="steno-watchdog", daemon=True)
        self._watchdog.start()

    @property
    def engine(self):
        if self._engine is None:
            from stenoxdp.indexer import engine

            self._engine = engine
        return self._engine

    def start(self, text: str, client: Client, *, limit_packets: int = 0, limit_bytes: int = 0,
              micros: bool = False, iface: str | None = None) -> Answer:
        """Admit and plan a query. Raises QueryError (bad query) or BusyError."""
        self.counters.add("queries")
        t0 = time.monotonic()

        def refuse(kind: str, e: Exception):
            self.counters.add(f"queries_{kind}")
            self.counters.add("queries_failed")
            self._audit(client, text, 0, 0, time.monotonic() - t0, f"{kind}: {e}")

        if limit_packets < 0 or limit_bytes < 0:
            e = QueryError("limits must be >= 0 (0 means no limit)")
            refuse("invalid", e)
            raise e
        if not text.strip():
            e = QueryError("empty query: give a query such as 'host 198.18.0.2' or 'after 10m ago'")
            refuse("invalid", e)
            raise e
        if len(text) > self.limits.max_query_chars:
            e = QueryError(f"query is {len(text)} characters; the server accepts at most {self.limits.max_query_chars}")
            refuse("invalid", e)
            raise e
        cap = self.limits.max_answer_bytes
        if cap and (limit_bytes == 0 or limit_bytes > cap):
            eff, server_bound = cap, True
        else:
            eff, server_bound = limit_bytes, False
        try:  # parses now (a bad query is told at once, even when the server is busy); runs lazily
            stream = self.engine.query(self.stores, text, limit_packets=limit_packets, limit_bytes=eff,
                                       micros=micros, iface=iface or None)
        except QueryError as e:
            refuse("invalid", e)
            raise
        except BaseException as e:
            self.counters.add("queries_failed")
            self._audit(client, text, 0, 0, time.monotonic() - t0, f"internal: {type(e).__name__}: {e}")
            raise
        wait = self.limits.slot_wait
        got = self._slots.acquire(timeout=wait) if wait > 0 else self._slots.acquire(blocking=False)
        if not got:
            e = BusyError(f"server busy: {self.limits.max_concurrent} queries are already running "
                          f"(the server's limit); retry later")
            refuse("busy", e)
            raise e
        a = Answer(self, stream, text, client, server_bound, limit_packets)
        with self._lock:
            self._active.add(a)
        self.counters.add("queries_active")
        return a

    def _finished(self, a: Answer) -> None:
        with self._lock:
            if a not in self._active:
                return
            self._active.discard(a)
        self._slots.release()
        self.counters.add("queries_active", -1)
        outcome = a.outcome or "cancelled: closed early"
        kind = outcome.split(":", 1)[0]
        if kind == "ok":
            self.counters.add("queries_ok")
        else:
            self.counters.add("queries_failed")
            if f"queries_{kind}" in self.counters.v:
                self.counters.add(f"queries_{kind}")
        self.counters.add("packets_sent", a.packets)
        self.counters.add("bytes_sent", a.bytes)
        self._audit(a.client, a.text, a.packets, a.bytes, time.monotonic() - a.t0, outcome,
                    truncated=a.truncated, warnings=len(a.warnings))

    def _audit(self, client: Client, text: str, packets: int, nbytes: int, seconds: float, outcome: str,
               **extra) -> None:
        fields = dict(proto=client.proto, client=client.subject, peer=client.peer, query=text,
                      packets=packets, bytes=nbytes, seconds=seconds, outcome=outcome)
        if extra.get("truncated"):
            fields["truncated"] = 1
        if extra.get("warnings"):
            fields["warnings"] = extra["warnings"]
        self.audit.line("query", **fields)

    def refused(self, client: Client, reason: str, counter: str = "refused_tls") -> None:
        self.counters.add(counter)
        self.audit.line("refused", proto=client.proto, client=client.subject, peer=client.peer, reason=reason)

    # -- watchdog ------------------------------------------------------------
    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            now = time.monotonic()
            with self._lock:
                active = list(self._active)
            for a in active:
                if a.aborted or a.abort_hook is None:
                    continue
                why = None
                if now > a.deadline + 2.0:
                    why = f"query exceeded the server's limit of {self.limits.max_seconds:g} s"
                elif now - a.last_progress > self.limits.send_timeout and a.q.full():
                    why = f"client accepted no data for {self.limits.send_timeout:g} s"
                if why:
                    a.aborted = why
                    a.outcome = a.outcome or (("timeout: " if "limit" in why else "cancelled: ") + why)
                    try:
                        a.abort_hook(why)
                    except Exception as e:  # the transport is already gone
                        log.debug("abort hook: %s", e)

    # -- information -----------------------------------------------------------
    def status(self) -> dict:
        return {"uptime_seconds": time.time() - self.started, "counters": self.counters.snapshot(),
                "limits": self.limits.as_dict(),
                "stores": [{"path": str(s.root), "ifaces": s.ifaces()} for s in self.stores]}

    def coverage(self) -> list[dict]:
        return list(self.engine.coverage(self.stores))

    def capture_filters(self) -> list[dict]:
        """Active capture filter per iface, from the capture daemon's status files
        (<status_dir>/<pid>.json, written by `stenoctl capture/run`)."""
        import json
        from pathlib import Path

        out = []
        if not self.status_dir:
            return out
        d = Path(self.status_dir)
        try:
            names = sorted(p for p in d.iterdir() if p.suffix == ".json" and p.stem.isdigit())
        except OSError:
            return out
        for p in names:
            try:
                doc = json.loads(p.read_text())
            except (OSError, ValueError):
                continue
            for i in doc.get("ifaces", []) or []:
                if isinstance(i, dict) and i.get("name"):
                    out.append({"iface": i["name"], "expression": i.get("filter") or "",
                                "hex": i.get("filter_hex") or "", "source": str(p)})
        return out

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            active = list(self._active)
        for a in active:
            a.cancel.set()
            if a.abort_hook:
                try:
                    a.abort_hook("server stopping")
                except Exception:
                    pass
        self.audit.close()

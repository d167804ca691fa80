"""The writer's receive loop in native code (native/sxdp_rx.c), bound once with
all ring pointers precomputed: one ctypes call runs many batches."""
from __future__ import annotations

import ctypes

import numpy as np

from . import lib


class RunResult(ctypes.Structure):
    _fields_ = [("nbytes", ctypes.c_uint64), ("wire_bytes", ctypes.c_uint64), ("last_ts", ctypes.c_uint64),
                ("nrecs", ctypes.c_uint32), ("ndone", ctypes.c_uint32), ("nbad", ctypes.c_uint32),
                ("batches", ctypes.c_uint32), ("reason", ctypes.c_uint32), ("_pad", ctypes.c_uint32)]


RUN_STAGED, RUN_ROOM, RUN_BUDGET, RUN_IDLE = 0, 1, 2, 3


def _declare(L: ctypes.CDLL) -> None:
    v, u32, u64 = ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint64
    L.sxdp_rx_run.argtypes = [v, u64, u64, v, v, v, u32, v, v, u32, u32, u32, u64, u64, u64, v, u64, u64, u64, v,
                              u32, ctypes.POINTER(RunResult)]
    L.sxdp_rx_run.restype = u32


def _ptr(a: np.ndarray) -> int:
    return a.ctypes.data


class RxBatcher:
    """rx = RxBatcher(xsk); res = rx.run(...): the writer's receive loop in native code."""

    def __init__(self, xsk):
        L = lib()
        _declare(L)
        self.run_fn = L.sxdp_rx_run
        self.run_res = RunResult()
        self.run_ref = ctypes.byref(self.run_res)
        self.umem, self.umem_len = _ptr(xsk.umem_np), xsk.umem_np.nbytes
        self.frame_mask = (~(xsk.frame_size - 1)) & 0xFFFFFFFFFFFFFFFF
        rx, fill = xsk.rx, xsk.fill
        self.rx_ring, self.rx_prod, self.rx_cons, self.rx_mask = _ptr(rx.ring), _ptr(rx.producer), _ptr(rx.consumer), rx.mask
        self.fill_ring, self.fill_prod, self.fill_mask = _ptr(fill.ring), _ptr(fill.producer), fill.mask
        self._keep = xsk

    def run(self, batch: int, max_rec: int, max_wait_ns: int, budget_ns: int, idle_ns: int, out_addr: int,
            out_room: int, stop_bytes: int, file_off: int, recs_addr: int, recs_room: int) -> RunResult:
        """Many batches in one call (see sxdp_rx_run): returns when stop_bytes are staged,
        room runs out, budget_ns is spent or the ring stayed empty for idle_ns."""
        self.run_fn(self.umem, self.umem_len, self.frame_mask, self.rx_ring, self.rx_prod, self.rx_cons,
                    self.rx_mask, self.fill_ring, self.fill_prod, self.fill_mask, batch, max_rec, max_wait_ns,
                    budget_ns, idle_ns, out_addr, out_room, stop_bytes, file_off, recs_addr, recs_room,
                    self.run_ref)
        return self.run_res

"""The writer's per-batch native call (native/sxdp_rx.c), bound once with all
ring and buffer pointers precomputed, so a batch costs one ctypes call."""
from __future__ import annotations

import ctypes

import numpy as np

from stenoxdp import layout

from . import lib


class RxResult(ctypes.Structure):
    _fields_ = [("nbytes", ctypes.c_uint64), ("wire_bytes", ctypes.c_uint64), ("last_ts", ctypes.c_uint64),
                ("ndone", ctypes.c_uint32), ("nbad", ctypes.c_uint32), ("avail", ctypes.c_uint32),
                ("_pad", ctypes.c_uint32)]


def _declare(L: ctypes.CDLL) -> None:
    v, u32, u64 = ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint64
    L.sxdp_rx_batch.argtypes = [v, u64, u64, v, v, v, u32, v, v, u32, u32, v, u64, u64, v, u32,
                                ctypes.POINTER(RxResult)]
    L.sxdp_rx_batch.restype = u64


def _ptr(a: np.ndarray) -> int:
    return a.ctypes.data


class RxBatcher:
    """rx = RxBatcher(xsk, recs_np); res = rx(max_n, out_addr, out_cap, file_off, rec_off)"""

    def __init__(self, xsk, recs: np.ndarray):
        if recs.dtype != layout.REC_DTYPE:
            raise TypeError("recs must be layout.REC_DTYPE")
        L = lib()
        _declare(L)
        self.fn = L.sxdp_rx_batch
        self.res = RxResult()
        self.res_ref = ctypes.byref(self.res)
        self.umem, self.umem_len = _ptr(xsk.umem_np), xsk.umem_np.nbytes
        self.frame_mask = (~(xsk.frame_size - 1)) & 0xFFFFFFFFFFFFFFFF
        rx, fill = xsk.rx, xsk.fill
        self.rx_ring, self.rx_prod, self.rx_cons, self.rx_mask = _ptr(rx.ring), _ptr(rx.producer), _ptr(rx.consumer), rx.mask
        self.fill_ring, self.fill_prod, self.fill_mask = _ptr(fill.ring), _ptr(fill.producer), fill.mask
        self.recs, self.recs_cap = _ptr(recs), len(recs)
        self.rec_size = recs.dtype.itemsize
        self._keep = (xsk, recs)

    def __call__(self, max_n: int, out_addr: int, out_cap: int, file_off: int, rec_off: int) -> RxResult:
        self.fn(self.umem, self.umem_len, self.frame_mask, self.rx_ring, self.rx_prod, self.rx_cons, self.rx_mask,
                self.fill_ring, self.fill_prod, self.fill_mask, max_n, out_addr, out_cap,
                file_off, self.recs + rec_off * self.rec_size, self.recs_cap - rec_off, self.res_ref)
        return self.res

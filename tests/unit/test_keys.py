"""Key encodings: byte order, ranges, array packing round trips."""
import numpy as np
import pytest

from stenoxdp.indexer import keys as K


def test_keys_sort_as_values():
    ks = [K.port_key(p, True) for p in (0, 1, 255, 256, 65535)]
    assert ks == sorted(ks)
    a = [K.addr_key(bytes([10, 0, 0, x]), False) for x in (1, 2, 200)]
    assert a == sorted(a)
    assert K.port_key(80, True)[0] != K.port_key(80, False)[0]
    assert K.addr_key(bytes(4), True)[0] != K.addr_key(bytes(4), False)[0]
    assert K.addr_key(bytes(16), True)[0] not in (K.T_SRC4, K.T_DST4)


def test_addr_range():
    lo, hi = K.addr_range(bytes([198, 18, 7, 9]), 16, True)
    assert lo == bytes([K.T_SRC4, 198, 18, 0, 0]) and hi == bytes([K.T_SRC4, 198, 18, 255, 255])
    lo, hi = K.addr_range(bytes([1, 2, 3, 4]), 32, False)
    assert lo == hi == bytes([K.T_DST4, 1, 2, 3, 4])
    lo, hi = K.addr_range(bytes(16), 0, True)
    assert lo[1:] == bytes(16) and hi[1:] == b"\xff" * 16


@pytest.mark.parametrize("vals", [[], [0], [5, 6, 7], [0, 300, 70000, 2**32 - 5], [70000, 70001, 70005]])
def test_positions_round_trip(vals):
    a = np.array(vals, np.int64)
    assert np.array_equal(K.decode_positions(K.encode_positions(a)), a)


def test_positions_narrowest_width():
    a = np.arange(0, 1000, 3)
    assert len(K.encode_positions(a)) == 1 + len(a)  # deltas fit one byte
    b = np.arange(100000, 101000, 3)
    assert len(K.encode_positions(b)) == 1 + 4 + len(b) - 1  # first as u32, deltas one byte
    assert np.array_equal(K.decode_positions(K.encode_positions(b)), b)


def test_chunk_round_trip():
    rng = np.random.default_rng(1)
    off = 24 + np.cumsum(rng.integers(76, 1600, 100))
    ts = 1_700_000_000_000_000_000 + np.cumsum(rng.integers(-1000, 10**9, 100))
    o, t, end = K.decode_chunk(K.encode_chunk(off, ts, int(off[-1]) + 99))
    assert np.array_equal(o, off) and np.array_equal(t, ts) and end == int(off[-1]) + 99


def test_describe():
    assert K.describe(K.addr_key(bytes([198, 18, 0, 1]), True)) == "src4:198.18.0.1"
    assert K.describe(K.META_VERSION) == "meta:version"


def test_union_of_many_values():
    rng = np.random.default_rng(2)
    arrays = [np.unique(rng.integers(0, n, size=k)) for n, k in ((300, 50), (70000, 400), (10, 3), (2**31, 5))]
    arrays.append(np.arange(500000, 500100))
    arrays.append(np.array([7]))
    vals = [K.encode_positions(a) for a in arrays]
    assert np.array_equal(K.decode_positions_union(vals), np.unique(np.concatenate(arrays)))
    assert len(K.decode_positions_union([])) == 0

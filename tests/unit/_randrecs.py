import numpy as np
from stenoxdp import layout
def rand_recs(n, seed=0, t0=1_700_000_000_000_000_000, sizes=(60, 1514)):
    rng = np.random.default_rng(seed)
    r = np.zeros(n, layout.REC_DTYPE)
    cap = rng.integers(sizes[0], sizes[1], n)
    r["caplen"] = cap; r["wirelen"] = cap
    r["offset"] = 24 + np.concatenate([[0], np.cumsum(cap + 16)[:-1]])
    r["ts_ns"] = t0 + np.cumsum(rng.integers(0, 2_000_000, n))
    kind = rng.integers(0, 10, n)
    fl = np.where(kind < 6, layout.F_IPV4, np.where(kind < 9, layout.F_IPV6, 0))
    ports = (kind < 9) & (rng.random(n) < 0.9)
    fl = fl | np.where(ports, layout.F_PORTS, 0)
    r["flags"] = fl
    ip4 = kind < 6
    pool4 = np.array([[198,18,0,i] for i in range(1,12)] + [[10,0,i,1] for i in range(5)], np.uint8)
    r["src"][ip4, :4] = pool4[rng.integers(0, len(pool4), ip4.sum())]
    r["dst"][ip4, :4] = pool4[rng.integers(0, len(pool4), ip4.sum())]
    ip6 = (kind >= 6) & (kind < 9)
    pool6 = np.zeros((6, 16), np.uint8); pool6[:, 0] = 0x20; pool6[:, 1] = 0x01; pool6[:, 2] = 0x0d; pool6[:, 3] = 0xb8; pool6[:, 15] = np.arange(1, 7)
    r["src"][ip6] = pool6[rng.integers(0, 6, ip6.sum())]
    r["dst"][ip6] = pool6[rng.integers(0, 6, ip6.sum())]
    r["proto"] = np.where(kind < 9, rng.choice([1, 6, 17, 58], n), 0)
    r["sport"] = np.where(ports, rng.choice([53, 80, 443, 1234, 40000, 65535], n), 0)
    r["dport"] = np.where(ports, rng.choice([53, 80, 443, 1234, 40000, 0], n), 0)
    nv = rng.choice([0, 0, 0, 1, 2], n); r["n_vlan"] = nv
    r["vlan"][:, 0] = np.where(nv > 0, rng.choice([10, 20, 4095], n), 0)
    r["vlan"][:, 1] = np.where(nv > 1, rng.choice([10, 30], n), 0)
    nm = rng.choice([0, 0, 0, 1], n); r["n_mpls"] = nm
    r["mpls"] = np.where(nm > 0, rng.choice([16, 1000, 1048575], n), 0)
    r["ethertype"] = np.where(ip4, 0x0800, np.where(ip6, 0x86dd, 0x0806))
    return r

"""Many clients at once over both transports: every answer complete and
identical; engine work runs at lower priority than the rest of the process."""
from __future__ import annotations

import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from stenoxdp.server.client import remote_query
from stenoxdp.server.core import QUERY_NICE

from .test_server_common import C, certdir, curl, local_answer, server_store, start_server  # noqa: F401


def test_twenty_parallel_clients(server_store, certdir, tmp_path):
    if not shutil.which("curl"):
        pytest.skip("curl is needed (run `make setup`)")
    cdir = certdir[0]
    want = local_answer(server_store, f"host {C}")
    h = start_server(server_store, cdir, tmp_path, max_concurrent=20)
    start = threading.Barrier(20)

    def grpc_client(i):
        start.wait(10)
        return b"".join(remote_query(f"127.0.0.1:{h.grpc_port}", cdir, f"host {C}", timeout=60))

    def https_client(i):
        start.wait(10)
        r = curl(f"https://127.0.0.1:{h.port}/query", "-d", f"host {C}", cert_dir=cdir, ca=cdir / "ca_cert.pem",
                 timeout=60)
        assert r.returncode == 0, r.stderr
        return r.stdout

    try:
        with ThreadPoolExecutor(20) as ex:
            futs = [ex.submit(grpc_client if i % 2 else https_client, i) for i in range(20)]
            answers = [f.result(timeout=90) for f in futs]
    finally:
        h.stop()
    assert all(a == want for a in answers)
    lines = [x for x in (tmp_path / "audit.log").read_text().splitlines() if " audit query " in x]
    assert len(lines) == 20 and all("outcome=ok" in x for x in lines)


def test_query_thread_runs_niced(server_store, certdir, tmp_path):
    from stenoxdp.indexer import engine as real

    seen = []

    class Spy:
        """The real engine; records the nice value of the thread that iterates its stream."""

        @staticmethod
        def query(*a, **kw):
            s = real.query(*a, **kw)

            class Wrapped:
                def __iter__(self):
                    seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
                    yield from s

                def __getattr__(self, k):
                    return getattr(s, k)

            return Wrapped()

        coverage = staticmethod(lambda stores: real.coverage(stores))

    from stenoxdp.server.daemon import serve

    h = serve([server_store], cdir := certdir[0], port=None, grpc_port=0, audit_stderr=False, engine=Spy)
    try:
        base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        got = b"".join(remote_query(f"127.0.0.1:{h.grpc_port}", cdir, f"host {C}", timeout=30))
    finally:
        h.stop()
    assert got == local_answer(server_store, f"host {C}")
    assert seen and seen[0] >= max(QUERY_NICE, base) and seen[0] > 0

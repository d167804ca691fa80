"""stenoxdp.proto: gRPC definitions and their generated Python stubs.

steno.proto is Stenographer's service (wire compatible); stenoxdp.proto is our
own API. The *_pb2*.py stubs are generated, not checked in: `make setup` runs
`python -m stenoxdp.proto build`, and `load()` regenerates them when they are
missing or older than the .proto files (the protobuf runtime must match the
grpcio-tools that generated them; both come from pyproject's dependencies).

    from stenoxdp.proto import load
    pb = load()            # pb.steno_pb2, pb.steno_pb2_grpc, pb.stenoxdp_pb2, pb.stenoxdp_pb2_grpc
"""
from __future__ import annotations

import hashlib
import importlib
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
PROTOS = ("steno", "stenoxdp")
STAMP = HERE / ".generated"
_lock = threading.Lock()
_loaded: SimpleNamespace | None = None


def _fingerprint() -> str:
    h = hashlib.sha256()
    for name in PROTOS:
        h.update((HERE / f"{name}.proto").read_bytes())
    try:
        import grpc_tools
        from importlib.metadata import version

        h.update(version("grpcio-tools").encode())
    except Exception:
        h.update(b"no-grpc-tools")
    return h.hexdigest()[:16]


def up_to_date() -> bool:
    try:
        stamp = STAMP.read_text().strip()
    except OSError:
        return False
    if not all((HERE / f"{n}_pb2.py").exists() and (HERE / f"{n}_pb2_grpc.py").exists() for n in PROTOS):
        return False
    return stamp == _fingerprint()


def build(out_dir: Path | None = None) -> list[Path]:
    """Generate the stubs with grpc_tools.protoc into out_dir (default: this package)."""
    from stenoxdp.errors import StenoError

    try:
        from grpc_tools import protoc
    except ImportError:
        raise StenoError("grpcio-tools is not installed, so the gRPC stubs cannot be generated: run `make setup`") from None
    import grpc_tools

    out = Path(out_dir or HERE)
    include = str(Path(grpc_tools.__file__).parent / "_proto")
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in PROTOS:
            shutil.copy(HERE / f"{name}.proto", Path(tmp) / f"{name}.proto")
        rc = protoc.main(["protoc", f"-I{tmp}", f"-I{include}", f"--python_out={tmp}", f"--grpc_python_out={tmp}"]
                         + [str(Path(tmp) / f"{n}.proto") for n in PROTOS])
        if rc != 0:
            raise StenoError(f"protoc failed (exit {rc}) on {', '.join(str(HERE / (n + '.proto')) for n in PROTOS)}")
        for name in PROTOS:
            for suffix in ("_pb2.py", "_pb2_grpc.py"):
                src = Path(tmp) / f"{name}{suffix}"
                text = src.read_text()
                # protoc writes `import steno_pb2 as ...`; make it package-relative
                text = re.sub(rf"^import {name}_pb2 as", f"from . import {name}_pb2 as", text, flags=re.M)
                dst = out / src.name
                tmpdst = dst.with_name("." + dst.name + ".tmp")
                tmpdst.write_text(text)
                os.replace(tmpdst, dst)
                written.append(dst)
    if out == HERE:
        STAMP.write_text(_fingerprint() + "\n")
    return written


def load() -> SimpleNamespace:
    """The generated modules, (re)built first when missing or stale."""
    global _loaded
    with _lock:
        if _loaded is not None:
            return _loaded
        if not up_to_date():
            try:
                build()
            except OSError as e:
                from stenoxdp.errors import StenoError

                raise StenoError(f"the gRPC stubs in {HERE} are missing or stale and cannot be written ({e.strerror}): "
                                 f"run `python -m stenoxdp.proto build` as the owner of the checkout") from None
            importlib.invalidate_caches()
        mods = {}
        for name in PROTOS:
            for suffix in ("_pb2", "_pb2_grpc"):
                mods[name + suffix] = importlib.import_module(f"{__name__}.{name}{suffix}")
        _loaded = SimpleNamespace(**mods)
        return _loaded

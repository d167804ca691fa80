"""bpf/sxdp.h vs its Python mirror (stenoxdp.layout): compile the header with
gcc into a tiny program that prints every struct size, every field's offset
and size, and every #define, and compare with layout.MIRRORS / CONSTANTS.
Needs only gcc (no root), so it is not marked kernel."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from stenoxdp import layout

BPF_DIR = Path(__file__).resolve().parents[2] / "bpf"
HEADER = BPF_DIR / "sxdp.h"

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is missing (run `make setup`)")


def _program() -> str:
    lines = ["#include <stdio.h>", "#include <stddef.h>", '#include "sxdp.h"', "int main(void) {"]
    for struct, dt in layout.MIRRORS.items():
        lines.append(f'printf("size {struct} %zu\\n", sizeof(struct {struct}));')
        for name in dt.names:
            lines.append(f'printf("off {struct}.{name} %zu\\n", offsetof(struct {struct}, {name}));')
            lines.append(f'printf("fsize {struct}.{name} %zu\\n", sizeof(((struct {struct} *)0)->{name}));')
    for name in layout.CONSTANTS:
        lines.append(f'printf("const {name} %lld\\n", (long long)({name}));')
    lines += ["return 0;", "}"]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def facts(tmp_path_factory) -> dict[str, int]:
    d = tmp_path_factory.mktemp("layout")
    src, exe = d / "layout.c", d / "layout"
    src.write_text(_program())
    r = subprocess.run(["gcc", "-Wall", "-Werror", f"-I{BPF_DIR}", "-o", str(exe), str(src)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    facts = {}
    for line in out.splitlines():
        kind, key, val = line.split()
        facts[f"{kind} {key}"] = int(val)
    return facts


@pytest.mark.parametrize("struct", sorted(layout.MIRRORS))
def test_struct_size_and_fields(facts, struct):
    dt = layout.MIRRORS[struct]
    assert facts[f"size {struct}"] == dt.itemsize
    for name in dt.names:
        fdt, off = dt.fields[name][:2]
        assert facts[f"off {struct}.{name}"] == off, f"{struct}.{name} offset"
        assert facts[f"fsize {struct}.{name}"] == fdt.itemsize, f"{struct}.{name} size"


def test_struct_fields_complete():
    """Every field the header declares has a mirror (and no extra)."""
    text = HEADER.read_text()
    for struct, dt in layout.MIRRORS.items():
        body = re.search(r"struct %s \{(.*?)\};" % struct, text, re.S).group(1)
        body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
        names = re.findall(r"__u(?:8|16|32|64)\s+(\w+)", body)
        assert names == list(dt.names), struct


def test_constants(facts):
    for name, val in layout.CONSTANTS.items():
        assert facts[f"const {name}"] == val, name


def test_every_define_is_mirrored():
    text = HEADER.read_text()
    defines = set(re.findall(r"^#define (SXDP_\w+)[ \t]+\S", text, re.M))
    assert defines - set(layout.CONSTANTS) == set(), "header #defines missing from layout.CONSTANTS"


def test_counter_names():
    assert len(layout.COUNTER_NAMES) == layout.NCOUNTERS
    for i, name in enumerate(layout.COUNTER_NAMES):
        assert getattr(layout, "C_" + name.upper()) == i


def test_meta_ends_with_pcap_header():
    """The last 16 bytes of the metadata are a pcap record header in pcap's order."""
    dt = layout.META_DTYPE
    assert [dt.fields[n][1] for n in ("ts_sec", "ts_nsec", "caplen", "len")] == [16, 20, 24, 28]
    assert dt.itemsize == layout.META_LEN == 32

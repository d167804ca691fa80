"""Classic BPF for capture filters: compile, parse, check, print, translate.

A capture filter is written in the pcap-filter language (what tcpdump takes)
or given as Stenographer's hex form. Either way it becomes a list of classic
BPF instructions (`Insn`), which is checked here and translated into C that
the XDP program calls on every frame before the copy:

    compile_expr('not port 22')      -> [Insn, ...]      (libpcap via ctypes)
    parse_hex('0028000000000000c...') -> [Insn, ...]     (stenotype --filter=HEX)
    validate(insns)                                       (raises FilterError)
    disassemble(insns)               -> text like `tcpdump -d`
    to_hex(insns)                    -> Stenographer's hex form
    filter_c(insns)                  -> C text defining sxdp_filter()
    Filter.from_expr / from_hex      -> all of the above in one object

The translation keeps classic BPF's semantics exactly (libpcap's own
interpreter, pcap_offline_filter, is the reference, and a differential test
checks the two agree): A and X start at 0; loads are big-endian; a load that
reaches past the end of the frame, and a division or modulo by X == 0, reject
the packet; a shift by X >= 32 gives 0 (as libpcap's interpreter does); a
non-zero return value means "capture" (the snap length is ignored: whole frames
are captured). Anything that cannot be translated faithfully is a FilterError
when the filter is set, never a silently different filter.

The C is verifier-friendly: classic BPF only jumps forward, so the program is a
DAG; every instruction becomes a labelled block and jumps become gotos; every
packet load has its own explicit bounds check against data_end, with variable
(X-relative) offsets first bounded to SXDP_FILTER_MAXOFF so the verifier knows
the range. Linear frame data in XDP is at most a page, so frames are far
shorter than that bound and the bound never changes a verdict.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import re
import threading
from dataclasses import dataclass

from .errors import FilterError

# ---- opcodes (linux/filter.h, pcap/bpf.h) ---------------------------------
LD, LDX, ST, STX, ALU, JMP, RET, MISC = 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07
W, H, B = 0x00, 0x08, 0x10
IMM, ABS, IND, MEM, LEN, MSH = 0x00, 0x20, 0x40, 0x60, 0x80, 0xA0
ADD, SUB, MUL, DIV, OR, AND, LSH, RSH, NEG, MOD, XOR = (
    0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0x90, 0xA0)
JA, JEQ, JGT, JGE, JSET = 0x00, 0x10, 0x20, 0x30, 0x40
K, X = 0x00, 0x08
RET_A = 0x10
TAX, TXA = 0x00, 0x80

MAXINSNS = 4096          # BPF_MAXINSNS: the kernel's and libpcap's limit
MEMWORDS = 16            # BPF_MEMWORDS: scratch memory M[0..15]
DLT_EN10MB = 1
SNAPLEN = 262144
PCAP_NETMASK_UNKNOWN = 0xFFFFFFFF
SKF_AD_OFF = 0xFFFFF000  # -0x1000: Linux "ancillary data" loads start here
SKF_AD_VLAN_TAG = 44
SKF_AD_VLAN_TAG_PRESENT = 48
# Bound on variable load offsets in the generated C (see module doc).
MAXOFF = 0x7FFF

_ALU_OPS = {ADD: ("add", "+"), SUB: ("sub", "-"), MUL: ("mul", "*"), DIV: ("div", "/"),
            MOD: ("mod", "%"), AND: ("and", "&"), OR: ("or", "|"), XOR: ("xor", "^"),
            LSH: ("lsh", "<<"), RSH: ("rsh", ">>")}
_JMP_OPS = {JEQ: ("jeq", "=="), JGT: ("jgt", ">"), JGE: ("jge", ">="), JSET: ("jset", "&")}
_SIZE = {W: 4, H: 2, B: 1}
_LDNAME = {W: "ld", H: "ldh", B: "ldb"}


@dataclass(frozen=True)
class Insn:
    code: int
    jt: int
    jf: int
    k: int


def _cls(c: int) -> int:
    return c & 0x07


# ---- validation ------------------------------------------------------------

def _known(code: int) -> bool:
    cls = _cls(code)
    if cls == LD:
        mode, size = code & 0xE0, code & 0x18
        if mode in (ABS, IND):
            return size in (W, H, B) and code == (LD | size | mode)
        return code in (LD | W | IMM, LD | W | MEM, LD | W | LEN)
    if cls == LDX:
        return code in (LDX | W | IMM, LDX | W | MEM, LDX | W | LEN, LDX | B | MSH)
    if cls in (ST, STX):
        return code == cls
    if cls == ALU:
        op, src = code & 0xF0, code & 0x08
        if op == NEG:
            return code == ALU | NEG
        return op in _ALU_OPS and code == (ALU | op | src)
    if cls == JMP:
        op, src = code & 0xF0, code & 0x08
        if op == JA:
            return code == JMP | JA
        return op in _JMP_OPS and code == (JMP | op | src)
    if cls == RET:
        return code in (RET | K, RET | RET_A)
    if cls == MISC:
        return code in (MISC | TAX, MISC | TXA)
    return False


def validate(insns: list[Insn]) -> None:
    """Check a classic BPF program the way the kernel and libpcap do; raise
    FilterError naming the first problem."""
    n = len(insns)
    if n == 0:
        raise FilterError("filter program is empty: give at least one instruction ending in ret")
    if n > MAXINSNS:
        raise FilterError(f"filter program has {n} instructions; the limit is {MAXINSNS}: simplify the filter")
    for pc, i in enumerate(insns):
        where = f"instruction {pc} (code 0x{i.code:04x})"
        if not (0 <= i.code <= 0xFFFF and 0 <= i.jt <= 255 and 0 <= i.jf <= 255 and 0 <= i.k <= 0xFFFFFFFF):
            raise FilterError(f"{where}: field out of range")
        if not _known(i.code):
            raise FilterError(f"{where}: unknown or unsupported classic BPF opcode")
        cls = _cls(i.code)
        if cls == JMP:
            if (i.code & 0xF0) == JA:
                if i.k >= 0x80000000:
                    raise FilterError(f"{where}: backward jump (a loop, as libpcap makes for `protochain`) "
                                      "cannot run in XDP: use `ip6 proto N` / `ip proto N` instead")
                if pc + 1 + i.k >= n:
                    raise FilterError(f"{where}: jump target {pc + 1 + i.k} is past the end of the program")
            elif pc + 1 + i.jt >= n or pc + 1 + i.jf >= n:
                raise FilterError(f"{where}: jump target past the end of the program")
        if i.code in (LD | W | MEM, LDX | W | MEM, ST, STX) and i.k >= MEMWORDS:
            raise FilterError(f"{where}: scratch memory index {i.k} is out of range 0..{MEMWORDS - 1}")
        if i.code in (ALU | DIV | K, ALU | MOD | K) and i.k == 0:
            raise FilterError(f"{where}: division by constant zero")
        if i.code in (ALU | LSH | K, ALU | RSH | K) and i.k >= 32:
            # libpcap's optimizer never emits this; its value differs between
            # interpreters, so refuse it rather than guess.
            raise FilterError(f"{where}: shift by constant {i.k} (>= 32) is not supported")
        if cls == LD and (i.code & 0xE0) == ABS and i.k >= SKF_AD_OFF:
            if i.k - SKF_AD_OFF not in (SKF_AD_VLAN_TAG, SKF_AD_VLAN_TAG_PRESENT):
                raise FilterError(f"{where}: the filter reads Linux socket metadata (ancillary load "
                                  f"k=0x{i.k:x}, e.g. from `inbound`, `outbound`, `ifindex`), which XDP "
                                  "does not have: filter on packet contents only")
    if _cls(insns[-1].code) != RET:
        raise FilterError("filter program does not end in ret: it is truncated or not a classic BPF program")
    _check_scratch(insns)


def _check_scratch(insns: list[Insn]) -> None:
    """Refuse a read of scratch memory M[k] that some path reaches before any
    store to M[k] -- as the kernel's classic BPF checker does. libpcap's
    interpreter reads stack garbage there, so no translation could match it.
    (libpcap emits such code for e.g. `geneve 1 or port 53`: the offsets a
    `geneve` computes are used by later terms even when it did not match.)"""
    full = (1 << MEMWORDS) - 1
    known = [full] * len(insns)    # slots stored on every path reaching pc
    known[0] = 0
    reached = [False] * len(insns)
    reached[0] = True
    for pc, i in enumerate(insns):
        if not reached[pc]:
            continue
        m = known[pc]
        if i.code in (LD | W | MEM, LDX | W | MEM) and not (m >> i.k) & 1:
            raise FilterError(f"instruction {pc} reads scratch memory M[{i.k}] before any path stores it; "
                              "the kernel refuses such a program and libpcap's own result is undefined "
                              "(libpcap emits this for `geneve`/`vxlan` inside `or`/`not`): rewrite the filter")
        if i.code in (ST, STX):
            m |= 1 << i.k
        cls = _cls(i.code)
        if cls == RET:
            continue
        if cls == JMP:
            succ = [pc + 1 + i.k] if (i.code & 0xF0) == JA else [pc + 1 + i.jt, pc + 1 + i.jf]
        else:
            succ = [pc + 1]
        for t in succ:
            known[t] &= m
            reached[t] = True


# ---- libpcap ---------------------------------------------------------------

class _BpfInsn(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint32)]


class _BpfProgram(ctypes.Structure):
    _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.POINTER(_BpfInsn))]


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _PktHdr(ctypes.Structure):
    _fields_ = [("ts", _Timeval), ("caplen", ctypes.c_uint32), ("len", ctypes.c_uint32)]


_lib = None
_lock = threading.Lock()   # pcap_compile is not reentrant in older libpcaps


def libpcap():
    global _lib
    if _lib is None:
        name = ctypes.util.find_library("pcap") or "libpcap.so.0.8"
        try:
            lib = ctypes.CDLL(name)
        except OSError as e:
            raise FilterError(f"libpcap is not installed ({e}): install libpcap0.8 (make setup)") from None
        lib.pcap_open_dead.restype = ctypes.c_void_p
        lib.pcap_open_dead.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.pcap_compile.restype = ctypes.c_int
        lib.pcap_compile.argtypes = [ctypes.c_void_p, ctypes.POINTER(_BpfProgram), ctypes.c_char_p,
                                     ctypes.c_int, ctypes.c_uint32]
        lib.pcap_geterr.restype = ctypes.c_char_p
        lib.pcap_geterr.argtypes = [ctypes.c_void_p]
        lib.pcap_freecode.argtypes = [ctypes.POINTER(_BpfProgram)]
        lib.pcap_close.argtypes = [ctypes.c_void_p]
        lib.pcap_offline_filter.restype = ctypes.c_int
        lib.pcap_offline_filter.argtypes = [ctypes.POINTER(_BpfProgram), ctypes.POINTER(_PktHdr), ctypes.c_char_p]
        lib.bpf_image.restype = ctypes.c_char_p
        lib.bpf_image.argtypes = [ctypes.POINTER(_BpfInsn), ctypes.c_int]
        _lib = lib
    return _lib


def compile_expr(expr: str, optimize: bool = True) -> list[Insn]:
    """pcap-filter expression -> classic BPF for Ethernet (libpcap's
    pcap_compile on a dead handle, netmask unknown)."""
    if not expr.strip():
        raise FilterError("empty filter expression: give a pcap-filter expression such as 'not port 22'")
    lib = libpcap()
    with _lock:
        p = lib.pcap_open_dead(DLT_EN10MB, SNAPLEN)
        if not p:
            raise FilterError("libpcap could not open a dead handle")
        try:
            prog = _BpfProgram()
            if lib.pcap_compile(p, ctypes.byref(prog), expr.encode(), 1 if optimize else 0,
                                PCAP_NETMASK_UNKNOWN) != 0:
                msg = (lib.pcap_geterr(p) or b"syntax error").decode(errors="replace")
                raise FilterError(f"bad filter expression {expr!r}: {msg}")
            try:
                out = [Insn(prog.bf_insns[i].code, prog.bf_insns[i].jt, prog.bf_insns[i].jf, prog.bf_insns[i].k)
                       for i in range(prog.bf_len)]
            finally:
                lib.pcap_freecode(ctypes.byref(prog))
        finally:
            lib.pcap_close(p)
    validate(out)
    return out


class PcapMatcher:
    """libpcap's own interpreter on a program: the reference verdict."""

    def __init__(self, insns: list[Insn]):
        self._arr = (_BpfInsn * len(insns))(*[_BpfInsn(i.code, i.jt, i.jf, i.k) for i in insns])
        self._prog = _BpfProgram(len(insns), self._arr)
        self._hdr = _PktHdr()
        self._lib = libpcap()

    def __call__(self, frame: bytes, wirelen: int | None = None) -> int:
        self._hdr.caplen = len(frame)
        self._hdr.len = len(frame) if wirelen is None else wirelen
        return self._lib.pcap_offline_filter(ctypes.byref(self._prog), ctypes.byref(self._hdr), frame)


def pcap_image(insns: list[Insn]) -> list[str]:
    """libpcap's own bpf_image() lines (the reference for disassemble)."""
    lib = libpcap()
    out = []
    for n, i in enumerate(insns):
        b = _BpfInsn(i.code, i.jt, i.jf, i.k)
        out.append(lib.bpf_image(ctypes.byref(b), n).decode())
    return out


# ---- text forms ------------------------------------------------------------

def to_hex(insns: list[Insn]) -> str:
    """Stenographer's form: per instruction %04x%02x%02x%08x (code, jt, jf, k),
    concatenated -- what stenotype --filter parses."""
    return "".join(f"{i.code:04x}{i.jt:02x}{i.jf:02x}{i.k:08x}" for i in insns)


_HEXRE = re.compile(r"^[0-9a-fA-F]+$")


def parse_hex(text: str) -> list[Insn]:
    """Stenographer's --filter=HEX. Accepted: the form stenotype parses (16 hex
    digits per instruction: 4 code, 2 jt, 2 jf, 8 k; whitespace between
    instructions allowed), and the output of Stenographer's compile_bpf.sh
    (space-separated variable-width hex numbers, four per instruction)."""
    s = text.strip()
    if s.lower().startswith("--filter="):
        s = s[len("--filter="):].strip()
    if not s:
        raise FilterError("empty filter hex: give the hex form printed by `stenoctl filter compile`")
    toks = s.split()
    insns: list[Insn] = []
    if all(len(t) % 16 == 0 for t in toks):
        s2 = "".join(toks)
        if not _HEXRE.match(s2):
            bad = next(c for c in s2 if c not in "0123456789abcdefABCDEF")
            raise FilterError(f"bad filter hex: {bad!r} is not a hex digit")
        for o in range(0, len(s2), 16):
            insns.append(Insn(int(s2[o:o + 4], 16), int(s2[o + 4:o + 6], 16), int(s2[o + 6:o + 8], 16),
                              int(s2[o + 8:o + 16], 16)))
    elif len(toks) > 1:
        if len(toks) % 4:
            raise FilterError(f"bad filter hex: {len(toks)} numbers is not a whole number of instructions "
                              "(4 per instruction: code jt jf k)")
        vals = []
        for t in toks:
            t2 = t[2:] if t.lower().startswith("0x") else t
            if not t2 or not _HEXRE.match(t2):
                raise FilterError(f"bad filter hex: {t!r} is not a hex number")
            vals.append(int(t2, 16))
        for o in range(0, len(vals), 4):
            c, jt, jf, k = vals[o:o + 4]
            if c > 0xFFFF or jt > 255 or jf > 255 or k > 0xFFFFFFFF:
                raise FilterError(f"bad filter hex: instruction {o // 4} has a field out of range")
            insns.append(Insn(c, jt, jf, k))
    else:
        raise FilterError(f"bad filter hex: length {len(s)} is not a multiple of 16 "
                          "(each instruction is 16 hex digits: code jt jf k)")
    validate(insns)
    return insns


def _operand(n: int, i: Insn) -> tuple[str, str]:
    c, k = i.code, i.k
    cls = _cls(c)
    ks = k if k < 0x80000000 else k - (1 << 32)    # libpcap prints %d of an int
    if cls == RET:
        return "ret", "" if c == RET | RET_A else f"#{k}"
    if cls == LD:
        mode, size = c & 0xE0, c & 0x18
        if mode == ABS:
            return _LDNAME[size], f"[{k}]"
        if mode == IND:
            return _LDNAME[size], f"[x + {k}]"
        if mode == IMM:
            return "ld", f"#0x{k:x}"
        if mode == LEN:
            return "ld", "#pktlen"
        return "ld", f"M[{k}]"
    if cls == LDX:
        mode = c & 0xE0
        if mode == IMM:
            return "ldx", f"#0x{k:x}"
        if mode == LEN:
            return "ldx", "#pktlen"
        if mode == MSH:
            return "ldxb", f"4*([{k}]&0xf)"
        return "ldx", f"M[{k}]"
    if cls == ST:
        return "st", f"M[{k}]"
    if cls == STX:
        return "stx", f"M[{k}]"
    if cls == ALU:
        op = c & 0xF0
        if op == NEG:
            return "neg", ""
        name = _ALU_OPS[op][0]
        if c & X:
            return name, "x"
        if op in (AND, OR, XOR):
            return name, f"#0x{k:x}"
        return name, f"#{ks}"
    if cls == JMP:
        op = c & 0xF0
        if op == JA:
            return "ja", f"{n + 1 + k}"
        return _JMP_OPS[op][0], "x" if c & X else f"#0x{k:x}"
    return "tax" if c == MISC | TAX else "txa", ""


def disassemble(insns: list[Insn]) -> str:
    """The program as `tcpdump -d` prints it."""
    lines = []
    for n, i in enumerate(insns):
        op, arg = _operand(n, i)
        if _cls(i.code) == JMP and (i.code & 0xF0) != JA:
            lines.append(f"({n:03d}) {op:<8s} {arg:<16s} jt {n + 1 + i.jt}\tjf {n + 1 + i.jf}")
        else:
            lines.append(f"({n:03d}) {op:<8s} {arg}")
    return "\n".join(lines)


def ddd(insns: list[Insn]) -> str:
    """The program as `tcpdump -ddd` prints it (count, then code jt jf k in decimal)."""
    return "\n".join([str(len(insns))] + [f"{i.code} {i.jt} {i.jf} {i.k}" for i in insns])


# ---- translation to C --------------------------------------------------------

C_PRELUDE = """\
#ifndef SXDP_FILTER_PRELUDE
#define SXDP_FILTER_PRELUDE
/* generated by stenoxdp.cbpf: classic BPF capture filter, translated */
#define SXDP_FILTER_MAXOFF 0x%x
#define SXDP_LD1(p) ((__u32)(p)[0])
#define SXDP_LD2(p) (((__u32)(p)[0] << 8) | (__u32)(p)[1])
#define SXDP_LD4(p) (((__u32)(p)[0] << 24) | ((__u32)(p)[1] << 16) | ((__u32)(p)[2] << 8) | (__u32)(p)[3])
#endif
""" % MAXOFF


def _jump_targets(insns: list[Insn]) -> set[int]:
    t = set()
    for pc, i in enumerate(insns):
        if _cls(i.code) == JMP:
            if (i.code & 0xF0) == JA:
                t.add(pc + 1 + i.k)
            else:
                t.add(pc + 1 + i.jt)
                t.add(pc + 1 + i.jf)
    return t


def _load(dst: str, size: int, k: int, pc: int, indexed: bool) -> list[str]:
    ld = f"SXDP_LD{size}"
    if not indexed:
        if k > MAXOFF:      # can never be inside a frame
            return [f"return 0; /* [{k}] is beyond any frame */"]
        return [f"if (pkt + {k} + {size} > end) return 0;", f"{dst} = {ld}(pkt + {k});"]
    # The compare rejects exactly what classic BPF rejects; the barrier + mask
    # (a no-op after it) bounds the very register used for the pointer, since
    # clang may otherwise test one copy of the offset and add another.
    return [f"{{ __u64 o{pc} = (__u64)X + {k}u;",
            f"  if (o{pc} > SXDP_FILTER_MAXOFF) return 0;",
            f'  asm volatile("" : "+r"(o{pc}));',
            f"  o{pc} &= SXDP_FILTER_MAXOFF;",
            f"  const __u8 *p{pc} = pkt + o{pc};",
            f"  if (p{pc} + {size} > end) return 0;",
            f"  {dst} = {ld}(p{pc}); }}"]


def _insn_c(pc: int, i: Insn) -> list[str]:
    c, k = i.code, i.k
    cls = _cls(c)
    if cls == LD:
        mode, size = c & 0xE0, c & 0x18
        if mode == ABS and k >= SKF_AD_OFF:
            # Linux ancillary data, as `tcpdump -ddd -i IFACE 'vlan ...'` emits:
            # in XDP a VLAN tag is still in the frame, so "tag in metadata"
            # is always false and libpcap's code falls back to the inline tag.
            return [f"A = 0; /* ancillary {'vlan_tci' if k - SKF_AD_OFF == SKF_AD_VLAN_TAG else 'vlanp'}: tags are inline in XDP */"]
        if mode == ABS:
            return _load("A", _SIZE[size], k, pc, False)
        if mode == IND:
            return _load("A", _SIZE[size], k, pc, True)
        if mode == IMM:
            return [f"A = 0x{k:x}u;"]
        if mode == LEN:
            return ["A = wirelen;"]
        return [f"A = m{k};"]
    if cls == LDX:
        mode = c & 0xE0
        if mode == IMM:
            return [f"X = 0x{k:x}u;"]
        if mode == LEN:
            return ["X = wirelen;"]
        if mode == MSH:
            if k > MAXOFF:
                return [f"return 0; /* [{k}] is beyond any frame */"]
            return [f"if (pkt + {k} + 1 > end) return 0;", f"X = (SXDP_LD1(pkt + {k}) & 0xf) << 2;"]
        return [f"X = m{k};"]
    if cls == ST:
        return [f"m{k} = A;"]
    if cls == STX:
        return [f"m{k} = X;"]
    if cls == ALU:
        op = c & 0xF0
        if op == NEG:
            return ["A = 0u - A;"]
        sym = _ALU_OPS[op][1]
        if c & X:
            if op in (DIV, MOD):
                return ["if (X == 0) return 0;", f"A = A {sym} X;"]
            if op in (LSH, RSH):
                return [f"A = X < 32 ? A {sym} X : 0;"]
            return [f"A = A {sym} X;"]
        return [f"A = A {sym} 0x{k:x}u;"]
    if cls == JMP:
        op = c & 0xF0
        if op == JA:
            return [f"goto L{pc + 1 + k};"]
        rhs = "X" if c & X else f"0x{k:x}u"
        cond = f"(A & {rhs}) != 0" if op == JSET else f"A {_JMP_OPS[op][1]} {rhs}"
        return [f"if ({cond}) goto L{pc + 1 + i.jt}; else goto L{pc + 1 + i.jf};"]
    if cls == RET:
        if c == RET | RET_A:
            return ["return A != 0;"]
        return ["return 1;" if k else "return 0;"]
    return ["X = A;"] if c == MISC | TAX else ["A = X;"]


def to_c(insns: list[Insn], name: str = "sxdp_filter") -> str:
    """C for one filter: `static __always_inline int NAME(void *data, void
    *data_end, __u32 wirelen)`; non-zero = capture. Needs C_PRELUDE first."""
    validate(insns)
    targets = _jump_targets(insns)
    mems = sorted({i.k for i in insns if i.code in (ST, STX, LD | W | MEM, LDX | W | MEM)})
    body = []
    for pc, i in enumerate(insns):
        label = f"L{pc}:" if pc in targets else f"/* {pc} */"
        lines = _insn_c(pc, i)
        body.append(f"{label} {lines[0]}")
        body.extend("    " + ln for ln in lines[1:])
    decl = ["const __u8 *pkt = (const __u8 *)data;", "const __u8 *end = (const __u8 *)data_end;",
            "__u32 A = 0, X = 0;"]
    decl += [f"__u32 m{m} = 0; (void)m{m};" for m in mems]
    # wirelen is usually data_end - data: hide that from clang, or it folds
    # `data + (wirelen - k)` into pointer arithmetic the verifier refuses
    decl += ['asm volatile("" : "+r"(wirelen));', "(void)pkt; (void)end; (void)A; (void)X;"]
    return (f"static __always_inline int {name}(void *data, void *data_end, __u32 wirelen)\n{{\n"
            + "".join(f"    {d}\n" for d in decl)
            + "".join(f"    {b}\n" for b in body)
            + "}\n")


def filter_c(insns: list[Insn], source: str = "") -> str:
    """The text bpfprog.render(filter_c=...) prepends to the XDP program:
    defines SXDP_FILTER_DEFINED and sxdp_filter()."""
    head = ""
    if source:
        head = "/* capture filter: " + source.replace("*/", "* /").replace("\n", " ") + " */\n"
    return head + "#define SXDP_FILTER_DEFINED 1\n" + C_PRELUDE + to_c(insns, "sxdp_filter")


# ---- one object ----------------------------------------------------------------

@dataclass
class Filter:
    insns: list[Insn]
    source: str          # the expression, or "hex:<...>"
    expr: str | None = None

    @classmethod
    def from_expr(cls, expr: str) -> "Filter":
        return cls(compile_expr(expr), expr, expr)

    @classmethod
    def from_hex(cls, text: str) -> "Filter":
        ins = parse_hex(text)
        return cls(ins, f"hex:{to_hex(ins)}")

    @classmethod
    def from_args(cls, expr: str | None = None, hexform: str | None = None) -> "Filter | None":
        """From --filter / --filter-hex (at most one); None when neither."""
        if expr and hexform:
            raise FilterError("give either --filter or --filter-hex, not both")
        if expr:
            return cls.from_expr(expr)
        if hexform:
            return cls.from_hex(hexform)
        return None

    @property
    def hex(self) -> str:
        return to_hex(self.insns)

    def disassemble(self) -> str:
        return disassemble(self.insns)

    def c_source(self) -> str:
        return filter_c(self.insns, self.source)


# ---- many filters in one program (tests, `stenoctl filter test`) ---------------

def harness_source(progs: list[list[Insn]]) -> str:
    """A standalone XDP source with one entry point per filter, `sxdp_f<N>`,
    returning XDP_DROP (1) for "capture" and XDP_PASS (2) for "filtered":
    one clang compile for many filters, each loaded (verified) on its own."""
    parts = ["#include <uapi/linux/bpf.h>\n", C_PRELUDE]
    for n, p in enumerate(progs):
        parts.append(to_c(p, f"sxdp_filt{n}"))
        parts.append(f"int sxdp_f{n}(struct xdp_md *ctx) {{\n"
                     "    void *data = (void *)(long)ctx->data, *data_end = (void *)(long)ctx->data_end;\n"
                     f"    return sxdp_filt{n}(data, data_end, (__u32)(data_end - data)) ? XDP_DROP : XDP_PASS;\n"
                     "}\n")
    return "".join(parts)


class _TestRunAttr(ctypes.Structure):
    _fields_ = [("prog_fd", ctypes.c_uint32), ("retval", ctypes.c_uint32),
                ("data_size_in", ctypes.c_uint32), ("data_size_out", ctypes.c_uint32),
                ("data_in", ctypes.c_uint64), ("data_out", ctypes.c_uint64),
                ("repeat", ctypes.c_uint32), ("duration", ctypes.c_uint32),
                ("ctx_size_in", ctypes.c_uint32), ("ctx_size_out", ctypes.c_uint32),
                ("ctx_in", ctypes.c_uint64), ("ctx_out", ctypes.c_uint64),
                ("flags", ctypes.c_uint32), ("cpu", ctypes.c_uint32), ("batch_size", ctypes.c_uint32),
                ("_pad", ctypes.c_uint32)]


_libc = None
SYS_BPF = 321          # x86_64
BPF_PROG_TEST_RUN = 10
XDP_DROP, XDP_PASS = 1, 2


def prog_test_run(fd: int, frame: bytes) -> int:
    """Run a loaded XDP program once on `frame` (BPF_PROG_TEST_RUN); return
    its verdict. Frames must be 14 bytes .. about a page long."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(frame, len(frame))
    attr = _TestRunAttr(prog_fd=fd, data_size_in=len(frame), data_in=ctypes.addressof(buf), repeat=1)
    r = _libc.syscall(SYS_BPF, BPF_PROG_TEST_RUN, ctypes.byref(attr), ctypes.sizeof(attr))
    if r != 0:
        import os
        e = ctypes.get_errno()
        raise OSError(e, f"BPF_PROG_TEST_RUN on a {len(frame)}-byte frame: {os.strerror(e)}")
    return attr.retval


def prepare_frames(frames: list[bytes]) -> list[tuple[ctypes.Array, int]]:
    """Frames as ctypes buffers, built once for many test_run_many() calls."""
    return [(ctypes.create_string_buffer(f, len(f)), len(f)) for f in frames]


def test_run_many(fd: int, prepared: list[tuple[ctypes.Array, int]]) -> list[int]:
    """prog_test_run() over many prepared frames, reusing one attr block."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    attr = _TestRunAttr(prog_fd=fd, repeat=1)
    ref, size, call = ctypes.byref(attr), ctypes.sizeof(attr), _libc.syscall
    out = []
    for buf, n in prepared:
        attr.data_in = ctypes.addressof(buf)
        attr.data_size_in = n
        attr.data_size_out = 0        # the kernel wrote the last output size here
        if call(SYS_BPF, BPF_PROG_TEST_RUN, ref, size) != 0:
            import os
            e = ctypes.get_errno()
            raise OSError(e, f"BPF_PROG_TEST_RUN on a {n}-byte frame: {os.strerror(e)}")
        out.append(attr.retval)
    return out

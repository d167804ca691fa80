"""The query language: text -> AST (parse), AST -> per-record mask
(eval_records), AST -> tcpdump expression (to_pcap_filter), AST -> time window
(time_bounds), AST -> canonical text (format).

Grammar (keywords case-insensitive; docs/query-language.md is the reference):

    query   := unary (("and" | "&&" | "or" | "||") unary)*      equal precedence,
                                                                left to right
    unary   := ("not" | "!") unary | "(" query ")" | clause
    clause  := [dir] "host" ADDR | [dir] "net" ADDR "/" N | [dir] "net" ADDR "mask" MASK
             | [dir] "port" N | [dir] "portrange" N "-" N
             | "ip" "proto" N | "ip6" "proto" N | "proto" N | "ip" | "ip6"
             | "tcp" | "udp" | "icmp" | "icmp6" | "vlan" N | "mpls" N
             | "before" TIME | "after" TIME
    dir     := "src" | "dst" | "src or dst" | "dst or src" | "src and dst" | "dst and src"
    TIME    := RFC 3339 (2015-01-01T13:14:15Z, ...+01:00, fractional seconds to ns)
             | DURATION "ago"   DURATION = N unit, units s m h d, compounds (1h30m),
                                a space before the unit is allowed (45 m ago)

Stenographer's rule is kept: `a or b and c` means `(a or b) and c`. `not`
binds tighter than and/or. `src and dst host X` is `(src host X and dst host X)`.
`ip6 proto N` is `ip6 and ip proto N`.
"""
from __future__ import annotations

import calendar
import ipaddress
import re
import time
from dataclasses import dataclass
from typing import Union

import numpy as np

from .. import layout
from ..errors import QueryError

__all__ = [
    "Host", "Net", "Port", "Proto", "Icmp", "Icmp6", "Family", "Vlan", "Mpls", "Before", "After",
    "And", "Or", "Not", "Node", "parse", "eval_records", "to_pcap_filter", "time_bounds", "format",
    "format_query", "caret", "random_query", "random_ast", "QueryPool", "KNOWN_DIFFERENCES",
    "PCAP_EXACT_KINDS", "ALL_KINDS", "walk", "has_time", "depth", "render", "DIRS",
]

DIRS = ("any", "src", "dst")


# ---- AST ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Host:
    addr: bytes  # 4 (IPv4) or 16 (IPv6) bytes, network order
    dir: str = "any"


@dataclass(frozen=True)
class Net:
    addr: bytes  # host bits are zero (parse refuses others)
    prefix: int
    dir: str = "any"


@dataclass(frozen=True)
class Port:
    lo: int
    hi: int
    dir: str = "any"


@dataclass(frozen=True)
class Proto:
    proto: int  # IPv4 protocol or IPv6 final next header, either family


@dataclass(frozen=True)
class Icmp:
    """IPv4 protocol 1 only."""


@dataclass(frozen=True)
class Icmp6:
    """IPv6 next header 58 only."""


@dataclass(frozen=True)
class Family:
    v: int  # 4 or 6


@dataclass(frozen=True)
class Vlan:
    vid: int


@dataclass(frozen=True)
class Mpls:
    label: int


@dataclass(frozen=True)
class Before:
    ts_ns: int  # keeps ts < ts_ns


@dataclass(frozen=True)
class After:
    ts_ns: int  # keeps ts >= ts_ns


@dataclass(frozen=True)
class And:
    a: "Node"
    b: "Node"


@dataclass(frozen=True)
class Or:
    a: "Node"
    b: "Node"


@dataclass(frozen=True)
class Not:
    a: "Node"


Node = Union[Host, Net, Port, Proto, Icmp, Icmp6, Family, Vlan, Mpls, Before, After, And, Or, Not]
LEAVES = (Host, Net, Port, Proto, Icmp, Icmp6, Family, Vlan, Mpls, Before, After)


MAX_NESTING = 64  # '(' and 'not' levels in the text
MAX_DEPTH = 256  # levels of the tree (every consumer recurses)
LONG_RUN = 16  # a longer run of one operator is built as a balanced tree


def _balanced(cls, items: list):
    if len(items) == 1:
        return items[0]
    mid = len(items) // 2
    return cls(_balanced(cls, items[:mid]), _balanced(cls, items[mid:]))


def depth(node) -> int:
    """Levels of the tree (iterative, so any tree can be measured)."""
    best, stack = 0, [(node, 1)]
    while stack:
        n, d = stack.pop()
        best = max(best, d)
        if isinstance(n, (And, Or)):
            stack.append((n.a, d + 1))
            stack.append((n.b, d + 1))
        elif isinstance(n, Not):
            stack.append((n.a, d + 1))
    return best


def walk(node):
    """Every node of the tree, depth first, parents before children."""
    yield node
    if isinstance(node, (And, Or)):
        yield from walk(node.a)
        yield from walk(node.b)
    elif isinstance(node, Not):
        yield from walk(node.a)


def has_time(node) -> bool:
    return any(isinstance(n, (Before, After)) for n in walk(node))


# ---- limits ------------------------------------------------------------------------
MAX_PORT = 65535
MAX_VLAN = 4095
MAX_MPLS = (1 << 20) - 1
MAX_PROTO = 255

PROTO_NAMES = {"icmp": 1, "igmp": 2, "tcp": 6, "udp": 17, "gre": 47, "esp": 50, "ah": 51,
               "icmp6": 58, "sctp": 132}

UNIT_NS = {"s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000, "d": 86_400_000_000_000}

CLAUSE_WORDS = ("host", "net", "port", "portrange", "ip", "ip6", "proto", "tcp", "udp", "icmp", "icmp6",
                "vlan", "mpls", "before", "after", "src", "dst")
EXPECT_CLAUSE = ("a filter clause (host, net, port, portrange, ip proto, tcp, udp, icmp, icmp6, ip, "
                 "ip6, vlan, mpls, before, after, src/dst, not or '(')")


# ---- errors ------------------------------------------------------------------------
def caret(text: str, pos: int | None) -> str:
    """Two lines: the query and a caret under position pos (0-based)."""
    if pos is None:
        return text
    return f"{text}\n{' ' * max(0, min(pos, len(text)))}^"


# ---- tokens ------------------------------------------------------------------------
@dataclass(frozen=True)
class _Tok:
    kind: str  # word lp rp and or not end
    text: str
    pos: int

    @property
    def low(self) -> str:
        return self.text.lower()

    def shown(self) -> str:
        if self.kind == "end":
            return "end of query"
        return f"'{self.text}'"


_BREAK = set("()!&|")


def _tokens(text: str) -> list[_Tok]:
    out: list[_Tok] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
            continue
        if c == "(":
            out.append(_Tok("lp", c, i))
            i += 1
        elif c == ")":
            out.append(_Tok("rp", c, i))
            i += 1
        elif c == "!":
            out.append(_Tok("not", c, i))
            i += 1
        elif c in "&|":
            if i + 1 < n and text[i + 1] == c:
                out.append(_Tok("and" if c == "&" else "or", c * 2, i))
                i += 2
            else:
                word = "and" if c == "&" else "or"
                raise _err(text, i, f"a single '{c}' is not an operator; write '{c * 2}' or '{word}'")
        else:
            j = i
            while j < n and not text[j].isspace() and text[j] not in _BREAK:
                j += 1
            w = text[i:j]
            low = w.lower()
            kind = low if low in ("and", "or", "not") else "word"
            out.append(_Tok(kind, w, i))
            i = j
    out.append(_Tok("end", "", n))
    return out


def _err(text: str, pos: int, what: str) -> QueryError:
    return QueryError(f"at position {pos}: {what}", pos, detail=caret(text, pos))


# ---- parser ------------------------------------------------------------------------
_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+-])(\d{2}):(\d{2}))$"
)
_DUR = re.compile(r"^(?:\d+[smhdSMHD])+$")
_DUR_PART = re.compile(r"(\d+)([smhdSMHD])")


class _Parser:
    def __init__(self, text: str, now_ns: int | None):
        self.text = text
        self.toks = _tokens(text)
        self.i = 0
        self.depth = 0
        self._now = now_ns

    # helpers
    @property
    def tok(self) -> _Tok:
        return self.toks[self.i]

    def peek(self, k: int = 1) -> _Tok:
        return self.toks[min(self.i + k, len(self.toks) - 1)]

    def next(self) -> _Tok:
        t = self.toks[self.i]
        if t.kind != "end":
            self.i += 1
        return t

    def fail(self, tok: _Tok, what: str) -> QueryError:
        return _err(self.text, tok.pos, what)

    def now(self) -> int:
        if self._now is None:
            self._now = time.time_ns()
        return self._now

    # grammar
    def parse(self):
        if self.tok.kind == "end":
            raise _err(self.text, 0, "empty query: expected a filter clause such as 'host 198.18.0.1', "
                                     "'port 53' or 'after 10m ago'")
        node = self.expr()
        t = self.tok
        if t.kind == "rp":
            raise self.fail(t, "unbalanced ')': there is no '(' before it")
        if t.kind != "end":
            raise self.fail(t, f"expected 'and', 'or' or end of query, found {t.shown()}")
        d = depth(node)
        if d > MAX_DEPTH:
            raise _err(self.text, 0, f"the query is {d} levels deep (at most {MAX_DEPTH}): alternate 'and'/'or' "
                                     "less, or group with parentheses")
        return node

    def expr(self):
        left = self.unary()
        while self.tok.kind in ("and", "or"):
            kind = self.tok.kind
            run = []
            while self.tok.kind == kind:  # a run of one operator
                op = self.next()
                run.append(self.unary(after=op))
            cls = And if kind == "and" else Or
            if len(run) <= LONG_RUN:
                for right in run:
                    left = cls(left, right)
            else:  # long lists (e.g. hundreds of hosts): same meaning, depth log2(n)
                left = cls(left, _balanced(cls, run))
        return left

    def unary(self, after: _Tok | None = None):
        t = self.tok
        if t.kind in ("not", "lp"):
            self.depth += 1
            if self.depth > MAX_NESTING:
                raise self.fail(t, f"the query nests more than {MAX_NESTING} levels of '(' and 'not'")
            try:
                return self._nested(t)
            finally:
                self.depth -= 1
        if t.kind == "word":
            return self.clause()
        ctx = f" after '{after.text}'" if after is not None else ""
        if t.kind == "rp" and after is None and self.i > 0 and self.toks[self.i - 1].kind == "lp":
            raise self.fail(t, f"empty parentheses: expected {EXPECT_CLAUSE}")
        raise self.fail(t, f"expected {EXPECT_CLAUSE}{ctx}, found {t.shown()}")

    def _nested(self, t: _Tok):
        if t.kind == "not":
            self.next()
            return Not(self.unary(after=t))
        if t.kind == "lp":
            self.next()
            node = self.expr()
            c = self.tok
            if c.kind != "rp":
                if c.kind == "end":
                    raise self.fail(c, f"unbalanced '(': the '(' at position {t.pos} is never closed")
                raise self.fail(c, f"expected 'and', 'or' or ')' (closing the '(' at position {t.pos}), "
                                   f"found {c.shown()}")
            self.next()
            return node
        if t.kind == "word":
            return self.clause()
        ctx = f" after '{after.text}'" if after is not None else ""
        if t.kind == "rp" and after is None and self.i > 0 and self.toks[self.i - 1].kind == "lp":
            raise self.fail(t, f"empty parentheses: expected {EXPECT_CLAUSE}")
        raise self.fail(t, f"expected {EXPECT_CLAUSE}{ctx}, found {t.shown()}")

    def clause(self):
        t = self.tok
        k = t.low
        if k in ("src", "dst"):
            return self.directed()
        if k in ("host", "net", "port", "portrange"):
            return self.dir_clause("any")
        self.next()
        if k == "ip":
            if self.tok.kind == "word" and self.tok.low == "proto":
                return Proto(self.proto_num(self.next()))
            return Family(4)
        if k == "ip6":
            if self.tok.kind == "word" and self.tok.low == "proto":
                return And(Family(6), Proto(self.proto_num(self.next())))
            return Family(6)
        if k == "proto":
            return Proto(self.proto_num(t))
        if k == "tcp":
            return Proto(6)
        if k == "udp":
            return Proto(17)
        if k == "icmp":
            return Icmp()
        if k == "icmp6":
            return Icmp6()
        if k == "vlan":
            return Vlan(self.number(t, "a VLAN id", MAX_VLAN))
        if k == "mpls":
            return Mpls(self.number(t, "an MPLS label", MAX_MPLS))
        if k in ("before", "after"):
            ts = self.time(t)
            return Before(ts) if k == "before" else After(ts)
        hint = ""
        if _looks_like_value(t.text):
            hint = " (a value needs its keyword first, e.g. 'host 198.18.0.1' or 'port 53')"
        elif k in ("arp", "rarp", "ether", "sctp", "link", "gateway", "broadcast", "multicast", "less", "greater",
                   "len", "inbound", "outbound", "protochain"):
            hint = f" ('{t.text}' is a tcpdump keyword this language does not have)"
        raise self.fail(t, f"expected {EXPECT_CLAUSE}, found '{t.text}'{hint}")

    def directed(self):
        first = self.next()
        d = first.low
        t = self.tok
        if t.kind in ("or", "and"):
            t2 = self.peek()
            other = "dst" if d == "src" else "src"
            if t2.kind == "word" and t2.low == other:
                self.next()
                self.next()
                if t.kind == "or":
                    return self.dir_clause("any", qual=f"{first.text} {t.text} {t2.text}")
                start = self.i
                a = self.dir_clause("src", qual=f"{first.text} {t.text} {t2.text}")
                self.i = start
                b = self.dir_clause("dst", qual=f"{first.text} {t.text} {t2.text}")
                return And(a, b)
        return self.dir_clause(d, qual=first.text)

    def dir_clause(self, d: str, qual: str | None = None):
        t = self.tok
        k = t.low if t.kind == "word" else ""
        if k not in ("host", "net", "port", "portrange"):
            raise self.fail(t, f"expected 'host', 'net', 'port' or 'portrange' after '{qual}', found {t.shown()}")
        self.next()
        if k == "host":
            return Host(self.address(t), d)
        if k == "net":
            addr, prefix = self.network(t)
            return Net(addr, prefix, d)
        if k == "port":
            n = self.number(t, "a port number", MAX_PORT)
            return Port(n, n, d)
        lo, hi = self.portrange(t)
        return Port(lo, hi, d)

    # values
    def number(self, kw: _Tok, what: str, hi: int) -> int:
        t = self.tok
        if t.kind != "word" or not t.text.isdigit() or not t.text.isascii():
            raise self.fail(t, f"expected {what} after '{kw.text}', found {t.shown()}")
        self.next()
        n = int(t.text)
        if n > hi:
            raise self.fail(t, f"{what[what.index(' ') + 1:]} {n} is out of range (0-{hi})")
        return n

    def proto_num(self, kw: _Tok) -> int:
        t = self.tok
        if t.kind == "word" and t.low.lstrip("\\") in PROTO_NAMES:
            self.next()
            return PROTO_NAMES[t.low.lstrip("\\")]
        return self.number(kw, "a protocol number", MAX_PROTO)

    def portrange(self, kw: _Tok) -> tuple[int, int]:
        t = self.tok
        m = re.fullmatch(r"(\d+)-(\d+)", t.text) if t.kind == "word" and t.text.isascii() else None
        if not m:
            raise self.fail(t, f"expected a port range like 1024-2047 after '{kw.text}', found {t.shown()}")
        self.next()
        a, b = int(m.group(1)), int(m.group(2))
        for v in (a, b):
            if v > MAX_PORT:
                raise self.fail(t, f"port {v} is out of range (0-{MAX_PORT})")
        return (a, b) if a <= b else (b, a)

    def address(self, kw: _Tok) -> bytes:
        t = self.tok
        if t.kind != "word":
            raise self.fail(t, f"expected an IPv4 or IPv6 address after '{kw.text}', found {t.shown()}")
        if "/" in t.text and kw.low == "host":
            raise self.fail(t, f"'{t.text}' is a network, not an address; write 'net {t.text}'")
        a = _ip(t.text)
        if a is None:
            hint = " (host names are not supported)" if re.search(r"[g-zG-Z]", t.text) and ":" not in t.text else ""
            raise self.fail(t, f"expected an IPv4 or IPv6 address after '{kw.text}', found {t.shown()}{hint}")
        self.next()
        return a.packed

    def network(self, kw: _Tok) -> tuple[bytes, int]:
        t = self.tok
        if t.kind != "word":
            raise self.fail(t, f"expected a network like 198.18.0.0/15 after '{kw.text}', found {t.shown()}")
        if "/" in t.text:
            astr, _, pstr = t.text.partition("/")
            a = _ip(astr)
            if a is None:
                raise self.fail(t, f"expected a network like 198.18.0.0/15 after '{kw.text}', found {t.shown()}")
            width = a.max_prefixlen
            if not pstr.isdigit() or not pstr.isascii():
                raise self.fail(t, f"expected a prefix length (0-{width}) after '/' in {t.shown()}")
            prefix = int(pstr)
            if prefix > width:
                raise self.fail(t, f"prefix length {prefix} is out of range for IPv{a.version} (0-{width})")
            self.next()
        else:
            a = _ip(t.text)
            if a is None:
                raise self.fail(t, f"expected a network like 198.18.0.0/15 after '{kw.text}', found {t.shown()}")
            self.next()
            m = self.tok
            if not (m.kind == "word" and m.low == "mask"):
                raise self.fail(t, f"a network needs a prefix length: write '{t.text}/N' or '{t.text} mask M'")
            if a.version != 4:
                raise self.fail(m, "'mask' applies to IPv4 networks only; write the IPv6 network as A/N")
            self.next()
            mt = self.tok
            mask = _ip(mt.text) if mt.kind == "word" else None
            if mask is None or mask.version != 4:
                raise self.fail(mt, f"expected an IPv4 netmask like 255.255.0.0 after 'mask', found {mt.shown()}")
            mv = int(mask)
            inv = (~mv) & 0xFFFFFFFF
            if inv & (inv + 1):
                raise self.fail(mt, f"netmask {mt.text} is not contiguous (its one-bits must come first)")
            prefix = 32 - inv.bit_length()
            self.next()
        width = a.max_prefixlen
        hostmask = (1 << (width - prefix)) - 1
        if int(a) & hostmask:
            netw = ipaddress.ip_network(f"{a}/{prefix}", strict=False)
            raise self.fail(t, f"non-network bits set in '{a}/{prefix}' (the network is {netw})")
        return a.packed, prefix

    def time(self, kw: _Tok) -> int:
        t = self.tok
        expected = (f"expected a time after '{kw.text}': RFC 3339 like 2015-01-01T13:14:15Z or a duration "
                    f"like '45m ago', found {t.shown()}")
        if t.kind != "word" or not t.text.isascii():
            raise self.fail(t, expected)
        m = _RFC3339.match(t.text)
        if m:
            self.next()
            return self.rfc3339(t, m)
        dur = None
        if _DUR.match(t.text):
            dur = sum(int(n) * UNIT_NS[u.lower()] for n, u in _DUR_PART.findall(t.text))
            self.next()
        elif t.text.isdigit():
            u = self.peek()
            if u.kind == "word" and u.low in UNIT_NS:
                dur = int(t.text) * UNIT_NS[u.low]
                self.next()
                self.next()
            else:
                raise self.fail(u, f"expected a unit (s, m, h or d) after '{t.text}', found {u.shown()}")
        if dur is None:
            if re.match(r"^\d{4}-", t.text):
                raise self.fail(t, f"'{t.text}' is not an RFC 3339 time; write it like 2015-01-01T13:14:15Z "
                                   "or 2015-01-01T13:14:15+01:00")
            raise self.fail(t, expected)
        a = self.tok
        if not (a.kind == "word" and a.low == "ago"):
            raise self.fail(a, f"expected 'ago' after the duration, found {a.shown()}")
        self.next()
        return self.now() - dur

    def rfc3339(self, t: _Tok, m: re.Match) -> int:
        y, mo, d, hh, mi, ss = (int(m.group(i)) for i in range(1, 7))
        frac = m.group(7) or ""
        if y < 1 or not (1 <= mo <= 12) or not (1 <= d <= calendar.monthrange(y, mo)[1]):
            raise self.fail(t, f"'{t.text}' is not a valid date")
        if hh > 23 or mi > 59 or ss > 59:
            raise self.fail(t, f"'{t.text}' is not a valid time of day")
        off = 0
        if m.group(9):
            oh, om = int(m.group(10)), int(m.group(11))
            if oh > 23 or om > 59:
                raise self.fail(t, f"'{t.text}' has an invalid UTC offset")
            off = (oh * 3600 + om * 60) * (1 if m.group(9) == "+" else -1)
        sec = calendar.timegm((y, mo, d, hh, mi, ss, 0, 0, 0)) - off
        ns = int((frac + "000000000")[:9])
        return sec * 1_000_000_000 + ns


def _ip(s: str):
    if not s or "%" in s or not s.isascii():
        return None
    try:
        return ipaddress.ip_address(s)
    except ValueError:
        return None


def _looks_like_value(s: str) -> bool:
    return bool(re.fullmatch(r"[0-9a-fA-F:.]+(/\d+)?|\d+-\d+", s)) and any(ch.isdigit() for ch in s)


def parse(text: str, now_ns: int | None = None):
    """Parse query text into an AST. `now_ns` fixes 'ago' times (default: the
    clock, read once). Raises QueryError(message, pos) with the 0-based position
    in the message and a caret form in err.detail."""
    if not isinstance(text, str):
        raise QueryError("the query must be text")
    return _Parser(text, now_ns).parse()


# ---- canonical text ----------------------------------------------------------------
def _addr_text(addr: bytes) -> str:
    return str(ipaddress.ip_address(addr))


def _ts_text(ts_ns: int) -> str:
    sec, ns = divmod(ts_ns, 1_000_000_000)
    tm = time.gmtime(sec) if sec >= 0 else None
    if tm is not None and tm.tm_year <= 9999:
        base = time.strftime("%Y-%m-%dT%H:%M:%S", tm)
    else:
        import datetime as _dt

        d = _dt.datetime(1970, 1, 1) + _dt.timedelta(seconds=sec)
        base = f"{d.year:04d}-{d.month:02d}-{d.day:02d}T{d.hour:02d}:{d.minute:02d}:{d.second:02d}"
    if ns:
        base += "." + f"{ns:09d}".rstrip("0")
    return base + "Z"


def _dirp(d: str) -> str:
    return "" if d == "any" else d + " "


def format(node) -> str:  # noqa: A001 - the contract's name
    """Canonical text for an AST; parse(format(n)) == n."""
    if isinstance(node, Host):
        return f"{_dirp(node.dir)}host {_addr_text(node.addr)}"
    if isinstance(node, Net):
        return f"{_dirp(node.dir)}net {_addr_text(node.addr)}/{node.prefix}"
    if isinstance(node, Port):
        if node.lo == node.hi:
            return f"{_dirp(node.dir)}port {node.lo}"
        return f"{_dirp(node.dir)}portrange {node.lo}-{node.hi}"
    if isinstance(node, Proto):
        return {6: "tcp", 17: "udp"}.get(node.proto, f"ip proto {node.proto}")
    if isinstance(node, Icmp):
        return "icmp"
    if isinstance(node, Icmp6):
        return "icmp6"
    if isinstance(node, Family):
        return "ip" if node.v == 4 else "ip6"
    if isinstance(node, Vlan):
        return f"vlan {node.vid}"
    if isinstance(node, Mpls):
        return f"mpls {node.label}"
    if isinstance(node, Before):
        return f"before {_ts_text(node.ts_ns)}"
    if isinstance(node, After):
        return f"after {_ts_text(node.ts_ns)}"
    if isinstance(node, (And, Or)):
        op = "and" if isinstance(node, And) else "or"
        right = format(node.b)
        if isinstance(node.b, (And, Or)):
            right = f"({right})"
        return f"{format(node.a)} {op} {right}"
    if isinstance(node, Not):
        inner = format(node.a)
        if isinstance(node.a, (And, Or)):
            inner = f"({inner})"
        return f"not {inner}"
    raise TypeError(f"not a query node: {node!r}")


format_query = format


# ---- evaluation over index records -------------------------------------------------
_SRC_OFF = layout.REC_DTYPE.fields["src"][1]
_DST_OFF = layout.REC_DTYPE.fields["dst"][1]
# the address bytes seen as native little-endian words: equality and masked
# equality are byte-order agnostic when the wanted value and the mask are read
# the same way, and one word compare per record beats sixteen byte compares
_ADDR_WORDS = np.dtype({
    "names": ["src4", "src6a", "src6b", "dst4", "dst6a", "dst6b"],
    "formats": ["<u4", "<u8", "<u8", "<u4", "<u8", "<u8"],
    "offsets": [_SRC_OFF, _SRC_OFF, _SRC_OFF + 8, _DST_OFF, _DST_OFF, _DST_OFF + 8],
    "itemsize": layout.REC_DTYPE.itemsize,
})


class _Cols:
    """Column views of a record array, fetched once per evaluation."""

    def __init__(self, recs: np.ndarray):
        self.recs = recs
        self.n = len(recs)
        self._c: dict = {}
        self._words = None

    def words(self, name: str) -> np.ndarray:
        if self._words is None:
            self._words = self.recs.view(_ADDR_WORDS)
        return self._words[name]

    def __getitem__(self, name: str) -> np.ndarray:
        c = self._c.get(name)
        if c is None:
            if name == "v4":
                c = (self["flags"] & layout.F_IPV4) != 0
            elif name == "v6":
                c = (self["flags"] & layout.F_IPV6) != 0
            elif name == "ip":
                c = (self["flags"] & (layout.F_IPV4 | layout.F_IPV6)) != 0
            elif name == "ports":
                c = (self["flags"] & layout.F_PORTS) != 0
            else:
                c = self.recs[name]
            self._c[name] = c
        return c


def _addr_match(c: _Cols, side: str, addr: bytes, prefix: int) -> np.ndarray:
    """Records whose `side` address has the first `prefix` bits of addr."""
    w = len(addr) * 8
    mask = (((1 << w) - 1) ^ ((1 << (w - prefix)) - 1)).to_bytes(len(addr), "big")
    parts = [(side + "4", 0, 4)] if len(addr) == 4 else [(side + "6a", 0, 8), (side + "6b", 8, 16)]
    m = None
    for name, a, b in parts:
        mw = int.from_bytes(mask[a:b], "little")
        if mw == 0:
            continue
        want = int.from_bytes(addr[a:b], "little") & mw
        col = c.words(name)
        full = (1 << (8 * (b - a))) - 1
        hit = (col == want) if mw == full else ((col & col.dtype.type(mw)) == want)
        m = hit if m is None else (m & hit)
    return np.ones(c.n, bool) if m is None else m


def _dir_addr(c: _Cols, d: str, addr: bytes, prefix: int) -> np.ndarray:
    if d == "src":
        return _addr_match(c, "src", addr, prefix)
    if d == "dst":
        return _addr_match(c, "dst", addr, prefix)
    return _addr_match(c, "src", addr, prefix) | _addr_match(c, "dst", addr, prefix)


def _eval(node, c: _Cols) -> np.ndarray:
    if isinstance(node, Host):
        fam = c["v4"] if len(node.addr) == 4 else c["v6"]
        return fam & _dir_addr(c, node.dir, node.addr, len(node.addr) * 8)
    if isinstance(node, Net):
        fam = c["v4"] if len(node.addr) == 4 else c["v6"]
        return fam & _dir_addr(c, node.dir, node.addr, node.prefix)
    if isinstance(node, Port):
        if node.lo == node.hi:
            fn = lambda col: col == node.lo  # noqa: E731
        else:
            fn = lambda col: (col >= node.lo) & (col <= node.hi)  # noqa: E731
        if node.dir == "src":
            m = fn(c["sport"])
        elif node.dir == "dst":
            m = fn(c["dport"])
        else:
            m = fn(c["sport"]) | fn(c["dport"])
        return c["ports"] & m
    if isinstance(node, Proto):
        return c["ip"] & (c["proto"] == node.proto)
    if isinstance(node, Icmp):
        return c["v4"] & (c["proto"] == 1)
    if isinstance(node, Icmp6):
        return c["v6"] & (c["proto"] == 58)
    if isinstance(node, Family):
        return (c["v4"] if node.v == 4 else c["v6"]).copy()
    if isinstance(node, Vlan):
        nv = c["n_vlan"]
        vl = c["vlan"]
        return ((nv >= 1) & (vl[:, 0] == node.vid)) | ((nv >= 2) & (vl[:, 1] == node.vid))
    if isinstance(node, Mpls):
        return (c["n_mpls"] > 0) & (c["mpls"] == node.label)
    if isinstance(node, Before):
        if node.ts_ns <= 0:
            return np.zeros(c.n, bool)
        if node.ts_ns >= 1 << 64:
            return np.ones(c.n, bool)
        return c["ts_ns"] < np.uint64(node.ts_ns)
    if isinstance(node, After):
        if node.ts_ns <= 0:
            return np.ones(c.n, bool)
        if node.ts_ns >= 1 << 64:
            return np.zeros(c.n, bool)
        return c["ts_ns"] >= np.uint64(node.ts_ns)
    if isinstance(node, And):
        return _eval(node.a, c) & _eval(node.b, c)
    if isinstance(node, Or):
        return _eval(node.a, c) | _eval(node.b, c)
    if isinstance(node, Not):
        return ~_eval(node.a, c)
    raise TypeError(f"not a query node: {node!r}")


def eval_records(node, recs: np.ndarray) -> np.ndarray:
    """Boolean mask over an array of layout.REC_DTYPE records: which packets the
    query selects. Vectorised; exact per packet (time included)."""
    if recs.dtype != layout.REC_DTYPE:
        if recs.dtype.itemsize != layout.REC_DTYPE.itemsize:
            raise TypeError(f"eval_records needs layout.REC_DTYPE records, not {recs.dtype}")
        recs = recs.view(layout.REC_DTYPE)  # raw 80-byte records (e.g. dtype V80)
    out = _eval(node, _Cols(recs))
    return np.asarray(out, bool).reshape(len(recs))


# ---- time window -------------------------------------------------------------------
def _tb(node, neg: bool) -> tuple[int | None, int | None]:
    if isinstance(node, Before):
        return (node.ts_ns, None) if neg else (None, node.ts_ns)
    if isinstance(node, After):
        return (None, node.ts_ns) if neg else (node.ts_ns, None)
    if isinstance(node, Not):
        return _tb(node.a, not neg)
    if isinstance(node, (And, Or)):
        a, b = _tb(node.a, neg), _tb(node.b, neg)
        conj = isinstance(node, And) != neg  # De Morgan: not(a or b) = not a and not b
        if conj:
            lo = a[0] if b[0] is None else b[0] if a[0] is None else max(a[0], b[0])
            hi = a[1] if b[1] is None else b[1] if a[1] is None else min(a[1], b[1])
        else:
            lo = None if a[0] is None or b[0] is None else min(a[0], b[0])
            hi = None if a[1] is None or b[1] is None else max(a[1], b[1])
        return lo, hi
    return None, None


def time_bounds(node) -> tuple[int | None, int | None]:
    """A conservative window [lo, hi) (ns; None = unbounded) outside which no
    packet can match: every matching packet has lo <= ts < hi. lo >= hi means
    the query can match nothing. Used to prune files before any lookup."""
    return _tb(node, False)


# ---- tcpdump equivalent ------------------------------------------------------------
KNOWN_DIFFERENCES = (
    "Link layer: our host/net/port/ip proto/tcp/udp/icmp/ip/ip6 look through VLAN tags (0x8100, 0x88a8, "
    "0x9100, 0x9200, 0x9300), MPLS labels and pseudowire control words; tcpdump's expressions read fixed "
    "offsets after an untagged Ethernet header and need 'vlan and ...' / 'mpls and ...' to see inside.",
    "vlan N: ours matches N against either of the first two VLAN ids of a frame (outer or inner); "
    "tcpdump's 'vlan N' tests the outermost tag only and moves every later offset of the expression "
    "past one tag, so 'vlan N' combined with other clauses is not equivalent.",
    "mpls N: ours tests the first (outermost) label; tcpdump's 'mpls N' does the same but, like vlan, "
    "shifts the offsets of the rest of the expression, and libpcap refuses a 'vlan' anywhere after an "
    "'mpls' ('no VLAN match after MPLS').",
    "ip6 protochain (used for ip proto / tcp / udp / icmp6 on IPv6) compiles to a backward jump: userland "
    "libpcap (tcpdump -r, pcap_offline_filter) runs it, the kernel and XDP do not, and libpcap's "
    "optimiser refuses a contradiction ('expression rejects all packets') where ours returns nothing.",
    "IPv6 extension headers: our ip proto / tcp / udp / icmp6 use the final protocol after walking "
    "hop-by-hop, routing, destination options, mobility and fragment headers (at most 8); "
    "to_pcap_filter uses 'ip6 protochain N', which also walks AH (ours stops at AH, proto 51) and "
    "matches N when N is itself an extension header number (0, 43, 44, 60, 135), which ours never does.",
    "port on IPv6: ours finds TCP/UDP ports after extension headers (including in first fragments); "
    "tcpdump's 'tcp port N' on IPv6 only looks right after the fixed 40-byte header.",
    "port: tcpdump's bare 'port N' also matches SCTP; ours is TCP and UDP only, so to_pcap_filter writes "
    "'(tcp port N or udp port N)'. Both skip IPv4 non-first fragments; ours also skips IPv6 non-first "
    "fragments and packets whose TCP (20 bytes) or UDP (8 bytes) header is cut short.",
    "host/net: tcpdump's bare 'host X' / 'net N' also match ARP and RARP; ours is IP only, so "
    "to_pcap_filter writes 'ip host X' / 'ip6 host X'.",
    "ip proto N: ours covers IPv4 and IPv6 (Stenographer's meaning); tcpdump's is IPv4 only, so "
    "to_pcap_filter writes '(ip proto N or ip6 protochain N)'.",
    "Malformed packets: ours matches on what the shared parser recorded (a packet whose IP header is cut "
    "short or whose IHL < 5 has no address/protocol fields); tcpdump reads fixed offsets and may match.",
    "before/after have no pcap-filter equivalent: to_pcap_filter raises QueryError for them "
    "(filter time with tcpdump's reader or editcap instead).",
)


def _pcap_leaf(node) -> str:
    if isinstance(node, Host):
        fam = "ip" if len(node.addr) == 4 else "ip6"
        return f"{fam} {_dirp(node.dir)}host {_addr_text(node.addr)}"
    if isinstance(node, Net):
        fam = "ip" if len(node.addr) == 4 else "ip6"
        if node.prefix == 0:
            return fam
        return f"{fam} {_dirp(node.dir)}net {_addr_text(node.addr)}/{node.prefix}"
    if isinstance(node, Port):
        if node.lo == node.hi:
            q = f"{_dirp(node.dir)}port {node.lo}"
        else:
            q = f"{_dirp(node.dir)}portrange {node.lo}-{node.hi}"
        return f"(tcp {q} or udp {q})"
    if isinstance(node, Proto):
        return f"(ip proto {node.proto} or ip6 protochain {node.proto})"
    if isinstance(node, Icmp):
        return "ip proto 1"
    if isinstance(node, Icmp6):
        return "ip6 protochain 58"
    if isinstance(node, Family):
        return "ip" if node.v == 4 else "ip6"
    if isinstance(node, Vlan):
        return f"vlan {node.vid}"
    if isinstance(node, Mpls):
        return f"mpls {node.label}"
    if isinstance(node, (Before, After)):
        raise QueryError(f"'{format(node)}' has no tcpdump (pcap-filter) equivalent; filter time separately")
    raise TypeError(f"not a query node: {node!r}")


def to_pcap_filter(node) -> str:
    """The tcpdump/pcap-filter expression selecting the same packets on an
    untagged Ethernet link (see KNOWN_DIFFERENCES for where they part).
    Raises QueryError for before/after."""
    if isinstance(node, (And, Or)):
        op = "and" if isinstance(node, And) else "or"
        return f"({to_pcap_filter(node.a)} {op} {to_pcap_filter(node.b)})"
    if isinstance(node, Not):
        return f"not {_wrap(to_pcap_filter(node.a))}"
    return _pcap_leaf(node)


def _wrap(s: str) -> str:
    return s if s.startswith("(") and _balanced_outer(s) else f"({s})"


def _balanced_outer(s: str) -> bool:
    depth = 0
    for i, ch in enumerate(s):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0 and i < len(s) - 1:
            return False
    return True


# ---- random queries (for oracle tests) ---------------------------------------------
ALL_KINDS = ("host", "net", "port", "portrange", "proto", "icmp", "icmp6", "family", "vlan", "mpls")
# kinds whose to_pcap_filter is exact on untagged Ethernet without IPv6 extension headers
PCAP_EXACT_KINDS = ("host", "net", "port", "portrange", "proto", "icmp", "icmp6", "family")


@dataclass
class QueryPool:
    """Values random queries draw from (pick them to overlap the test traffic)."""

    hosts: tuple = ("198.18.0.1", "198.18.0.2", "198.18.0.3", "10.0.1.1", "2001:db8::1", "2001:db8::2")
    nets: tuple = ("198.18.0.0/15", "198.18.0.0/24", "198.18.0.0/30", "10.0.0.0/8", "2001:db8::/32",
                   "2001:db8::/126", "0.0.0.0/0")
    ports: tuple = (53, 80, 443, 1234, 40000, 0, 65535)
    protos: tuple = (1, 6, 17, 58, 47)
    vlans: tuple = (10, 20, 30, 4095)
    mpls: tuple = (16, 1000, 1048575)
    kinds: tuple = ALL_KINDS
    dirs: tuple = DIRS


class _Rng:
    """Adapter: numpy Generator or random.Random."""

    def __init__(self, rng):
        self.r = rng
        self.np = hasattr(rng, "integers")

    def randint(self, n: int) -> int:  # [0, n)
        return int(self.r.integers(0, n)) if self.np else self.r.randrange(n)

    def random(self) -> float:
        return float(self.r.random())

    def choice(self, seq):
        return seq[self.randint(len(seq))]


def random_ast(rng, pool: QueryPool | None = None, max_depth: int = 3):
    """A random AST (no time clauses) over the values in pool."""
    pool = pool or QueryPool()
    r = rng if isinstance(rng, _Rng) else _Rng(rng)
    return _rand_node(r, pool, max_depth)


def _rand_leaf(r: _Rng, pool: QueryPool):
    k = r.choice(pool.kinds)
    d = r.choice(pool.dirs)
    if k == "host":
        return Host(ipaddress.ip_address(r.choice(pool.hosts)).packed, d)
    if k == "net":
        n = ipaddress.ip_network(r.choice(pool.nets))
        return Net(n.network_address.packed, n.prefixlen, d)
    if k == "port":
        p = r.choice(pool.ports)
        return Port(p, p, d)
    if k == "portrange":
        a, b = r.choice(pool.ports), r.choice(pool.ports)
        if a == b:
            b = min(MAX_PORT, a + 1 + r.randint(100))
        return Port(min(a, b), max(a, b), d)
    if k == "proto":
        return Proto(r.choice(pool.protos))
    if k == "icmp":
        return Icmp()
    if k == "icmp6":
        return Icmp6()
    if k == "family":
        return Family(r.choice((4, 6)))
    if k == "vlan":
        return Vlan(r.choice(pool.vlans))
    if k == "mpls":
        return Mpls(r.choice(pool.mpls))
    raise ValueError(f"unknown kind {k!r}")


def _rand_node(r: _Rng, pool: QueryPool, depth: int):
    x = r.random()
    if depth <= 0 or x < 0.35:
        return _rand_leaf(r, pool)
    if x < 0.5:
        return Not(_rand_node(r, pool, depth - 1))
    a, b = _rand_node(r, pool, depth - 1), _rand_node(r, pool, depth - 1)
    return And(a, b) if x < 0.78 else Or(a, b)


def _case(r: _Rng, w: str) -> str:
    x = r.random()
    return w.upper() if x < 0.15 else w.capitalize() if x < 0.25 else w


def render(node, rng) -> str:
    """Text for node in a randomly varied surface syntax (operator spellings,
    keyword case, qualifier and netmask forms, extra parentheses); parses back
    to node."""
    r = rng if isinstance(rng, _Rng) else _Rng(rng)
    return _render(node, r)


def _rdir(r: _Rng, d: str) -> str:
    if d == "any":
        return "" if r.random() < 0.85 else r.choice(("src or dst ", "dst || src "))
    return _case(r, d) + " "


def _render(node, r: _Rng) -> str:
    if isinstance(node, Host):
        a = _addr_text(node.addr)
        if len(node.addr) == 16 and r.random() < 0.3:
            a = a.upper()
        return f"{_rdir(r, node.dir)}{_case(r, 'host')} {a}"
    if isinstance(node, Net):
        a = _addr_text(node.addr)
        if len(node.addr) == 4 and r.random() < 0.3:
            mask = str(ipaddress.ip_address((0xFFFFFFFF << (32 - node.prefix)) & 0xFFFFFFFF))
            return f"{_rdir(r, node.dir)}{_case(r, 'net')} {a} {_case(r, 'mask')} {mask}"
        return f"{_rdir(r, node.dir)}{_case(r, 'net')} {a}/{node.prefix}"
    if isinstance(node, Port):
        if node.lo == node.hi and r.random() < 0.85:
            return f"{_rdir(r, node.dir)}{_case(r, 'port')} {node.lo}"
        return f"{_rdir(r, node.dir)}{_case(r, 'portrange')} {node.lo}-{node.hi}"
    if isinstance(node, Proto):
        names = {6: "tcp", 17: "udp"}
        if node.proto in names and r.random() < 0.6:
            return _case(r, names[node.proto])
        return f"{_case(r, 'ip')} {_case(r, 'proto')} {node.proto}"
    if isinstance(node, (Icmp, Icmp6, Family, Vlan, Mpls)):
        return _case(r, format(node))
    if isinstance(node, (Before, After)):
        return format(node)
    if isinstance(node, (And, Or)):
        if isinstance(node, And):
            op = r.choice(("and", "&&", "AND"))
        else:
            op = r.choice(("or", "||", "Or"))
        left = _render(node.a, r)
        right = _render(node.b, r)
        if isinstance(node.b, (And, Or)) or r.random() < 0.1:
            right = f"({right})"
        if r.random() < 0.1:
            left = f"( {left} )"
        sp = " " if op.isalpha() or r.random() < 0.7 else ""
        return f"{left}{sp}{op}{sp}{right}"
    if isinstance(node, Not):
        inner = _render(node.a, r)
        if isinstance(node.a, (And, Or)) or r.random() < 0.2:
            inner = f"({inner})"
        return f"{r.choice(('not ', '!', '! ', 'NOT '))}{inner}"
    raise TypeError(f"not a query node: {node!r}")


def random_query(rng, pool: QueryPool | None = None, max_depth: int = 3) -> str:
    """A random query text from the grammar (no time clauses), values from pool
    (QueryPool(kinds=PCAP_EXACT_KINDS) for tcpdump oracles). rng: a numpy
    Generator or random.Random."""
    r = _Rng(rng)
    return _render(random_ast(r, pool, max_depth), r)

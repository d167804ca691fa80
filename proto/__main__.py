"""python -m stenoxdp.proto build  -- generate the gRPC stubs next to the .proto files."""
from __future__ import annotations

import sys

from . import build


def main(argv: list[str]) -> int:
    if argv[:1] != ["build"]:
        print("usage: python -m stenoxdp.proto build", file=sys.stderr)
        return 2
    for p in build():
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""stenoctl: the command line. One module per command group; each exposes
register(app). Commands are thin: they parse flags, call library code, and
render through stenoxdp.ui. Errors of type StenoError become one clear line
on stderr (the detail with -v) and a non-zero exit; never a traceback."""
from __future__ import annotations

import os
import sys

import typer

from ..errors import StenoError

app = typer.Typer(
    name="stenoctl",
    help="stenoxdp: full-packet capture on XDP/AF_XDP, indexed and queryable.\n\n"
    "Examples:\n\n"
    "  stenoctl capture --iface sxdp0 --dir /var/lib/stenoxdp --dedicated\n\n"
    "  stenoctl status\n\n"
    "  stenoctl query 'host 198.18.0.2 and port 53 and after 10m ago' --dir /var/lib/stenoxdp -w - | tcpdump -r -",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

VERBOSE = {"on": False}


def _version(value: bool) -> None:
    if value:
        from .. import __version__

        print(f"stenoctl (stenoxdp) {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Show full error detail."),
          version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    VERBOSE["on"] = verbose or bool(os.environ.get("STENOXDP_VERBOSE"))


from . import capture as _capture  # noqa: E402
from . import query as _query  # noqa: E402
from . import serve as _serve  # noqa: E402
from . import filter as _filter  # noqa: E402
from . import config as _config  # noqa: E402

for _m in (_capture, _query, _serve, _filter, _config):
    _m.register(app)


def main(argv: list[str] | None = None) -> int:
    try:
        rc = app(args=argv, standalone_mode=False)  # click returns typer.Exit's code here
        return rc if isinstance(rc, int) else 0
    except StenoError as e:
        print(f"stenoctl: {e}", file=sys.stderr)
        if VERBOSE["on"] and e.detail:
            print(e.detail, file=sys.stderr)
        return e.exit_code
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        print("stenoctl: aborted", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        return 130
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    except Exception as e:  # click usage errors (typer may vendor click) and anything unforeseen
        if hasattr(e, "show") and isinstance(getattr(e, "exit_code", None), int):
            e.show()
            return e.exit_code
        if isinstance(e, BrokenPipeError):
            return 0
        print(f"stenoctl: internal error: {type(e).__name__}: {e} (run with -v for the traceback)", file=sys.stderr)
        if VERBOSE["on"]:
            import traceback

            traceback.print_exc()
        return 70


if __name__ == "__main__":
    sys.exit(main())

"""stenoctl config show / config docs / config check."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ..errors import UsageError


def load_any(config: Optional[Path], stenographer_config: Optional[Path]):
    """(Config, ignored) from exactly one of the two sources."""
    from .. import config as cfgmod

    if bool(config) == bool(stenographer_config):
        raise UsageError("give exactly one of --config FILE or --stenographer-config FILE")
    if config:
        return cfgmod.load_config(config), []
    return cfgmod.from_stenographer(stenographer_config)


def size_warnings(cfg, mp) -> list[str]:
    """Where the daemon will rotate earlier than rotate_bytes (a small file system: see retention.adapt_rotate_bytes)."""
    from ..memory import fmt
    from ..retention import effective_rotate_bytes

    out = []
    for i, c in enumerate(cfg.ifaces):
        nq = mp.ifaces[i].queues
        for s in c.stores():
            want = effective_rotate_bytes(c.rotate_bytes, s.dir, s.retention.min_free_percent, nq)
            if want < c.rotate_bytes:
                out.append(f"iface[{i}].rotate_bytes: {fmt(c.rotate_bytes)} files are big for the file system of "
                           f"{s.dir}: the daemon rotates at {fmt(want)} there so the free-space floor holds")
    return out


def register(app: typer.Typer) -> None:
    cfg_app = typer.Typer(help="The config: show the effective config and the memory it locks; make its docs.",
                          no_args_is_help=True)
    app.add_typer(cfg_app, name="config")

    @cfg_app.command("show", help="Print the effective config (as TOML) and the memory the daemon will lock.\n\n"
                     "Examples: stenoctl config show --config /etc/stenoxdp/stenoxdp.toml\n\n"
                     "          stenoctl config show --stenographer-config /etc/stenographer/config")
    def show(
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="stenoxdp TOML config."),
        stenographer_config: Optional[Path] = typer.Option(None, "--stenographer-config",
                                                           help="A Stenographer JSON config to migrate from."),
        as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    ) -> None:
        from .. import config as cfgmod
        from .. import memory

        cfg, ignored = load_any(config, stenographer_config)
        mp = memory.plan(cfg)
        paths = cfgmod.check_paths(cfg)
        if as_json:
            print(json.dumps({"config": cfgmod.to_dict(cfg), "ignored": ignored, "memory": mp.as_dict(),
                              "problems": paths + mp.problems(), "warnings": size_warnings(cfg, mp)}, indent=2))
        else:
            out = [cfgmod.dump(cfg).rstrip(), ""]
            if ignored:
                out.append("# ignored from the Stenographer config:")
                out += [f"#   {x}" for x in ignored]
                out.append("")
            out.append("# memory:")
            out += [f"#   {x}" for x in mp.lines()]
            warn = size_warnings(cfg, mp)
            if warn:
                out.append("")
                out.append("# warnings:")
                out += [f"#   {x}" for x in warn]
            probs = paths + mp.problems()
            if probs:
                out.append("")
                out.append("# PROBLEMS (the daemon will refuse to start):")
                out += [f"#   {x}" for x in probs]
            print("\n".join(out))
        if paths or mp.problems():
            raise typer.Exit(2)

    @cfg_app.command("check", help="Validate a config (fields, paths, memory) without starting anything; "
                     "exit 0 when the daemon would start.\n\nExample: stenoctl config check --config stenoxdp.toml")
    def check(
        config: Optional[Path] = typer.Option(None, "--config", "-c"),
        stenographer_config: Optional[Path] = typer.Option(None, "--stenographer-config"),
    ) -> None:
        from .. import config as cfgmod
        from .. import memory

        cfg, _ = load_any(config, stenographer_config)
        probs = cfgmod.check_paths(cfg) + memory.plan(cfg).problems()
        for p in probs:
            print(f"stenoctl: {p}")
        if probs:
            raise typer.Exit(2)
        print("config ok")

    @cfg_app.command("docs", help="Write the config reference (docs/config.md) generated from the model.\n\n"
                     "Example: stenoctl config docs -o docs/config.md")
    def docs(output: Optional[Path] = typer.Option(None, "--output", "-o", help="File to write (default: stdout).")) -> None:
        from .. import config as cfgmod

        text = cfgmod.docs_markdown()
        if output:
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text(text)
        else:
            print(text, end="")

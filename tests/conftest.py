"""Test tiers (see pyproject markers): unit (pure), kernel (root: BPF load,
maps, test-run), netns (root: namespaces, veth, real traffic), lab (Vagrant).
A tier that cannot run here is skipped with the reason -- except under CI
(CI=true), where a tier that cannot run is a failure, so nothing is counted as
passing that did not run."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
STENOCTL = str(VENV_BIN / "stenoctl")


def _why_not(marker: str) -> str | None:
    if marker in ("kernel", "netns"):
        if os.geteuid() != 0:
            return f"the {marker} tier needs root (run `sudo make test`)"
        try:
            import bcc  # noqa: F401
        except ImportError:
            return "bcc is not importable (run `make setup`)"
        if marker == "netns" and not shutil.which("ip"):
            return "iproute2 is missing (run `make setup`)"
    if marker == "lab" and not shutil.which("vagrant"):
        return "vagrant is not installed (the lab tier runs with `make lab-up`)"
    return None


def _unavailable(item) -> tuple[str, str] | None:
    for marker in ("kernel", "netns", "lab"):
        if item.get_closest_marker(marker):
            why = _why_not(marker)
            if why:
                return marker, why
    return None


def pytest_runtest_setup(item):
    hit = _unavailable(item)
    if hit is None:
        return
    marker, why = hit
    if os.environ.get("CI") == "true" and marker != "lab":
        pytest.fail(f"tier {marker} cannot run here: {why}", pytrace=False)
    pytest.skip(why)


@pytest.fixture
def lab():
    from stenoxdp.lab import Lab

    with Lab() as lb:
        yield lb


@pytest.fixture
def lab_factory():
    """lab_factory(queues=2, span=True, mtu=...) -> a started Lab, torn down after the test."""
    from stenoxdp.lab import Lab

    made = []

    def make(**kw):
        lb = Lab(**kw)
        lb.__enter__()
        made.append(lb)
        return lb

    yield make
    for lb in reversed(made):
        lb.down()


@pytest.fixture
def stenoctl():
    return STENOCTL

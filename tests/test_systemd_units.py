"""The unit files of the appliance image: they parse, and say what the docs promise."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parent.parent / "systemd"


def unit(name: str) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string((UNITS / name).read_text())
    return cp


def test_fill_service_is_a_low_priority_oneshot() -> None:
    s = unit("oca-fill.service")["Service"]
    assert s["Type"] == "oneshot"
    assert s["ExecStart"].split()[1:3] == ["fill", "-c"]
    assert s["IOSchedulingClass"] == "idle" and int(s["Nice"]) == 19
    assert s["CPUSchedulingPolicy"] in ("batch", "idle")


def test_fill_timer_is_nightly_randomized_and_persistent() -> None:
    t = unit("oca-fill.timer")["Timer"]
    assert t["OnCalendar"].startswith("*-*-* ")
    assert t["Persistent"] == "true"
    assert t["RandomizedDelaySec"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
@pytest.mark.parametrize("name", ["oca.service", "oca-fill.service", "oca-fill.timer"])
def test_units_verify(tmp_path: Path, name: str) -> None:
    # Point ExecStart at this interpreter's oca so the check is about the unit itself.
    oca = Path(sys.executable).with_name("oca")
    for n in ("oca.service", "oca-fill.service", "oca-fill.timer"):
        text = (UNITS / n).read_text().replace("/opt/oca/bin/oca", str(oca))
        (tmp_path / n).write_text(text)
    out = subprocess.run(["systemd-analyze", "verify", str(tmp_path / name)],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    problems = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    assert not problems, problems

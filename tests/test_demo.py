"""``oca demo`` end to end: the whole miniature CDN as a newcomer starts it.

The demo runs as a subprocess exactly as the README's first command runs it; the test
reads the URLs it prints, fetches the steered MPD and a segment through a steered URL,
plays the demo's own player page in headless Chromium with dash.js for 20 s, then sends
SIGINT and checks that no process of the demo is left and none of its ports listens.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
import tomllib
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest

from oca.config import load_config
from steering.config import load_steering_config
from tests.browser.harness import PlayerRun

REPO = Path(__file__).resolve().parent.parent
PATTERN = REPO / "oca" / "media" / "pattern"
NS = "{urn:mpeg:dash:schema:mpd:2011}"
START_TIMEOUT = 150.0


@dataclass
class DemoRun:
    work: Path
    proc: subprocess.Popen[str] | None = None
    lines: list[str] = field(default_factory=list)
    urls: dict[str, str] = field(default_factory=dict)

    def start(self) -> DemoRun:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "oca", "demo", "--port", "0", "--dir", str(self.work)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=REPO,
            start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT
        while not any("Ctrl-C stops everything" in line for line in self.lines):
            if self.proc.poll() is not None:
                time.sleep(0.2)  # let the reader take the last lines
                pytest.fail("oca demo exited early:\n" + "".join(self.lines))
            if time.monotonic() > deadline:
                pytest.fail("oca demo did not come up:\n" + "".join(self.lines))
            time.sleep(0.2)
        for line in self.lines:
            m = re.match(r"\s+(player page|player MPD|explain|fleet|metrics \w+)\s+(\S+)", line)
            if m:
                self.urls[m[1]] = m[2]
            m = re.search(r"a segment\s+curl .* '(http[^']+)'", line)
            if m:
                self.urls["a segment"] = m[1]
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def interrupt(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """Last resort: the demo's process group and whatever still names its directory."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        for pid in processes_mentioning(str(self.work)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def processes_mentioning(text: str) -> list[int]:
    """Processes whose command line or environment contains ``text`` (the demo's
    directory is in every child's config path; workers carry it in their environment)."""
    found = []
    needle = text.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        for name in ("cmdline", "environ"):
            with contextlib.suppress(OSError):
                if needle in (entry / name).read_bytes():
                    found.append(int(entry.name))
                    break
    return found


def listening_ports() -> set[int]:
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for row in Path(table).read_text().splitlines()[1:]:
                cols = row.split()
                if cols[3] == "0A":  # TCP_LISTEN
                    ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


def port_of(url: str) -> int:
    return int(url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])


def fetch(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=15) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[DemoRun]:
    run = DemoRun(tmp_path / "demo")
    try:
        yield run.start()
    finally:
        run.kill()


def test_demo_plays_steered_title_and_stops_clean(demo: DemoRun) -> None:
    urls = demo.urls
    # the keys every config shares are kept beside them, readable by their owner only
    assert (demo.work / "keys.json").stat().st_mode & 0o777 == 0o600
    expected = {"player page", "player MPD", "explain", "fleet", "a segment"}
    expected |= {f"metrics {a}" for a in ("a1", "a2", "b1")}
    assert expected <= set(urls), demo.lines

    # The steered MPD: one signed BaseURL per appliance, site A (the client's prefix) first.
    status, body = fetch(urls["player MPD"])
    assert status == 200, body[:300]
    root = ET.fromstring(body)
    bases = [(b.get("serviceLocation"), b.text or "") for b in root.findall(f"{NS}BaseURL")]
    assert sorted(loc for loc, _ in bases) == ["a1", "a2", "b1"]
    assert bases[0][0] in ("a1", "a2") and bases[-1][0] == "b1"
    assert root.find(f"{NS}ContentSteering") is not None
    # A segment through each steered BaseURL: the title's own bytes, with the token.
    want = (PATTERN / "chunk-1-00003.m4s").read_bytes()
    for loc, base in bases:
        assert "/t/" in base, base
        status, got = fetch(base + "chunk-1-00003.m4s")
        assert (status, got == want) == (200, True), (loc, status)
        status, _ = fetch(base.split("/t/", 1)[0] + "/titles/pattern/chunk-1-00003.m4s")
        assert status == 403, f"{loc} served without a token"
    status, got = fetch(urls["a segment"])
    assert (status, got) == (200, (PATTERN / "chunk-1-00001.m4s").read_bytes())

    status, body = fetch(urls["explain"])
    assert status == 200 and orjson.loads(body), body[:300]
    status, body = fetch(urls["fleet"])
    fleet = {a["id"]: a for a in orjson.loads(body)["appliances"]}
    assert {a: s["status"] for a, s in fleet.items()} == dict.fromkeys(
        ("a1", "a2", "b1"), "in-rotation"
    )
    # The fill ran: site A split the synthetic titles, site B holds every title.
    assert fleet["b1"]["objects"] > max(fleet["a1"]["objects"], fleet["a2"]["objects"])
    for a in ("a1", "a2", "b1"):
        status, body = fetch(urls[f"metrics {a}"])
        assert status == 200 and b"oca_fill_bytes_total" in body

    # The demo's own page plays the title in Chromium for 20 s and names the appliances.
    with PlayerRun(mpd_url="", page_url=urls["player page"], seconds=60) as player:
        player.wait_for_time(20.0, timeout=60)
        errors = player.errors()
        fragments = player.of_kind("fragment")
    assert not errors, errors[:5]
    assert fragments and all(f["ok"] for f in fragments)
    served_by = {f["appliance"] for f in fragments}
    assert served_by and served_by <= {"a1", "a2"}, served_by  # the client's site
    assert all("/t/" in f["url"] for f in fragments)

    ports = {port_of(u) for k, u in urls.items() if k != "a segment"}
    assert ports & listening_ports() == ports
    assert demo.interrupt() == 0, "".join(demo.lines[-20:])
    assert any("stopped" in line for line in demo.lines[-3:]), demo.lines[-5:]
    leftover = processes_mentioning(str(demo.work))
    assert not leftover, [Path(f"/proc/{p}/cmdline").read_bytes() for p in leftover]
    assert not ports & listening_ports()


def test_print_configs_are_loadable_and_write_nothing(tmp_path: Path) -> None:
    work = tmp_path / "never-created"
    out = subprocess.run(
        [sys.executable, "-m", "oca", "demo", "--print-configs", "--dir", str(work)],
        capture_output=True, text=True, timeout=60, cwd=REPO, check=True,
    ).stdout  # fmt: skip
    assert not work.exists()
    parts = re.split(r"^# ---- (\S+) ----\n", out, flags=re.M)[1:]
    files = dict(zip(parts[::2], parts[1::2], strict=True))
    assert [Path(f).name for f in files] == [
        "origin.toml", "steering.toml", "a1.toml", "a2.toml", "b1.toml"
    ]  # fmt: skip
    for fname, text in files.items():
        path = tmp_path / Path(fname).name
        path.write_text(text)
        if path.name == "steering.toml":
            cfg = load_steering_config(path)
            assert cfg.service.listen == ("127.0.0.1:8081",)
            assert {b.title for b in cfg.fill.boosts} >= {"pattern"}
            continue
        cfg = load_config(path)
        assert str(work) in cfg.server.state_dir
    a1 = tomllib.loads(files[str(work / "a1.toml")])
    assert a1["peering"]["peers"] == ["http://127.0.0.1:8084"]  # a2, its site-mate
    assert a1["miss"]["origins"] == ["http://127.0.0.1:8082"]
    assert a1["fill"]["manifest"] == "http://127.0.0.1:8081/v1/fill/a1"
    steering = tomllib.loads(files[str(work / "steering.toml")])
    # the appliances' token keys are steering's URL-signing keys
    assert steering["urls"]["keys"][0]["secret"] == a1["auth"]["keys"][0]["secret"]
    assert steering["heartbeat"]["keys"][0]["secret"] == a1["steering"]["keys"][0]["secret"]


def test_interrupted_while_starting_leaves_nothing(tmp_path: Path) -> None:
    """Ctrl-C during the bring-up stops what was started; the temporary working
    directory the demo made for itself is removed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "oca", "demo", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
        start_new_session=True,
    )  # fmt: skip
    work: Path | None = None
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            m = re.match(r"oca demo: working directory (\S+)", line)
            if m:
                work = Path(m[1])
            if "started" in line:  # origin, steering and the appliances are up
                break
        assert work is not None and work.is_dir(), lines
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, "".join(lines) + rest
        assert "nothing is left running" in rest
        assert not processes_mentioning(str(work))
        assert not work.exists()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        if work is not None:
            for pid in processes_mentioning(str(work)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

"""The unit files of the appliance image: they parse, say what the docs promise, keep the
exposure systemd rates them at low, and the services still work inside their sandbox.

Three kinds of checks:

- *Facts.* The unit files are read as text; what install.md and serving.md promise
  (TimeoutStopSec above the drain timeout, the one capability, the writable paths, ...)
  is compared with the configuration defaults in the code.
- *systemd's own tools.* ``systemd-analyze verify`` on every unit and ``systemd-analyze
  security --offline=true`` on every service (skipped where systemd-analyze is missing;
  ``make test`` installs it).
- *The real services.* ``oca serve`` is run with a notification socket the test binds, as
  systemd would, to see when READY=1 comes. Then the appliance, the steering service and
  a fill run inside an emulation of their units' sandbox: the unit's
  ``SystemCallFilter=`` (expanded with ``systemd-analyze syscall-filter``, denied calls
  failing with ``SystemCallErrorNumber=``), ``RestrictAddressFamilies=``,
  ``MemoryDenyWriteExecute=`` (the kernel's PR_SET_MDWE), ``NoNewPrivileges=`` and
  ``UMask=``, built from the unit file itself with libseccomp, so a directive that
  breaks a function (netlink for the routes, sendfile, TLS, psutil's /proc reads,
  outbound HTTP) fails here. Mount namespaces, users and capabilities are not emulated.
"""

from __future__ import annotations

import configparser
import ctypes
import errno
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import pytest

from oca.config import ServerConfig
from oca.health.routes import merge_prefixes, read_route_prefixes
from oca.server.supervisor import GRACE_SECONDS
from steering.config import ServiceConfig, parse_listen
from tests.appliance import Appliance, fetch, free_port, make_tls, wait_until, write_tree
from tests.peering.origin_proc import OriginProcess
from tests.steering.live import PATTERN, Steering, build_catalog, new_key, steering_section

REPO_ROOT = Path(__file__).resolve().parent.parent
UNITS = REPO_ROOT / "systemd"
SERVICES = ("oca.service", "oca-fill.service", "oca-steering.service")
ALL_UNITS = (*SERVICES, "oca-fill.timer")
#: The exposure level ``systemd-analyze security`` may give each service (0 = locked down,
#: 10 = fully exposed); install.md quotes the figures.
MAX_EXPOSURE = 2.0

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="no systemd-analyze"
)


def unit(name: str) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string((UNITS / name).read_text())
    return cp


def values(name: str, key: str) -> list[str]:
    """Every assignment of ``key`` in the unit, in order (directives that accumulate)."""
    out = []
    for line in (UNITS / name).read_text().splitlines():
        k, sep, v = line.partition("=")
        if sep and not line.lstrip().startswith(("#", ";")) and k.strip() == key:
            out.append(v.strip())
    return out


def seconds(span: str) -> float:
    """A systemd time span ("45", "45s", "1min 30s", "10min", "1d") in seconds."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600, "d": 86400}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", span)
    assert parts and "".join(n + u for n, u in parts) == span.replace(" ", ""), span
    return sum(float(n) * units[u or "s"] for n, u in parts)


# --------------------------------------------------------------------------- facts


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


def test_serve_unit_says_what_the_docs_promise() -> None:
    s = unit("oca.service")["Service"]
    assert s["Type"] == "notify" and s["NotifyAccess"] == "main"
    assert s["ExecStart"].split()[1:] == ["serve", "-c", "/etc/oca/oca.toml"]
    # SIGTERM to the supervisor, which drains its workers; systemd's SIGKILL only after
    # the drain timeout and the supervisor's own grace period have passed.
    assert s["KillMode"] == "mixed" and s["KillSignal"] == "SIGTERM"
    drain = ServerConfig().drain_timeout_seconds
    assert seconds(s["TimeoutStopSec"]) > drain + GRACE_SECONDS
    assert seconds(s["WatchdogSec"]) >= 10
    assert int(s["LimitNOFILE"]) >= 65536
    assert values("oca.service", "CapabilityBoundingSet") == ["CAP_NET_BIND_SERVICE"]
    assert values("oca.service", "AmbientCapabilities") == ["CAP_NET_BIND_SERVICE"]
    assert "PrivateUsers" not in s  # the capability would not count for ports < 1024
    assert s["User"] == "oca" and s["NoNewPrivileges"] == "yes"
    assert s["ProtectSystem"] == "strict"
    assert "/srv/oca" in s["ReadWritePaths"].split()
    # The state directory systemd creates and leaves writable is the default state_dir.
    assert ServerConfig().state_dir == "/var/lib/" + s["StateDirectory"]
    # The load figure reads /proc/stat and /proc/net/dev: no ProcSubset=pid.
    assert "ProcSubset" not in s
    assert "AF_NETLINK" in s["RestrictAddressFamilies"].split()  # routes over rtnetlink


def test_fill_unit_shares_the_store_and_holds_no_capability() -> None:
    serve, fill = unit("oca.service")["Service"], unit("oca-fill.service")["Service"]
    assert values("oca-fill.service", "CapabilityBoundingSet") == [""]
    assert "AmbientCapabilities" not in fill
    for key in ("User", "Group", "StateDirectory", "ReadWritePaths", "UMask"):
        assert fill[key] == serve[key], key
    assert fill["ExecStart"].split()[1:] == ["fill", "-c", "/etc/oca/oca.toml"]


def test_steering_unit_matches_the_steering_defaults() -> None:
    s = unit("oca-steering.service")["Service"]
    assert s["ExecStart"].split()[1:] == ["steering", "-c", "/etc/oca/steering.toml"]
    # The service sends no READY=1, so systemd must not wait for one.
    assert s["Type"] == "exec"
    assert not any("NOTIFY_SOCKET" in p.read_text() for p in (REPO_ROOT / "steering").glob("*.py"))
    assert ServiceConfig().state_dir == "/var/lib/" + s["StateDirectory"]
    # No capability: the default listener needs none.
    assert values("oca-steering.service", "CapabilityBoundingSet") == [""]
    assert all(parse_listen(a, "listen")[1] >= 1024 for a in ServiceConfig().listen)
    assert s["ExecReload"] == "/bin/kill -HUP $MAINPID"  # SIGHUP re-reads the catalog


@needs_analyze
@pytest.mark.parametrize("name", ALL_UNITS)
def test_units_verify(tmp_path: Path, name: str) -> None:
    # Point ExecStart at this interpreter's oca so the check is about the unit itself.
    oca = Path(sys.executable).with_name("oca")
    for n in ALL_UNITS:
        text = (UNITS / n).read_text().replace("/opt/oca/bin/oca", str(oca))
        (tmp_path / n).write_text(text)
    out = subprocess.run(["systemd-analyze", "verify", str(tmp_path / name)],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    problems = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    assert not problems, problems
    assert out.returncode == 0


def exposure(name: str) -> float:
    out = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(UNITS / name)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out.stdout)
    assert m, out.stdout[-2000:] + out.stderr
    return float(m.group(1))


@needs_analyze
@pytest.mark.parametrize("name", SERVICES)
def test_services_are_rated_low_exposure(name: str) -> None:
    assert exposure(name) <= MAX_EXPOSURE


# --------------------------------------------------------------------------- READY=1

FILES = {f"/titles/sd/v720/seg-{i:05d}.m4s": os.urandom(40_000 + i) for i in range(1, 9)}


def _recv_notify(sock: socket.socket, deadline: float) -> tuple[int, str] | None:
    """The next (sender pid, message) on a notification socket, or None at the deadline."""
    sock.settimeout(max(deadline - time.monotonic(), 0.001))
    try:
        data, anc, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(12))
    except TimeoutError:
        return None
    pid = -1
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid = struct.unpack("iII", payload[:12])[0]
    return pid, data.decode()


def test_ready_comes_after_the_listeners_are_bound_and_the_inventory_is_loaded(
    tmp_path: Path,
) -> None:
    app = Appliance(tmp_path, workers=2)
    app.import_tree(write_tree(tmp_path / "src", FILES))
    app.write_config()
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    notify.bind(str(tmp_path / "notify"))
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "400000"}
    with open(tmp_path / "server.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "oca", "serve", "-c", str(app.config_path)],
            stdout=log, stderr=log, env=env, start_new_session=True,
        )  # fmt: skip
    metrics_dir = tmp_path / "state" / "run" / "metrics"
    try:
        deadline = time.monotonic() + 30
        before: list[tuple[int, str]] = []
        while (got := _recv_notify(notify, deadline)) is not None:
            if "READY=1" in got[1].split("\n"):
                break
            before.append(got)
        else:
            raise AssertionError(f"no READY=1 within 30 s; got {before}\n{app.log_text()}")
        # At this instant, and before anything else is looked at: every worker has
        # loaded the store and published its first metrics snapshot, saying ready.
        snaps = [orjson.loads(p.read_bytes()) for p in metrics_dir.glob("worker-*.json")]
        assert len(snaps) == 2 and all(s["gauges"].get("ready") == 1 for s in snaps), snaps
        pid, message = got
        assert pid == proc.pid, "READY=1 must come from the main process (NotifyAccess=main)"
        assert "STATUS=serving with 2 worker(s)" in message
        assert all(m == "WATCHDOG=1" and p == proc.pid for p, m in before), before
        # The listeners accept, and the objects are there, without waiting.
        listeners = orjson.loads((tmp_path / "state" / "run" / "listeners.json").read_bytes())
        host, port = listeners["listeners"][0]["url"].split("://")[1].rsplit(":", 1)
        for path, data in FILES.items():
            assert fetch(host, int(port), path, timeout=2.0)[::2] == (200, data)
        assert fetch(host, int(port), "/readyz", timeout=2.0)[0] == 200
        # Watchdog pings keep coming from the main process, every WATCHDOG_USEC / 2.
        pings = []
        deadline = time.monotonic() + 1.5
        while (got := _recv_notify(notify, deadline)) is not None:
            pings.append(got)
        assert len(pings) >= 3 and all(p == (proc.pid, "WATCHDOG=1") for p in pings), pings
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while (got := _recv_notify(notify, deadline)) is not None and got[1] == "WATCHDOG=1":
            pass
        assert got == (proc.pid, "STOPPING=1"), got
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        notify.close()
    assert "Traceback" not in app.log_text()


# --------------------------------------------------------------------------- sandbox


@cache
def syscall_group(group: str) -> frozenset[str]:
    """The system calls of ``@group``, nested groups expanded (systemd's own list)."""
    out = subprocess.run(["systemd-analyze", "syscall-filter", "--no-pager", group],
                         capture_output=True, text=True, check=True, timeout=60).stdout  # fmt: skip
    names: set[str] = set()
    for line in out.splitlines()[1:]:
        item = line.strip()
        if item and not item.startswith("#"):
            names |= syscall_group(item) if item.startswith("@") else {item}
    return frozenset(names)


def allowed_syscalls(name: str) -> set[str]:
    """The allow list the unit's SystemCallFilter= lines add up to (the first line is an
    allow list; a line starting with ~ takes calls out of it)."""
    lines = values(name, "SystemCallFilter")
    assert lines and not lines[0].startswith("~"), lines
    # systemd always lets these through, so that a filtered process can exec and exit.
    allowed = {"execve", "exit", "exit_group", "getrlimit", "rt_sigreturn", "sigreturn"}
    for line in lines:
        names: set[str] = set()
        for item in line.lstrip("~").split():
            names |= syscall_group(item) if item.startswith("@") else {item}
        allowed = allowed - names if line.startswith("~") else allowed | names
    return allowed


class _ArgCmp(ctypes.Structure):  # struct scmp_arg_cmp
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]  # fmt: skip


SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_EQ = 4
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1


def enter_sandbox(name: str) -> None:
    """Apply the unit's system call filter, address families, W^X and umask to this
    process and everything it executes (see the module docstring)."""
    seccomp = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    seccomp.seccomp_init.restype = ctypes.c_void_p
    seccomp.seccomp_init.argtypes = [ctypes.c_uint32]
    seccomp.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    seccomp.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(_ArgCmp)
    ]  # fmt: skip
    seccomp.seccomp_load.argtypes = [ctypes.c_void_p]
    deny = getattr(errno, values(name, "SystemCallErrorNumber")[-1])
    ctx = seccomp.seccomp_init(0x00050000 | deny)  # SCMP_ACT_ERRNO(deny) for the rest
    assert ctx, "seccomp_init failed"
    families = [
        getattr(socket, f) for v in values(name, "RestrictAddressFamilies") for f in v.split()
    ]
    for call in sorted(allowed_syscalls(name)):
        nr = seccomp.seccomp_syscall_resolve_name(call.encode())
        if nr < 0:  # not a system call of this architecture
            continue
        if call == "socket" and families:
            for family in families:
                cmp = _ArgCmp(0, SCMP_CMP_EQ, family, 0)
                assert seccomp.seccomp_rule_add_array(ctx, SCMP_ACT_ALLOW, nr, 1, cmp) == 0
        else:
            assert seccomp.seccomp_rule_add_array(ctx, SCMP_ACT_ALLOW, nr, 0, None) == 0, call
    if values(name, "MemoryDenyWriteExecute") == ["yes"]:
        libc = ctypes.CDLL(None, use_errno=True)
        assert libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) == 0, ctypes.get_errno()
    if values(name, "UMask"):
        os.umask(int(values(name, "UMask")[-1], 8))
    assert values(name, "NoNewPrivileges") == ["yes"]  # seccomp_load sets no_new_privs
    assert seccomp.seccomp_load(ctx) == 0, "seccomp_load failed"


def proc_options(name: str) -> str:
    """The /proc mount options the unit's ProtectProc= and ProcSubset= stand for."""
    opts = [f"hidepid={v}" for v in values(name, "ProtectProc")[-1:]]
    opts += [f"subset={v}" for v in values(name, "ProcSubset")[-1:]]
    return ",".join(opts)


def sandboxed(name: str, *argv: str) -> list[str]:
    """The command line running ``python -m oca ARGV`` inside unit ``name``'s sandbox:
    a mount namespace of its own with /proc mounted as the unit says, then the filter.
    Every step execs, so the process keeps the pid the caller sees."""
    code = "import os, sys; from tests.test_systemd_units import enter_sandbox; "
    code += "enter_sandbox(sys.argv[1]); os.execv(sys.executable, [sys.executable, *sys.argv[2:]])"
    cmd = [sys.executable, "-c", code, name, "-m", "oca", *argv]
    if proc_options(name):
        mount = 'mount -t proc -o "$0" proc /proc && exec "$@"'
        cmd = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", mount,
               proc_options(name), *cmd]  # fmt: skip
    return cmd


@dataclass
class SandboxedAppliance(Appliance):
    def start(self, timeout: float = 30.0) -> SandboxedAppliance:
        self.write_config()
        with open(self.root / "server.log", "ab") as log:
            self.proc = subprocess.Popen(
                sandboxed("oca.service", "serve", "-c", str(self.config_path)),
                stdout=subprocess.PIPE, stderr=log, cwd=REPO_ROOT,
                env={**os.environ, **self.env}, start_new_session=True,
            )  # fmt: skip
        self._wait_for("oca: ready", timeout)
        return self


@dataclass
class SandboxedSteering(Steering):
    def command(self, netns: str | None = None) -> list[str]:
        assert netns is None
        return sandboxed("oca-steering.service", "steering", "-c", str(self.config_path))


def in_sandbox(pid: int, name: str) -> bool:
    """Whether process ``pid`` runs filtered, and with the /proc that unit ``name`` gives."""
    status = Path(f"/proc/{pid}/status").read_text()
    mounts = Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
    proc = [line.split()[-1] for line in mounts if line.split()[4] == "/proc"]
    return (
        "\nSeccomp:\t2\n" in status
        and "\nNoNewPrivs:\t1\n" in status
        and bool(proc)
        and set(proc_options(name).split(",")) <= set(proc[-1].split(","))
    )


@pytest.fixture
def sandbox_ready() -> Iterator[None]:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("no systemd-analyze to expand the system call groups")
    try:
        ctypes.CDLL("libseccomp.so.2")
    except OSError:
        pytest.skip("no libseccomp")
    probe = subprocess.run(
        [sys.executable, "-c", "import ctypes; l = ctypes.CDLL(None, use_errno=True); "
         f"raise SystemExit(l.prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0))"],
        capture_output=True, timeout=30,
    )  # fmt: skip
    if probe.returncode != 0:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux 6.3+) to stand in for W^X")
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("mounting /proc as the units do needs root and unshare (util-linux)")
    mount = ["unshare", "--mount", "--propagation", "private", "--", "mount", "-t", "proc",
             "-o", "hidepid=invisible,subset=pid", "proc", "/proc"]  # fmt: skip
    if subprocess.run(mount, capture_output=True, timeout=30).returncode != 0:
        pytest.skip("this machine does not let a mount namespace mount /proc")
    yield


def test_appliance_steering_and_fill_work_inside_their_units_sandbox(
    tmp_path: Path, sandbox_ready: None
) -> None:
    tree = tmp_path / "origin"
    shutil.copytree(PATTERN / "pattern", tree / "titles" / "pattern")
    n_objects = len(list((PATTERN / "pattern").iterdir()))
    hb_key, url_key = new_key(), new_key()
    steer_port = free_port()
    steer_url = f"http://127.0.0.1:{steer_port}"
    cert, key, client_tls = make_tls(tmp_path)
    # The main table's kernel routes stand in for a BGP daemon's table: read outside the
    # sandbox here, over rtnetlink inside it by the appliance.
    routed = read_route_prefixes(254, ["kernel"])
    with OriginProcess(tree) as origin:
        steering = SandboxedSteering(
            tmp_path / "steering", heartbeat_keys={"hb": hb_key}, url_keys={"u1": url_key},
            listen=f"127.0.0.1:{steer_port}",
            extra='[[fill.boosts]]\ntitle = "pattern"\nrequests_per_day = 100000\n'
            "[ranking]\noverload_threshold = 50.0\n",
        )  # fmt: skip
        steering.root.mkdir(parents=True)
        build_catalog(steering.catalog_path, tree / "titles", origin.url)
        sections = '[peering]\nappliance_id = "a1"\nsite = "s1"\n' + steering_section(
            [steer_url], "hb", hb_key, prefixes=["10.1.0.0/16"],
            routes_table=254, routes_protocols=["kernel"],
        )  # fmt: skip
        sections += f'[fill]\nmanifest = "{steer_url}/v1/fill/a1"\nwindow_jitter_seconds = 0\n'
        app = SandboxedAppliance(tmp_path / "a1", workers=2, keys={"u1": url_key},
                                 tls_cert=(cert, key), sections=sections)  # fmt: skip
        app.root.mkdir()
        steering.start()
        try:
            app.start()
            assert steering.proc is not None and in_sandbox(
                steering.proc.pid, "oca-steering.service"
            )
            assert app.proc is not None and in_sandbox(app.proc.pid, "oca.service")
            workers = app.worker_pids()
            assert workers and all(in_sandbox(p, "oca.service") for p in workers)

            # Heartbeats: outbound HTTP, psutil's load, the routes over netlink.
            def a1() -> dict[str, Any] | None:
                return steering.fleet().get("a1")

            def healthy() -> dict[str, Any] | None:
                # The first heartbeats may still count a worker as starting.
                state = a1()
                ok = state and state["status"] == "in-rotation" and state["reasons"] == []
                return state if ok else None

            try:
                first = wait_until(healthy, 20, "a1 in rotation with no reason against it")
            except AssertionError:
                raise AssertionError(f"a1 is not healthy: {a1()}\n{app.log_text()}") from None
            assert first is not None
            assert set(first["prefixes"]) == set(merge_prefixes(["10.1.0.0/16"], routed))
            assert first["capacity_bytes"] > 0

            # The fill, in its own unit's sandbox, from the steering service's manifest.
            fill = sandboxed("oca-fill.service", "fill", "-c", str(app.config_path), "--now")
            done = subprocess.run(fill, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr[-3000:]
            wait_until(lambda: (a1() or {}).get("objects") == n_objects, 20, "a1 reports the fill")

            # A signed URL from steering, served with sendfile over HTTP and over TLS.
            path = max(
                (p for p in (tree / "titles" / "pattern").iterdir()), key=lambda p: p.stat().st_size
            )
            obj = "/titles/pattern/" + path.name
            status, doc = steering.json(f"/v1/titles/pattern/urls?path={obj}")
            assert status == 200 and doc["urls"][0]["appliance"] == "a1", doc
            signed = doc["urls"][0]["url"]
            with urllib.request.urlopen(signed, timeout=10) as resp:
                assert resp.status == 200 and resp.read() == path.read_bytes()
            https = app.urls["https"] + signed.split(app.url, 1)[1]
            with urllib.request.urlopen(https, timeout=10, context=client_tls) as resp:
                assert resp.status == 200 and resp.read() == path.read_bytes()
            host, port = app.host_port

            def sent_with_sendfile() -> float:
                # Summed over the workers' snapshots, which are up to a second old.
                status, _, body = fetch(host, port, "/metrics")
                assert status == 200
                line = rb'^oca_send_method_bytes_total\{method="sendfile"\} (\S+)$'
                found = re.search(line, body, re.M)
                return float(found.group(1)) if found else 0.0

            size = path.stat().st_size
            wait_until(lambda: sent_with_sendfile() >= size, 10, "the bytes sent with sendfile")
            assert fetch(host, port, "/readyz")[0] == 200
        finally:
            code = app.stop()
            steering_code = steering.stop()
    assert code == 0 and steering_code == 0
    for log in (app.log_text(), steering.log_text()):
        assert "Traceback" not in log and "Operation not permitted" not in log, log[-4000:]

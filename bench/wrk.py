"""The load generator: a ``wrk`` with a large receive buffer, and its machine-readable output.

Stock ``wrk`` reads responses in 8 KiB chunks (``RECVBUF`` in ``src/wrk.h``), which caps
one client core near 1.9 GB/s on loopback: every server then looks the same. This module
builds ``wrk`` once from Debian's source package with ``RECVBUF`` raised (256 KiB by
default) and caches the binary under ``~/.cache/oca-bench`` (``$XDG_CACHE_HOME``
honoured). Steps, each idempotent:

1. ``apt-get source wrk`` into a scratch directory. When apt has no ``deb-src`` entries,
   one file is added, ``/etc/apt/sources.list.d/oca-bench-deb-src.sources``, mirroring the
   enabled Debian ``deb`` entries as ``deb-src`` (root only), then ``apt-get update``.
2. The build dependencies are installed (``libluajit-5.1-dev luajit libssl-dev make gcc
   pkg-config``) when missing, falling back to ``apt-get build-dep wrk``.
3. ``RECVBUF`` is patched and ``make`` builds against the system LuaJIT and OpenSSL,
   as Debian's own build does.

When any step fails, :func:`ensure_wrk` returns the stock binary with a note saying why;
the caller must then warn that the client may be the bottleneck.

Every workload script in ``bench/lua`` prints one JSON line from wrk's ``done()`` hook,
prefixed with :data:`RESULT_MARK`; :func:`parse_result` turns it into a :class:`WrkResult`.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

STOCK_RECVBUF_BYTES = 8192
DEFAULT_RECVBUF_BYTES = 256 * 1024
RESULT_MARK = "OCA-BENCH-RESULT "
BUILD_DEPS = ("libluajit-5.1-dev", "luajit", "libssl-dev", "make", "gcc", "pkg-config")
DEB_SRC_FILE = "/etc/apt/sources.list.d/oca-bench-deb-src.sources"
LUA_DIR = Path(__file__).resolve().parent / "lua"

Log = Callable[[str], None]


class WrkBuildError(Exception):
    """A step of the wrk build failed; the message says which and why."""


@dataclass(frozen=True)
class WrkBinary:
    path: str
    recvbuf_bytes: int  # 0 when unknown (a binary given by the user)
    built: bool  # True when this is the patched build
    note: str  # why the stock binary is used, or where the build came from

    def describe(self) -> str:
        if not self.recvbuf_bytes:
            return f"{self.path} ({self.note})"
        kind = "patched" if self.built else "stock"
        return f"{self.path} ({kind}, RECVBUF {self.recvbuf_bytes // 1024} KiB)"


@dataclass(frozen=True)
class WrkResult:
    """One wrk run's summary, as printed by the Lua ``done()`` hook."""

    duration_s: float
    requests: int
    bytes: int
    errors_connect: int
    errors_read: int
    errors_write: int
    errors_status: int  # responses with status >= 400
    errors_timeout: int
    latency_p50_us: float
    latency_p90_us: float
    latency_p99_us: float
    latency_max_us: float
    latency_mean_us: float

    @property
    def errors(self) -> int:
        return (
            self.errors_connect
            + self.errors_read
            + self.errors_write
            + self.errors_status
            + self.errors_timeout
        )


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "oca-bench"


def stock_wrk() -> str | None:
    return shutil.which("wrk")


def ensure_wrk(
    cache_dir: Path | None = None,
    *,
    recvbuf_bytes: int = DEFAULT_RECVBUF_BYTES,
    build: bool = True,
    log: Log = print,
) -> WrkBinary | None:
    """The best wrk available: the cached patched build, a fresh one, or stock wrk."""
    cache = cache_dir if cache_dir is not None else default_cache_dir()
    target = cache / f"wrk-recvbuf{recvbuf_bytes}"
    if _usable(target):
        return WrkBinary(str(target), recvbuf_bytes, True, f"cached build in {cache}")
    reason = "building was disabled (--no-build-wrk)"
    if build:
        cache.mkdir(parents=True, exist_ok=True)
        try:
            with _locked(cache / ".lock"):
                if not _usable(target):
                    log(f"building wrk with RECVBUF={recvbuf_bytes} into {target} (once)")
                    _build(cache, target, recvbuf_bytes, log)
            return WrkBinary(str(target), recvbuf_bytes, True, "built from Debian's source")
        except WrkBuildError as exc:
            reason = f"building a patched wrk failed: {exc}"
    stock = stock_wrk()
    if stock is None:
        return None
    return WrkBinary(stock, STOCK_RECVBUF_BYTES, False, reason)


def _usable(path: Path) -> bool:
    if not os.access(path, os.X_OK):
        return False
    try:
        out = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "wrk" in out.stdout + out.stderr


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run(cmd: Sequence[str], cwd: Path | None = None, timeout: float = 900) -> str:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", LC_ALL="C")
    try:
        proc = subprocess.run(
            list(cmd), cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise WrkBuildError(f"{' '.join(cmd)}: {exc}") from None
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-3:]
        raise WrkBuildError(f"{' '.join(cmd)} exited {proc.returncode}: {' | '.join(tail)}")
    return proc.stdout


def _sudo() -> list[str]:
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo") is None:
        raise WrkBuildError("not root and no sudo: cannot install packages")
    return ["sudo", "-n"]


def _build(cache: Path, target: Path, recvbuf_bytes: int, log: Log) -> None:
    if shutil.which("apt-get") is None:
        raise WrkBuildError("apt-get not found (not a Debian-based system)")
    work = cache / "build"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    _fetch_source(work, log)
    src = _source_tree(work)
    _install_build_deps(log)
    _patch_recvbuf(src / "src" / "wrk.h", recvbuf_bytes)
    log(f"compiling wrk in {src}")
    jobs = str(max(1, os.cpu_count() or 1))
    version = f"VER={src.name.removeprefix('wrk-')}-recvbuf{recvbuf_bytes}"
    _run(["make", "-j", jobs, "WITH_LUAJIT=/usr", "WITH_OPENSSL=/usr", version], cwd=src)
    built = src / "wrk"
    if not built.exists():
        raise WrkBuildError(f"make finished but {built} is missing")
    tmp = target.with_suffix(".tmp")
    shutil.copy2(built, tmp)
    os.replace(tmp, target)
    if not _usable(target):
        raise WrkBuildError(f"the built binary {target} does not run")
    shutil.rmtree(work, ignore_errors=True)
    log(f"wrk built: {target}")


def _fetch_source(work: Path, log: Log) -> None:
    try:
        _run(["apt-get", "source", "-qq", "wrk"], cwd=work)
        return
    except WrkBuildError as exc:
        if "deb-src" not in str(exc):
            raise
    log(f"apt has no deb-src entries; adding {DEB_SRC_FILE}")
    _enable_deb_src()
    _run([*_sudo(), "apt-get", "update", "-qq"])
    _run(["apt-get", "source", "-qq", "wrk"], cwd=work)


def _source_tree(work: Path) -> Path:
    trees = [Path(p) for p in glob.glob(str(work / "wrk-*")) if os.path.isdir(p)]
    if len(trees) != 1:
        raise WrkBuildError(f"expected one unpacked wrk-* tree in {work}, found {len(trees)}")
    return trees[0]


def debian_deb_src_stanzas(sources: dict[str, str]) -> str:
    """deb822 ``deb-src`` stanzas mirroring the enabled Debian ``deb`` entries.

    ``sources`` maps a file name to its text: ``*.sources`` files are deb822, ``*.list``
    files one-line format. Only Debian archives are mirrored (URIs naming debian), so
    third-party repositories never gain source entries.
    """
    out: list[str] = []
    for name, text in sorted(sources.items()):
        if name.endswith(".sources"):
            for stanza in re.split(r"\n\s*\n", text):
                fields = _deb822_fields(stanza)
                types = fields.get("types", "").split()
                if "deb" not in types or "deb-src" in types:
                    continue
                if "debian" not in fields.get("uris", "") or fields.get("enabled") == "no":
                    continue
                lines = ["Types: deb-src"]
                for key in ("URIs", "Suites", "Components", "Signed-By"):
                    if key.lower() in fields:
                        lines.append(f"{key}: {fields[key.lower()]}")
                out.append("\n".join(lines))
        elif name.endswith(".list"):
            for raw in text.splitlines():
                parts = raw.split("#", 1)[0].split()
                if len(parts) < 3 or parts[0] != "deb":
                    continue
                opts = ""
                if parts[1].startswith("["):
                    end = next(i for i, p in enumerate(parts) if p.endswith("]"))
                    opts = " ".join(parts[1 : end + 1]) + " "
                    parts = [parts[0], *parts[end + 1 :]]
                if "debian" not in parts[1]:
                    continue
                uri, suite, comps = parts[1], parts[2], " ".join(parts[3:])
                out.append(
                    f"Types: deb-src\nURIs: {uri}\nSuites: {suite}\nComponents: {comps}"
                    + _signed_by(opts)
                )
    return "\n\n".join(out) + ("\n" if out else "")


def _signed_by(opts: str) -> str:
    m = re.search(r"signed-by=(\S+?)\]?(\s|$)", opts)
    return f"\nSigned-By: {m.group(1)}" if m else ""


def _deb822_fields(stanza: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in stanza.splitlines():
        if not line.strip() or line.lstrip().startswith("#") or line[0] in " \t":
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip().lower()] = value.strip()
    return fields


def _enable_deb_src() -> None:
    if os.geteuid() != 0:
        raise WrkBuildError(
            "apt has no deb-src entries and this is not root; add deb-src to "
            "/etc/apt/sources.list.d/debian.sources (Types: deb deb-src) and rerun"
        )
    texts: dict[str, str] = {}
    candidates = ["/etc/apt/sources.list", *glob.glob("/etc/apt/sources.list.d/*")]
    for path in candidates:
        if path == DEB_SRC_FILE or not path.endswith((".list", ".sources")):
            continue
        with contextlib.suppress(OSError):
            texts[os.path.basename(path)] = Path(path).read_text()
    stanzas = debian_deb_src_stanzas(texts)
    if not stanzas:
        raise WrkBuildError("no enabled Debian deb entries in /etc/apt to mirror as deb-src")
    Path(DEB_SRC_FILE).write_text(
        "# Added by `oca bench serve` to fetch wrk's source package; safe to delete.\n" + stanzas
    )


def _missing_packages(names: Sequence[str]) -> list[str]:
    missing = []
    for name in names:
        proc = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", name], capture_output=True, text=True
        )
        if "install ok installed" not in proc.stdout:
            missing.append(name)
    return missing


def _install_build_deps(log: Log) -> None:
    missing = _missing_packages(BUILD_DEPS)
    if not missing:
        return
    log(f"installing wrk build dependencies: {' '.join(missing)}")
    try:
        _run([*_sudo(), "apt-get", "install", "-y", "-qq", *missing])
    except WrkBuildError:
        _run([*_sudo(), "apt-get", "update", "-qq"])
        try:
            _run([*_sudo(), "apt-get", "install", "-y", "-qq", *missing])
        except WrkBuildError:
            _run([*_sudo(), "apt-get", "build-dep", "-y", "-qq", "wrk"])


def patch_recvbuf(header: str, recvbuf_bytes: int) -> str:
    """``src/wrk.h`` text with ``#define RECVBUF`` set to ``recvbuf_bytes``."""
    new, n = re.subn(
        r"^(#define\s+RECVBUF\s+)\d+", rf"\g<1>{recvbuf_bytes}", header, flags=re.MULTILINE
    )
    if n != 1:
        raise WrkBuildError(f"expected one '#define RECVBUF' in wrk.h, found {n}")
    return new


def _patch_recvbuf(path: Path, recvbuf_bytes: int) -> None:
    try:
        text = path.read_text()
    except OSError as exc:
        raise WrkBuildError(f"cannot read {path}: {exc.strerror}") from None
    path.write_text(patch_recvbuf(text, recvbuf_bytes))


# ---------------------------------------------------------------------- running


def lua_script(name: str) -> str:
    path = LUA_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"wrk script {path} is missing")
    return str(path)


def wrk_command(
    binary: WrkBinary,
    url: str,
    *,
    script: str,
    script_args: Sequence[str],
    connections: int,
    duration_s: float,
    threads: int = 1,
    timeout_s: float = 10.0,
    cpus: str | None = None,
) -> list[str]:
    """The argv of one wrk run, pinned with taskset to ``cpus`` when given."""
    cmd = [] if cpus is None else ["taskset", "-c", cpus]
    cmd += [
        binary.path,
        "-t",
        str(threads),
        "-c",
        str(max(connections, threads)),
        "-d",
        f"{max(1, round(duration_s))}s",
        "--timeout",
        f"{max(1, round(timeout_s))}s",
        "-s",
        script,
        url,
        "--",
        *script_args,
    ]
    return cmd


def parse_result(stdout: str) -> WrkResult:
    """The :class:`WrkResult` in a wrk run's stdout; ``ValueError`` when absent."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            data = orjson.loads(line[len(RESULT_MARK) :])
            return WrkResult(
                duration_s=float(data["duration_us"]) / 1e6,
                requests=int(data["requests"]),
                bytes=int(data["bytes"]),
                errors_connect=int(data["errors"]["connect"]),
                errors_read=int(data["errors"]["read"]),
                errors_write=int(data["errors"]["write"]),
                errors_status=int(data["errors"]["status"]),
                errors_timeout=int(data["errors"]["timeout"]),
                latency_p50_us=float(data["latency_us"]["p50"]),
                latency_p90_us=float(data["latency_us"]["p90"]),
                latency_p99_us=float(data["latency_us"]["p99"]),
                latency_max_us=float(data["latency_us"]["max"]),
                latency_mean_us=float(data["latency_us"]["mean"]),
            )
    raise ValueError("no result line in wrk's output (did the script's done() run?)")


if __name__ == "__main__":  # pragma: no cover - manual helper: build and show the binary
    found = ensure_wrk()
    print(found.describe() if found else "no wrk available", found.note if found else "")

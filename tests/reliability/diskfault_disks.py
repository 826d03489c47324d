"""Disks that can be broken on command: loop-mounted ext4 images and an EIO injector.

Theory of operation
-------------------
Each disk of an appliance under test is a real filesystem: an ext4 image made with
``mkfs.ext4`` in a file and mounted with ``mount -o loop`` at the disk root the
appliance is configured with. The faults are the kernel's own behaviour:

- **disappear**: ``umount -l`` (lazy) detaches the filesystem while descriptors the
  server holds keep the old one alive; path lookups now land in the empty mount-point
  directory underneath, as after a drive drops out and its mount is torn down;
- **read-only**: ext4 meets an error and, mounted ``errors=remount-ro``, turns itself
  read-only (the error is raised through ext4's own ``trigger_fs_error`` in sysfs, so
  it works while files are open for writing, where ``mount -o remount,ro`` would be
  refused as busy); every write then fails with EROFS. Undoing it takes what an
  operator does: unmount, ``e2fsck -fy``, mount again;
- **full**: a filler file takes every free block (written as root, so ext4's reserved
  blocks go too; images are made with ``-m 0`` so there are none to begin with);
- **EIO**: this kernel has no device-mapper (no ``dm-error``/``dm-flakey`` target), so
  a FUSE passthrough filesystem (``diskfault_inject.c``, built here with gcc against
  libfuse3) is mounted at the disk root over the loop-mounted image and fails the
  operations it is told to with EIO, all of them (a dead disk) or the reads of chosen
  files (bad sectors). It opens files with direct_io and keeps no attribute cache, so
  every read reaches it and none is answered from the page cache.

Everything is undone by :meth:`DiskRig.close` (called from fixtures' ``finally``): the
injectors are unmounted and killed by process group, the loop filesystems lazily
unmounted (the loop device is released with the last descriptor), images deleted.
Mount points live under the test's own temporary directory, so names never collide
with another test's.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
INJECTOR_SOURCE = HERE / "diskfault_inject.c"
FILLER = "diskfault-filler"


def require_root_tools() -> None:
    """Skip unless loop mounts can be made here (root, mkfs.ext4, a loop device)."""
    if os.geteuid() != 0:
        pytest.skip("loop-mounted filesystems need root")
    if shutil.which("mkfs.ext4") is None or not os.path.exists("/dev/loop-control"):
        pytest.skip("needs mkfs.ext4 (e2fsprogs) and loop devices")


def build_injector(out_dir: Path) -> Path:
    """Compile the FUSE fault injector (skips when libfuse3's headers are missing)."""
    require_root_tools()
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse")
    if shutil.which("gcc") is None or shutil.which("pkg-config") is None:
        pytest.skip("building the EIO injector needs gcc and pkg-config")
    flags = subprocess.run(
        ["pkg-config", "--cflags", "--libs", "fuse3"], capture_output=True, text=True
    )
    if flags.returncode != 0:
        pytest.skip("building the EIO injector needs libfuse3-dev (Debian) for fuse3.pc")
    digest = hashlib.sha256(INJECTOR_SOURCE.read_bytes()).hexdigest()[:12]
    binary = out_dir / f"diskfault_inject-{digest}"
    if not binary.exists():
        cmd = ["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(binary),
               str(INJECTOR_SOURCE), *flags.stdout.split()]  # fmt: skip
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120)
    return binary


def _run(*cmd: str) -> None:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {out.stderr.strip() or out.stdout.strip()}")


def mounted(path: Path) -> bool:
    """Whether ``path`` is a mount point now (from /proc/self/mountinfo, no stat: a
    stat of a dead FUSE mount would hang or fail)."""
    target = os.path.abspath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mnt = line.split()[4].replace("\\040", " ")
            if mnt == target:
                return True
    return False


class LoopDisk:
    """An ext4 image of ``size_mib`` MiB loop-mounted at ``mount``."""

    def __init__(self, image: Path, mount: Path, size_mib: int) -> None:
        self.image = image
        self.mount = mount
        self.size_mib = size_mib

    def create(self) -> LoopDisk:
        self.image.parent.mkdir(parents=True, exist_ok=True)
        with open(self.image, "wb") as f:
            f.truncate(self.size_mib << 20)
        # -m 0: no blocks reserved for root; the test runs as root and would use them.
        _run("mkfs.ext4", "-q", "-F", "-b", "4096", "-m", "0", "-E", "lazy_itable_init=0,nodiscard",
             str(self.image))  # fmt: skip
        self.mount.mkdir(parents=True, exist_ok=True)
        self.attach()
        return self

    def attach(self) -> None:
        _run("mount", "-o", "loop,errors=remount-ro", str(self.image), str(self.mount))

    def device(self) -> str:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if fields[4] == os.path.abspath(self.mount):
                    return fields[fields.index("-") + 2]
        raise RuntimeError(f"{self.mount} is not mounted")

    def released(self) -> bool:
        """No loop device is attached to the image any more (its last user is gone)."""
        out = subprocess.run(["losetup", "-j", str(self.image)], capture_output=True, text=True)
        return not out.stdout.strip()

    def wait_released(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.released():
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.image} is still in use {timeout:.0f}s after its "
                                     "unmount: something keeps a descriptor on it")  # fmt: skip
            time.sleep(0.05)

    # ------------------------------------------------------------------ faults
    def vanish(self) -> None:
        """The filesystem goes away under whoever uses it (lazy unmount)."""
        _run("umount", "-l", str(self.mount))

    def fs_error(self) -> None:
        """ext4 meets an error and turns read-only (errors=remount-ro)."""
        dev = os.path.basename(self.device())
        with open(f"/sys/fs/ext4/{dev}/trigger_fs_error", "w") as f:
            f.write("diskfault: simulated metadata error\n")

    def reattach(self) -> None:
        """Mount the image again once the lazily unmounted instance is gone (two live
        mounts of one ext4 image would corrupt it)."""
        self.wait_released()
        self.attach()

    def repair(self) -> None:
        """What an operator does after ext4 went read-only: unmount, fsck, mount."""
        _run("umount", "-l", str(self.mount))
        self.wait_released()
        subprocess.run(["e2fsck", "-fy", str(self.image)], capture_output=True, timeout=120)
        self.attach()

    def fill_up(self) -> int:
        """Take every free block with a filler file; the bytes it got. Written until
        ENOSPC, synced (delayed allocation reserves more than it finally uses, and gives
        the rest back when the blocks are allocated), and topped up until none is free."""
        written = 0
        with open(self.mount / FILLER, "ab", buffering=0) as f:
            for _ in range(20):
                for size in (1 << 20, 4096):  # big chunks, then the last few blocks
                    chunk = bytes(size)
                    while True:
                        try:
                            written += f.write(chunk) or 0
                        except OSError as exc:
                            if exc.errno != errno.ENOSPC:
                                raise
                            break
                with contextlib.suppress(OSError):
                    os.fsync(f.fileno())
                if self.free() == 0:
                    break
        return written

    def free(self) -> int:
        vfs = os.statvfs(self.mount)
        return vfs.f_bavail * vfs.f_frsize

    def unfill(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.mount / FILLER).unlink()

    def close(self) -> None:
        if mounted(self.mount):
            subprocess.run(["umount", "-l", str(self.mount)], capture_output=True, timeout=60)
        with contextlib.suppress(OSError):
            self.image.unlink()


class FaultFS:
    """The EIO injector mounted at ``mount``, passing through to ``backing``."""

    CONTROL = ".diskfault"

    def __init__(self, binary: Path, backing: Path, mount: Path, log: Path) -> None:
        self.binary = binary
        self.backing = backing
        self.mount = mount
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> FaultFS:
        self.mount.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [str(self.binary), str(self.backing), str(self.mount), "-f"],
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not mounted(self.mount):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"the EIO injector did not mount: {self.log.read_text()}")
            time.sleep(0.02)
        return self

    def set(self, mode: str, prefix: str = "/") -> None:
        """``ok``, ``eio``, ``eio-read`` or ``eio-write`` (see diskfault_inject.c); in
        force when this returns."""
        with open(self.mount / self.CONTROL, "w") as f:
            f.write(f"{mode} {prefix}\n")

    def injected(self) -> int:
        """How many operations it has failed so far."""
        text = (self.mount / self.CONTROL).read_text()
        return int(text.rsplit("injected=", 1)[1])

    def close(self) -> None:
        if mounted(self.mount):
            subprocess.run(["umount", "-l", str(self.mount)], capture_output=True, timeout=60)
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            self.proc = None


class DiskRig:
    """The disks of one appliance: ``root/<tier><i>`` as the appliance names them, each
    a loop-mounted image; with ``eio=True`` a disk gets the injector on top (its image
    is then mounted at ``root/.backing/<name>``)."""

    def __init__(self, root: Path, injector: Path | None = None) -> None:
        self.root = root
        self.injector = injector
        self.loops: dict[str, LoopDisk] = {}
        self.faults: dict[str, FaultFS] = {}

    def add(self, name: str, size_mib: int, *, eio: bool = False) -> Path:
        disk = self.root / name
        if eio:
            assert self.injector is not None, "build the injector first"
            backing = self.root / ".backing" / name
            self.loops[name] = LoopDisk(self.root / ".images" / f"{name}.img", backing, size_mib)
            self.loops[name].create()
            fs = FaultFS(self.injector, backing, disk, self.root / f".{name}-inject.log")
            self.faults[name] = fs.start()
        else:
            self.loops[name] = LoopDisk(self.root / ".images" / f"{name}.img", disk, size_mib)
            self.loops[name].create()
        return disk

    def close(self) -> None:
        for fs in self.faults.values():
            fs.close()
        for loop in self.loops.values():
            loop.close()


def leftover_mounts(root: Path) -> list[str]:
    """Mounts still present under ``root`` (for the tests' final check)."""
    prefix = os.path.abspath(root) + os.sep
    with open("/proc/self/mountinfo") as f:
        return [m for line in f if (m := line.split()[4]).startswith(prefix)]

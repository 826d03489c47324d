"""The appliance the bad-input tests attack, and proof that they left no trace in the store.

The site is a real ``oca serve`` (two workers, an SSD and an HDD tier, two signing
keys) holding a small title set of distinct bytes, with *sentinel* files planted where
a path traversal would land: next to the disks, at each disk root (one level above
``objects/``), and as a stray file inside ``objects/`` that the inventory does not
list. Every sentinel's bytes carry :data:`SENTINEL_MARK`; no response body may ever
contain it.

:class:`StoreSnapshot` records, with the appliance stopped, everything the store is:
``oca store ls --json`` and every file under the appliance's root with its sha256.
Two snapshots are compared after the attacks, allowing only what serving is documented
to change: the access statistics merged into each disk's ``inventory.json`` (``hits``,
``last_access`` and the index's ``generation``/``saved_at``), the logs, and the
runtime directory ``state/run/`` that every start rewrites.
"""

from __future__ import annotations

import calendar
import hashlib
import os
import random
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson

from oca.auth.tokens import sign_token
from tests.appliance import Appliance, fetch, new_key, write_tree

SENTINEL_MARK = b"OCA-SENTINEL-"
MAX_RANGES = 16  # the shipped default, written into the config explicitly

_rng = random.Random(7_000_007)
# path -> (bytes, tier); every object's bytes are distinct, so an ETag names one object.
CONTENT: dict[str, tuple[bytes, str]] = {
    "/titles/tos/manifest.mpd": (b"<?xml version='1.0'?><MPD>" + b"x" * 500 + b"</MPD>\n", "ssd"),
    "/titles/tos/v720/init.mp4": (_rng.randbytes(4096), "ssd"),
    "/titles/tos/v720/seg-00001.m4s": (_rng.randbytes(20_000), "ssd"),
    "/titles/tos/a128/seg-00001.m4a": (b"\x00", "ssd"),
    "/titles/tos/subs/empty.vtt": (b"", "ssd"),
    "/titles/tos/subs/en.vtt": ("WEBVTT\n\n00:00.000 --> 00:02.000\nça va\n".encode(), "ssd"),
    "/titles/tos2/v720/seg-00001.m4s": (_rng.randbytes(3000), "ssd"),
    "/titles/sintel/v480/seg-00001.m4s": (_rng.randbytes(70_001), "hdd"),
    "/titles/sintel/v480/init.mp4": (_rng.randbytes(1234), "hdd"),
    "/titles/big/v2160.mp4": (_rng.randbytes(4 << 20), "hdd"),  # not drawn by the fuzzer
}
BIG = "/titles/big/v2160.mp4"
KNOWN = "/titles/tos/v720/seg-00001.m4s"  # served byte-exactly before and after everything
STRAY = "/titles/tos/stray.m4s"  # on disk in objects/, not in the inventory


@dataclass(frozen=True)
class Obj:
    """One stored object as the tests know it (validators read back from the server)."""

    path: str
    data: bytes
    etag: str
    last_modified: int
    last_modified_text: str

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass
class BadInputSite:
    app: Appliance
    objects: dict[str, Obj]
    by_etag: dict[str, Obj]
    keys: dict[str, bytes]
    root_token: str  # k1, prefix "/", any client, an hour ahead: every path is covered
    sentinels: list[Path]
    before: StoreSnapshot
    pids: list[int] = field(default_factory=list)

    @property
    def address(self) -> tuple[str, int]:
        return self.app.host_port

    def token(
        self,
        prefix: str,
        *,
        ttl: int = 3600,
        kid: str = "k1",
        secret: bytes | None = None,
        client: str | None = None,
        expires: int | None = None,
    ) -> str:
        key = self.keys[kid] if secret is None else secret
        exp = int(time.time()) + ttl if expires is None else expires
        return sign_token(kid, key, prefix, exp, client)

    def signed(self, path: str, token: str | None = None) -> str:
        """The wire target of ``path`` (quoted) behind ``token`` (default: the root token)."""
        return f"/t/{token or self.root_token}{quote(path)}"

    def known_is_served(self) -> bool:
        status, _, body = fetch(*self.address, self.signed(KNOWN))
        return status == 200 and body == self.objects[KNOWN].data


def _files(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every regular file under ``root`` (symlinks noted as such)."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "symlink:" + os.readlink(p)
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        for name in dirnames:
            rel = str((Path(dirpath) / name).relative_to(root)) + "/"
            out[rel] = "dir"
    return out


_VOLATILE_FILES = ("server.log", "access.log", "oca.toml")


def _stable_inventory(path: Path) -> dict[str, Any]:
    doc = orjson.loads(path.read_bytes())
    cols = doc["columns"]
    keep = [i for i, c in enumerate(cols) if c not in ("hits", "last_access")]
    return {
        "schema": doc["schema"],
        "version": doc["version"],
        "disk": doc["disk"],
        "tier": doc["tier"],
        "columns": [cols[i] for i in keep],
        "objects": sorted([row[i] for i in keep] for row in doc["objects"]),
    }


@dataclass(frozen=True)
class StoreSnapshot:
    listing: list[dict[str, Any]]
    files: dict[str, str]
    inventories: dict[str, dict[str, Any]]

    @classmethod
    def take(cls, app: Appliance) -> StoreSnapshot:
        assert app.proc is None, "snapshots are taken with the appliance stopped"
        out = app.oca("store", "ls", "-c", str(app.config_path), "--json").stdout
        listing = [
            {k: v for k, v in rec.items() if k not in ("hits", "last_access")}
            for rec in orjson.loads(out)
        ]
        files = {
            rel: digest
            for rel, digest in _files(app.root).items()
            if not rel.startswith(("src/", "state/run/"))
            and rel != "state/"
            and rel not in _VOLATILE_FILES
            and not rel.endswith(".oca/inventory.json")
        }
        inventories = {
            str(p.relative_to(app.root)): _stable_inventory(p)
            for p in sorted(app.root.glob("*/.oca/inventory.json"))
        }
        return cls(listing, files, inventories)

    def differences(self, other: StoreSnapshot) -> list[str]:
        diffs: list[str] = []
        if self.listing != other.listing:
            diffs.append(f"store ls changed: {self.listing} -> {other.listing}")
        for rel in sorted(set(self.files) | set(other.files)):
            a, b = self.files.get(rel), other.files.get(rel)
            if a != b:
                diffs.append(f"{rel}: {a} -> {b}")
        if self.inventories != other.inventories:
            diffs.append(f"inventories changed: {self.inventories} -> {other.inventories}")
        return diffs


def _plant_sentinels(app: Appliance) -> list[Path]:
    mark = SENTINEL_MARK + secrets.token_hex(8).encode()
    planted = [app.root / "sentinel.txt"]
    for tier, _ in app.tiers:
        for disk in app.disk_paths(tier):
            planted.append(disk / "sentinel.txt")
            planted.append(disk / "objects" / STRAY.lstrip("/"))
    for p in planted:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(mark + b" " + str(p).encode() + b"\n")
    return planted


def start_bad_input_site(root: Path) -> BadInputSite:
    keys = {"k1": new_key(), "k2": new_key()}
    app = Appliance(
        root,
        workers=2,
        keys=keys,
        tiers=(("ssd", 1), ("hdd", 1)),
        extra=f"max_ranges = {MAX_RANGES}",
    )
    mtime = 1_600_000_000
    for tier in ("ssd", "hdd"):
        files = {p: data for p, (data, t) in CONTENT.items() if t == tier}
        src = write_tree(root / "src" / tier, files)
        for i, p in enumerate(sorted(files)):
            os.utime(src / p.lstrip("/"), (mtime + 86_400 * i + 7, mtime + 86_400 * i + 7))
        app.import_tree(src, tier=tier)
    sentinels = _plant_sentinels(app)
    before = StoreSnapshot.take(app)
    secrets_ = {k: bytes.fromhex(v) for k, v in keys.items()}
    root_token = sign_token("k1", secrets_["k1"], "/", int(time.time()) + 3600)
    app.start()
    site = BadInputSite(app, {}, {}, secrets_, root_token, sentinels, before)
    site.pids = sorted(app.worker_pids())
    for path, (data, _) in CONTENT.items():
        status, headers, body = fetch(*app.host_port, site.signed(path))
        assert (status, body) == (200, data), (path, status)
        lm = headers["last-modified"]
        ts = calendar.timegm(time.strptime(lm, "%a, %d %b %Y %H:%M:%S GMT"))
        obj = Obj(path, data, headers["etag"], ts, lm)
        site.objects[path] = obj
        site.by_etag[obj.etag] = obj
    return site


def finish_bad_input_site(site: BadInputSite) -> list[str]:
    """Stop the appliance and list everything that differs from before the attacks."""
    code = site.app.stop()
    problems = [] if code == 0 else [f"oca serve exited with {code}"]
    log = site.app.log_text()
    for bad in ("Traceback", "unhandled error", "was running, now exited", " ERROR "):
        if bad in log:
            problems.append(f"server log contains {bad!r}")
    return problems + site.before.differences(StoreSnapshot.take(site.app))

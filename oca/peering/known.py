"""Objects this appliance may be asked for: size, sha256 and origin URLs (adapter).

The miss path needs to know, for an object it does not hold, how big it is, what its
bytes hash to and where the origin keeps it: the checksum is what lets a miss be
verified before it is installed (a peer or origin that sends wrong bytes is caught
and its bytes are never served as a complete response nor kept), and the size lets a
range request on a miss be answered as soon as its bytes arrive.

The fill agent writes this table, ``<state_dir>/known-objects.json``, from every
manifest it accepts (atomic rename), and the server's workers re-read it when it
changes. An object missing from the table can still be fetched on a miss, from the
configured ``miss.origins``, but is installed with the digest computed while it
streamed, unverified.

Wire format (version 1)::

    {"schema": "oca.known-objects", "version": 1,
     "objects": {"/titles/t/seg-1.m4s": [2097152, "<sha256 hex>", ["https://origin/..."]]}}
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from oca.errors import OcaError

KNOWN_FILE = "known-objects.json"
KNOWN_SCHEMA = "oca.known-objects"
KNOWN_VERSION = 1
_SHA256 = re.compile(r"[0-9a-f]{64}")


class KnownObjectsError(OcaError):
    """The known-objects file cannot be read or is not in the expected shape."""


@dataclass(frozen=True, slots=True)
class KnownObject:
    path: str
    size: int
    sha256: str
    sources: tuple[str, ...] = ()


def known_path(state_dir: str) -> str:
    return os.path.join(state_dir, KNOWN_FILE)


def save_known(state_dir: str, objects: Iterable[KnownObject]) -> int:
    """Replace the table atomically (temp file, fsync, rename); returns the count."""
    table = {o.path: [o.size, o.sha256, list(o.sources)] for o in objects}
    doc = {"schema": KNOWN_SCHEMA, "version": KNOWN_VERSION, "objects": table}
    path = known_path(state_dir)
    os.makedirs(state_dir, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as fh:
        fh.write(orjson.dumps(doc))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return len(table)


def parse_known(data: bytes) -> dict[str, KnownObject]:
    """The table from the file's bytes; KnownObjectsError naming what is wrong."""
    try:
        doc: Any = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise KnownObjectsError(f"not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("schema") != KNOWN_SCHEMA:
        raise KnownObjectsError(f"schema: expected {KNOWN_SCHEMA!r}")
    if doc.get("version") != KNOWN_VERSION:
        raise KnownObjectsError(f"version: expected {KNOWN_VERSION}, got {doc.get('version')!r}")
    objects = doc.get("objects")
    if not isinstance(objects, dict):
        raise KnownObjectsError("objects: expected an object")
    out: dict[str, KnownObject] = {}
    for path, item in objects.items():
        where = f"objects[{path!r}]"
        if not path.startswith("/"):
            raise KnownObjectsError(f"{where}: a path must start with '/'")
        if not (isinstance(item, list) and len(item) == 3):
            raise KnownObjectsError(f"{where}: expected [size, sha256, sources]")
        size, sha, sources = item
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise KnownObjectsError(f"{where}.size: expected a non-negative integer")
        if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
            raise KnownObjectsError(f"{where}.sha256: expected 64 lowercase hex digits")
        if not isinstance(sources, list) or not all(
            isinstance(u, str) and u.startswith(("http://", "https://")) for u in sources
        ):
            raise KnownObjectsError(f"{where}.sources: expected a list of http(s) URLs")
        out[path] = KnownObject(path, size, sha, tuple(sources))
    return out


class KnownTable:
    """The table as last read; :meth:`reload` re-reads it when the file changed."""

    def __init__(self, state_dir: str) -> None:
        self.path = known_path(state_dir)
        self.objects: dict[str, KnownObject] = {}
        self._signature: tuple[int, int, int] | None = None
        self.error = ""

    def get(self, path: str) -> KnownObject | None:
        return self.objects.get(path)

    def reload(self) -> bool:
        """Blocking (run it off the event loop); True when the table changed.

        A file that vanished empties the table; one that does not parse keeps the
        previous table and records why in :attr:`error`.
        """
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            changed = bool(self.objects)
            self.objects, self._signature, self.error = {}, None, ""
            return changed
        except OSError as exc:
            self.error = f"{self.path}: {exc.strerror}"
            return False
        sig = (st.st_ino, st.st_size, st.st_mtime_ns)
        if sig == self._signature:
            return False
        try:
            with open(self.path, "rb") as fh:
                table = parse_known(fh.read())
        except OSError as exc:
            self.error = f"{self.path}: {exc.strerror}"
            return False
        except KnownObjectsError as exc:
            self.error = f"{self.path}: {exc}"
            self._signature = sig
            return False
        self.objects, self._signature, self.error = table, sig, ""
        return True

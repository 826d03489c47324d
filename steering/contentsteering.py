"""DASH-IF (and HLS) content steering manifests from a ranking (pure).

Theory of operation
-------------------
A rewritten MPD lists one ``BaseURL`` per ranked appliance, each with a
``serviceLocation`` (the appliance id), and a ``<ContentSteering>`` element naming this
service. A player that implements DASH-IF Content Steering fetches the steering
manifest before it starts (``queryBeforeStart``) and again every ``TTL`` seconds, at
``RELOAD-URI`` when one is given, adding ``_DASH_pathway`` (the service location it is
using) and ``_DASH_throughput`` (bits/s it measured); HLS players send ``_HLS_pathway``
and ``_HLS_throughput`` and this module answers them alike. It then uses the first
location of ``PATHWAY-PRIORITY`` that its manifest knows (or that a ``PATHWAY-CLONES``
entry defines) and that it has not blacklisted after failures.

The answer is the current ranking, with two adjustments that keep players where they
are doing well and move them where they are not:

- **Stickiness.** When the player's current pathway is still ranked and not
  overloaded, and the player reports enough throughput, it stays first: a player that
  is doing fine is not moved because another appliance hashed higher a minute later.
- **Throughput.** When the player reports less than ``min_throughput_bits`` on its
  pathway, that pathway goes last, so the player tries the next one.

A pathway that is no longer ranked (its appliance died, hung, drains or was overloaded
and others are not) is left out, which is what moves players away within one TTL.
Ranked appliances the player's MPD did not list are offered as ``PATHWAY-CLONES`` of
the first listed pathway with the host replaced (dash.js 5.2 and HLS players implement
cloning); tokens sit in the path and cover a title on every appliance, so the cloned
URLs are valid.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

VERSION = 1


@dataclass(frozen=True, slots=True)
class Pathway:
    """A ranked appliance as a content steering pathway."""

    id: str  # the appliance id, also the MPD's serviceLocation
    base_url: str  # e.g. "http://10.1.0.1:8080"
    overloaded: bool = False


@dataclass(frozen=True, slots=True)
class PlayerReport:
    pathway: str | None
    throughput_bits: float | None

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> PlayerReport:
        """Read ``_DASH_pathway``/``_DASH_throughput`` (or the ``_HLS_`` pair); the
        pathway may be sent quoted. An unparsable throughput is ignored."""
        pathway = query.get("_DASH_pathway") or query.get("_HLS_pathway") or None
        if pathway is not None:
            pathway = pathway.strip().strip('"') or None
        raw = query.get("_DASH_throughput") or query.get("_HLS_throughput")
        throughput: float | None = None
        if raw:
            try:
                value = float(raw)
            except ValueError:
                value = -1.0
            if value >= 0 and value == value and value != float("inf"):
                throughput = value
        return cls(pathway, throughput)


def priority(
    ranked: Sequence[Pathway], report: PlayerReport, *, min_throughput_bits: int
) -> tuple[list[str], list[str]]:
    """The pathway order for a player, and a reason per adjustment made."""
    ids = [p.id for p in ranked]
    notes: list[str] = []
    current = next((p for p in ranked if p.id == report.pathway), None)
    if current is None:
        if report.pathway:
            notes.append(f"pathway {report.pathway} is no longer ranked; moved off it")
        return ids, notes
    slow = (
        min_throughput_bits > 0
        and report.throughput_bits is not None
        and report.throughput_bits < min_throughput_bits
    )
    if slow and len(ids) > 1:
        ids.remove(current.id)
        ids.append(current.id)
        notes.append(
            f"pathway {current.id} reported {report.throughput_bits:.0f} bit/s "
            f"< {min_throughput_bits}; moved last"
        )
    elif not current.overloaded and ids[0] != current.id:
        ids.remove(current.id)
        ids.insert(0, current.id)
        notes.append(f"pathway {current.id} is still ranked and doing well; kept first")
    return ids, notes


def manifest(
    ranked: Sequence[Pathway],
    report: PlayerReport,
    *,
    ttl_seconds: int,
    reload_uri: str | None,
    min_throughput_bits: int = 0,
    listed: Sequence[str] = (),
) -> dict[str, Any]:
    """The DASH-IF content steering manifest (JSON object) for one player.

    ``listed`` are the service locations the player's MPD carries; ranked appliances
    outside it become ``PATHWAY-CLONES`` of the first listed one that is ranked."""
    order, _ = priority(ranked, report, min_throughput_bits=min_throughput_bits)
    out: dict[str, Any] = {"VERSION": VERSION, "TTL": ttl_seconds}
    if reload_uri:
        out["RELOAD-URI"] = reload_uri
    out["PATHWAY-PRIORITY"] = order
    known = set(listed)
    base = next((p for p in ranked if p.id in known), None)
    if known and base is not None:
        clones = []
        for p in ranked:
            if p.id in known:
                continue
            host = urlsplit(p.base_url).netloc
            if host:
                clones.append({"BASE-ID": base.id, "ID": p.id, "URI-REPLACEMENT": {"HOST": host}})
        if clones:
            out["PATHWAY-CLONES"] = clones
    return out


def hls_tag(server_uri: str, pathway_id: str | None) -> str:
    """The ``#EXT-X-CONTENT-STEERING`` tag for an HLS multivariant playlist."""
    tag = f'#EXT-X-CONTENT-STEERING:SERVER-URI="{server_uri}"'
    if pathway_id:
        tag += f',PATHWAY-ID="{pathway_id}"'
    return tag

"""An MPD rewritten for one player: signed appliance BaseURLs plus content steering (pure).

Theory of operation
-------------------
A player receives the title's original MPD with its MPD-level ``BaseURL`` elements
replaced by one per ranked appliance, in rank order, each tagged with a
``serviceLocation`` (ISO/IEC 23009-1 §5.6; the appliance id) and carrying a URL token
in its path::

    <BaseURL serviceLocation="oca-a1">http://10.1.0.1:8080/t/<token>/titles/tos/</BaseURL>

Every relative URL below (Period, AdaptationSet and Representation BaseURLs, segment
templates, segment lists) then resolves under the token (RFC 3986 §5.2 keeps the base's
path), so one token covers all the title's objects. A
``<ContentSteering defaultServiceLocation="oca-a1" queryBeforeStart="false">`` element
(DASH-IF "Content Steering for DASH", placed among the MPD's children before the first
Period) points the player at the steering service, which re-orders the service
locations during playback; ``defaultServiceLocation`` is what the player uses until
its first steering response.

Two details keep every reference under the token:

- An original MPD-level BaseURL (``content/`` or ``/titles/tos/content/``) is not lost
  but folded into each appliance BaseURL: it is resolved against the title's directory
  and the resulting path goes after the token (of an absolute URL, only the path is
  kept: the appliance serves the origin's paths).
- A reference below the MPD level that is an absolute path (``/titles/tos/v720/``)
  would resolve to the appliance's root and drop the token, so it is rewritten as the
  equivalent relative reference (``v720/``) from its effective base. A shared
  SegmentTemplate whose Representations have different bases cannot be rewritten that
  way and is refused. Absolute ``http(s)`` URLs below the MPD level point elsewhere by
  design and are left alone.

Namespace prefixes and comments survive (:func:`steering.mpdxml.serialize`), and the
result parses again with :func:`steering.mpd.parse_mpd`.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from urllib.parse import urljoin, urlsplit

from steering.mpdxml import (
    DEFAULT_MAX_MPD_BYTES,
    MpdError,
    load_document,
    local_name,
    serialize,
)
from steering.signing import split_signed_path

__all__ = ["MpdError", "relative_reference", "rewrite_mpd"]

# MPD children that the schema places before BaseURL.
_BEFORE_BASE_URL = ("ProgramInformation",)
# Attributes holding URL references, per segment information element.
_URL_ATTRIBUTES = {
    "SegmentTemplate": ("media", "initialization", "index", "bitstreamSwitching"),
    "SegmentURL": ("media", "index"),
    "Initialization": ("sourceURL",),
    "RepresentationIndex": ("sourceURL",),
    "BitstreamSwitching": ("sourceURL",),
}
_SEGMENT_INFO = ("SegmentBase", "SegmentList", "SegmentTemplate")


def relative_reference(base: str, target: str) -> str:
    """A relative reference that resolves against URL path ``base`` to path ``target``.

    ``relative_reference("/titles/tos/manifest.mpd", "/titles/tos/v720/")`` -> ``v720/``;
    ``relative_reference("/titles/tos/a/", "/titles/tos/b/x.m4s")`` -> ``../b/x.m4s``.
    """
    base_dirs = base[: base.rfind("/") + 1].split("/")[1:-1]
    target_parts = target.split("/")[1:]
    target_dirs, leaf = target_parts[:-1], target_parts[-1]
    common = 0
    while (
        common < len(base_dirs)
        and common < len(target_dirs)
        and base_dirs[common] == target_dirs[common]
    ):
        common += 1
    parts = [".."] * (len(base_dirs) - common) + target_dirs[common:] + [leaf]
    reference = "/".join(parts)
    if reference == "" or ":" in parts[0] or reference.startswith("//"):
        reference = "./" + reference
    return reference


def _is_absolute_path(reference: str) -> bool:
    return reference.startswith("/") and not reference.startswith("//")


class _Rewriter:
    def __init__(self, root: ET.Element) -> None:
        self.root = root
        self.ns, _ = local_name(root.tag)

    def q(self, name: str) -> str:
        return f"{{{self.ns}}}{name}" if self.ns else name

    def kids(self, element: ET.Element, name: str) -> list[ET.Element]:
        return element.findall(self.q(name))

    def rebase(self, element: ET.Element, parent: str) -> str:
        """Make this level's absolute-path BaseURLs relative; return its effective base."""
        found = self.kids(element, "BaseURL")
        for base_url in found:
            text = (base_url.text or "").strip()
            if _is_absolute_path(text):
                base_url.text = relative_reference(parent, text)
        if not found:
            return parent
        resolved = urljoin(parent, (found[0].text or "").strip())
        parts = urlsplit(resolved)
        return resolved if parts.scheme or parts.netloc else parts.path

    def fix_segment_info(self, element: ET.Element, bases: set[str], where: str) -> None:
        for name in _SEGMENT_INFO:
            for info in self.kids(element, name):
                targets = [info, *(node for node in info.iter() if node is not info)]
                for node in targets:
                    tag: object = node.tag
                    if not isinstance(tag, str):
                        continue
                    attributes = _URL_ATTRIBUTES.get(local_name(tag)[1], ())
                    for attribute in attributes:
                        value = node.get(attribute)
                        if value is None or not _is_absolute_path(value.strip()):
                            continue
                        if len(bases) != 1:
                            raise MpdError(
                                f"{where}/{name}@{attribute}",
                                f"absolute path {value.strip()!r} is shared by Representations "
                                "with different BaseURLs and cannot be made relative",
                            )
                        (base,) = bases
                        node.set(attribute, relative_reference(base, value.strip()))

    def relativize(self, top: str) -> None:
        for i, period in enumerate(self.kids(self.root, "Period")):
            where = f"MPD/Period[{i + 1}]"
            period_base = self.rebase(period, top)
            period_reps: set[str] = set()
            for j, aset in enumerate(self.kids(period, "AdaptationSet")):
                aset_where = f"{where}/AdaptationSet[{j + 1}]"
                aset_base = self.rebase(aset, period_base)
                aset_reps: set[str] = set()
                for k, rep in enumerate(self.kids(aset, "Representation")):
                    rep_base = self.rebase(rep, aset_base)
                    rep_where = f"{aset_where}/Representation[{k + 1}]"
                    self.fix_segment_info(rep, {rep_base}, rep_where)
                    aset_reps.add(rep_base)
                self.fix_segment_info(aset, aset_reps or {aset_base}, aset_where)
                period_reps |= aset_reps
            self.fix_segment_info(period, period_reps or {period_base}, where)


def _split_base(base_url: str, where: str) -> tuple[str, str]:
    """``http://h:p/t/TOKEN/titles/tos/`` -> (``http://h:p/t/TOKEN``, ``/titles/tos/``)."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{where}: {base_url!r} is not an absolute http(s) URL")
    if parts.query or parts.fragment:
        raise ValueError(f"{where}: {base_url!r} must not have a query or fragment")
    token, object_path = split_signed_path(parts.path or "/")
    if not object_path.endswith("/"):
        raise ValueError(f"{where}: {base_url!r} must end with the title's directory and '/'")
    head = f"{parts.scheme}://{parts.netloc}"
    if token is not None:
        head += f"/t/{token}"
    return head, object_path


def rewrite_mpd(
    mpd_bytes: bytes,
    bases: Sequence[tuple[str, str]],
    steering_url: str | None,
    *,
    default_service_location: str | None = None,
    query_before_start: bool = False,
    proxy_server_url: str | None = None,
    max_bytes: int = DEFAULT_MAX_MPD_BYTES,
) -> bytes:
    """The MPD with one ``BaseURL`` per ``(service_location, base_url)`` and, when
    ``steering_url`` is given, a ``ContentSteering`` element.

    Each ``base_url`` is an appliance URL ending in the title's directory, normally
    with a token: ``http://10.1.0.1:8080/t/<token>/titles/tos/`` (see
    :meth:`steering.signing.Signer.signed_base`); all must end in the same directory.
    ``default_service_location`` defaults to the first. Raises :class:`MpdError` for a
    bad MPD and ValueError for bad arguments.
    """
    if not bases:
        raise ValueError("bases: at least one appliance base URL is needed")
    locations = [location for location, _ in bases]
    for i, location in enumerate(locations):
        if not location or any(c.isspace() for c in location):
            raise ValueError(f"bases[{i}]: service location {location!r} must be one word")
    if len(set(locations)) != len(locations):
        raise ValueError(f"bases: service locations repeat: {locations}")
    default = default_service_location or locations[0]
    if default not in locations:
        raise ValueError(f"default_service_location: {default!r} is not among {locations}")
    split = [_split_base(url, f"bases[{i}]") for i, (_, url) in enumerate(bases)]
    directories = {directory for _, directory in split}
    if len(directories) != 1:
        raise ValueError(f"bases: must all end in the same title directory, got {directories}")
    (directory,) = directories

    document = load_document(mpd_bytes, max_bytes=max_bytes)
    root = document.root
    if local_name(root.tag)[1] != "MPD":
        raise MpdError("MPD", f"root element is <{local_name(root.tag)[1]}>, not <MPD>")
    rewriter = _Rewriter(root)

    # Fold the original MPD-level BaseURL (the first alternative) under the token.
    originals = rewriter.kids(root, "BaseURL")
    removed = originals + rewriter.kids(root, "ContentSteering")
    top = directory
    children = list(root)
    if originals:
        resolved = urlsplit(urljoin(directory, (originals[0].text or "").strip())).path or "/"
        top = resolved if resolved.endswith("/") else resolved[: resolved.rfind("/") + 1]
        first = children.index(originals[0])
        position = sum(1 for child in children[:first] if child not in removed)
    else:
        position = 0
        for child in children:
            tag: object = child.tag
            if isinstance(tag, str) and local_name(tag)[1] not in _BEFORE_BASE_URL:
                break
            if child not in removed:
                position += 1
    for element in removed:
        root.remove(element)
    rewriter.relativize(top)

    indent = _indent(root, position)
    for offset, ((location, _), (head, _)) in enumerate(zip(bases, split, strict=True)):
        base_url = ET.Element(rewriter.q("BaseURL"), {"serviceLocation": location})
        base_url.text = head + top
        base_url.tail = indent
        root.insert(position + offset, base_url)

    if steering_url is not None:
        attributes = {
            "defaultServiceLocation": default,
            "queryBeforeStart": "true" if query_before_start else "false",
        }
        if proxy_server_url is not None:
            attributes["proxyServerURL"] = proxy_server_url
        steering = ET.Element(rewriter.q("ContentSteering"), attributes)
        steering.text = steering_url
        steering.tail = indent
        periods = rewriter.kids(root, "Period")
        at = list(root).index(periods[0]) if periods else len(root)
        root.insert(at, steering)
    return serialize(root, document.namespaces)


def _indent(root: ET.Element, position: int) -> str:
    """The whitespace that separates the root's children, to keep the layout."""
    children = list(root)
    tail = children[position - 1].tail if position > 0 else root.text
    if tail is not None and not tail.strip():
        return tail
    return "\n"

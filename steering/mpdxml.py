"""Loading MPD documents safely and writing them back with their namespace prefixes.

Theory of operation
-------------------
An MPD arrives from an origin or a packager's output directory, so it is untrusted input
to the control plane. XML's document type declarations are the classic hazard: internal
entities that expand exponentially ("billion laughs", CVE-2003-1564), external entities
that read local files or reach into the network (XXE). An MPD never needs a DTD
(ISO/IEC 23009-1 defines it by an XML Schema), so :func:`load_document` refuses any
``<!DOCTYPE``, entity or notation declaration outright rather than trying to expand them
safely, and caps the input size before parsing. It runs expat once over the bytes with
handlers that raise on those declarations (expat decodes every encoding the document may
declare, so a UTF-16 ``<!DOCTYPE`` cannot slip past a byte search) and records each
namespace declaration ``(prefix, uri)`` on the way; only then does ElementTree build the
tree.

ElementTree forgets prefixes: it stores ``{uri}local`` names and, on output, invents
``ns0:`` prefixes from a process-wide registry. A rewritten MPD must keep
``xmlns="urn:mpeg:dash:schema:mpd:2011"`` as the default namespace (some players match
element names literally) and the packager's prefixes (``cenc:``, ``xlink:``, ``dolby:``).
:func:`serialize` therefore writes the tree itself from the recorded declarations, all
declared on the root element (equivalent in the XML Namespaces data model, §6.1), with
no global state touched.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from xml.parsers import expat

__all__ = [
    "DEFAULT_MAX_MPD_BYTES",
    "MPD_NAMESPACE",
    "XLINK_NAMESPACE",
    "MpdError",
    "XmlDocument",
    "load_document",
    "local_name",
    "serialize",
]

MPD_NAMESPACE = "urn:mpeg:dash:schema:mpd:2011"
XLINK_NAMESPACE = "http://www.w3.org/1999/xlink"
XML_NAMESPACE = "http://www.w3.org/XML/1998/namespace"
DEFAULT_MAX_MPD_BYTES = 16 * 1024 * 1024


class MpdError(ValueError):
    """An MPD is malformed or uses something this package does not support.

    ``where`` names the element or attribute (``Period[id=p0]/AdaptationSet[1]/
    Representation[id=v720]/SegmentTemplate@media``), ``detail`` says what is wrong.
    """

    def __init__(self, where: str, detail: str) -> None:
        self.where = where
        self.detail = detail
        super().__init__(f"{where}: {detail}")


@dataclass(frozen=True, slots=True)
class XmlDocument:
    """A parsed document: the root element and its namespace declarations in order."""

    root: ET.Element
    namespaces: tuple[tuple[str, str], ...]  # (prefix, uri); prefix "" = default namespace


class _Refused(Exception):
    def __init__(self, detail: str) -> None:
        self.detail = detail


def local_name(tag: str) -> tuple[str, str]:
    """``"{uri}local"`` -> ``("uri", "local")``; an unqualified name has uri ``""``."""
    if tag.startswith("{"):
        uri, _, local = tag[1:].partition("}")
        return uri, local
    return "", tag


def _refuse_doctype(*_: object) -> None:
    raise _Refused("DOCTYPE declarations are refused (entity expansion, external entities)")


def _refuse_entity(*_: object) -> None:
    raise _Refused("ENTITY declarations are refused (entity expansion)")


def _refuse_notation(*_: object) -> None:
    raise _Refused("NOTATION declarations are refused")


def _refuse_external(*_: object) -> int:
    raise _Refused("external entities are refused")


def load_document(data: bytes, *, max_bytes: int = DEFAULT_MAX_MPD_BYTES) -> XmlDocument:
    """Parse ``data``; raises :class:`MpdError` for oversize, declarations or bad XML."""
    if len(data) > max_bytes:
        raise MpdError("MPD", f"document is {len(data)} bytes, larger than the {max_bytes} limit")
    declarations: list[tuple[str, str]] = []

    def on_namespace(prefix: str | None, uri: str) -> None:
        declarations.append((prefix or "", uri))

    scanner = expat.ParserCreate(namespace_separator=" ")
    scanner.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    scanner.StartDoctypeDeclHandler = _refuse_doctype
    scanner.EntityDeclHandler = _refuse_entity
    scanner.UnparsedEntityDeclHandler = _refuse_entity
    scanner.NotationDeclHandler = _refuse_notation
    scanner.ExternalEntityRefHandler = _refuse_external
    scanner.StartNamespaceDeclHandler = on_namespace
    try:
        scanner.Parse(data, True)
    except _Refused as exc:
        raise MpdError("MPD", exc.detail) from None
    except expat.ExpatError as exc:
        raise MpdError("MPD", f"not well-formed XML: {exc}") from None
    builder = ET.TreeBuilder(insert_comments=True, insert_pis=True)
    parser = ET.XMLParser(target=builder)
    try:
        parser.feed(data)
        root = parser.close()
    except ET.ParseError as exc:  # pragma: no cover - expat accepted the same bytes
        raise MpdError("MPD", f"not well-formed XML: {exc}") from None
    return XmlDocument(root=root, namespaces=tuple(declarations))


# --------------------------------------------------------------------------- writing


def _escape_text(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _escape_attr(text: str) -> str:
    return (
        _escape_text(text)
        .replace('"', "&quot;")
        .replace("\n", "&#10;")
        .replace("\r", "&#13;")
        .replace("\t", "&#9;")
    )


class _Names:
    """uri -> prefix for one output document, seeded from the input's declarations."""

    def __init__(self, namespaces: Sequence[tuple[str, str]]) -> None:
        self.prefixes: dict[str, str] = {}  # uri -> prefix ("" = default)
        self.attr_prefixes: dict[str, str] = {}  # uri -> non-empty prefix for attributes
        self._taken: set[str] = {"xml", "xmlns"}
        for prefix, uri in namespaces:
            if uri in self.prefixes or prefix in self._taken or not uri:
                continue
            self._take(uri, prefix)

    def _take(self, uri: str, prefix: str) -> None:
        self.prefixes[uri] = prefix
        self._taken.add(prefix)
        if prefix:
            self.attr_prefixes.setdefault(uri, prefix)

    def _fresh(self, stem: str) -> str:
        n = 0
        while f"{stem}{n}" in self._taken:
            n += 1
        return f"{stem}{n}"

    def element(self, uri: str) -> str:
        if uri not in self.prefixes:  # used but never declared in the input
            self._take(uri, self._fresh("ns"))
        return self.prefixes[uri]

    def attribute(self, uri: str) -> str:
        if uri == XML_NAMESPACE:
            return "xml"
        if uri not in self.attr_prefixes:
            if self.prefixes.get(uri):
                self.attr_prefixes[uri] = self.prefixes[uri]
            else:
                prefix = self._fresh("ns")
                self._taken.add(prefix)
                self.attr_prefixes[uri] = prefix
        return self.attr_prefixes[uri]

    def declarations(self) -> list[tuple[str, str]]:
        seen: dict[str, str] = {}
        for uri, prefix in self.prefixes.items():
            seen[prefix] = uri
        for uri, prefix in self.attr_prefixes.items():
            seen[prefix] = uri
        return list(seen.items())


def _collect(element: ET.Element, names: _Names) -> None:
    """Assign prefixes to every namespace used, in document order."""
    for node in element.iter():
        tag: object = node.tag  # comments and processing instructions have a function here
        if not isinstance(tag, str):
            continue
        uri, _ = local_name(tag)
        if uri:
            names.element(uri)
        for key in node.attrib:
            attr_uri, _ = local_name(key)
            if attr_uri:
                names.attribute(attr_uri)


def serialize(root: ET.Element, namespaces: Sequence[tuple[str, str]] = ()) -> bytes:
    """The document as UTF-8 bytes with an XML declaration, keeping the given prefixes.

    ``namespaces`` is what :func:`load_document` recorded; a namespace used in the tree
    but never declared gets a fresh ``nsN`` prefix (or the default namespace, when free).
    """
    names = _Names(namespaces)
    _collect(root, names)
    out: list[str] = ['<?xml version="1.0" encoding="UTF-8"?>\n']
    declarations = names.declarations()
    _write(root, names, out, declarations, default_uri="")
    out.append("\n")
    return "".join(out).encode("utf-8")


def _write(
    node: ET.Element,
    names: _Names,
    out: list[str],
    declarations: list[tuple[str, str]],
    default_uri: str,
) -> None:
    tag: object = node.tag
    if tag is ET.Comment:
        out.append(f"<!--{node.text or ''}-->")
        out.append(_escape_text(node.tail or ""))
        return
    if tag is ET.ProcessingInstruction:
        out.append(f"<?{node.text or ''}?>")
        out.append(_escape_text(node.tail or ""))
        return
    assert isinstance(tag, str)
    uri, local = local_name(tag)
    attrs: list[str] = []
    for decl_prefix, decl_uri in declarations:
        if decl_prefix:
            attrs.append(f' xmlns:{decl_prefix}="{_escape_attr(decl_uri)}"')
        elif decl_uri == uri:  # the default namespace is declared where it is first used
            attrs.append(f' xmlns="{_escape_attr(decl_uri)}"')
            default_uri = decl_uri
    prefix = names.element(uri) if uri else ""
    if uri and not prefix and default_uri != uri:
        attrs.append(f' xmlns="{_escape_attr(uri)}"')
        default_uri = uri
    elif not uri and default_uri:
        attrs.append(' xmlns=""')
        default_uri = ""
    qname = f"{prefix}:{local}" if prefix else local
    for key, value in node.attrib.items():
        attr_uri, attr_local = local_name(key)
        attr_name = f"{names.attribute(attr_uri)}:{attr_local}" if attr_uri else attr_local
        attrs.append(f' {attr_name}="{_escape_attr(value)}"')
    children = list(node)
    if not children and not node.text:
        out.append(f"<{qname}{''.join(attrs)}/>")
    else:
        out.append(f"<{qname}{''.join(attrs)}>")
        out.append(_escape_text(node.text or ""))
        for child in children:
            _write(child, names, out, [], default_uri)
        out.append(f"</{qname}>")
    out.append(_escape_text(node.tail or ""))

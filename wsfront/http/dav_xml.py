"""The XML of WebDAV PROPFIND (RFC 4918, 9.1 and 14): the request body in,
multistatus fragments out.  Pure functions and one incremental parser; the
handler that reads bodies and pages through directories is ``propfind.py``.

The body is parsed with expat as it arrives, with every document type
declaration refused: no DTD means no entity can be declared, so neither an
external entity (a file or URL read on the server's behalf) nor an entity
expansion bomb can be expressed; an undeclared ``&name;`` is an XML error.
A PROPFIND body never needs a DTD.  Its size is bounded by the handler, the
number of distinct property names here: each name is echoed once per
resource of a Depth 1 answer, so a small body must not ask for thousands.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Literal
from xml.parsers import expat
from xml.sax.saxutils import escape, quoteattr

from attrs import frozen

from wsfront.http import conditional

DAV = "DAV:"

PropName = tuple[str, str]
"""A property's (namespace URI, local name); the namespace is ``""`` for none."""

MAX_PROPERTIES = 128
"""Distinct property names one PROPFIND may ask for; more is 400."""

MAX_PROPERTY_NAME_BYTES = 4096
"""The most bytes those names may take together (400 past it): each is
echoed in every entry of a Depth 1 answer, so 128 long names on a big
directory made an answer thousands of times the request's size."""


class PropfindSyntaxError(ValueError):
    """The body is not well-formed XML, or not a DAV:propfind RFC 4918 allows."""


@frozen
class PropfindQuery:
    """What a PROPFIND asks for.

    ``kind`` ``allprop``: every live property (``names``: those of an
    ``<include>``, answered too); ``propname``: the names of the live
    properties, no values; ``prop``: exactly ``names``.
    """

    kind: Literal["allprop", "propname", "prop"]
    names: tuple[PropName, ...] = ()


ALLPROP = PropfindQuery("allprop")
"""An empty body's meaning (RFC 4918, 9.1)."""

_SEP = " "
_MODES = ("allprop", "propname", "prop")


class PropfindParser:
    """Parse a DAV:propfind body fed in pieces (``feed``), then ``close``.

    Unknown elements are ignored where RFC 4918 (17) says to, so a body
    with extensions still parses; anything the grammar can't mean is a
    ``PropfindSyntaxError``.
    """

    def __init__(self) -> None:
        self._parser = expat.ParserCreate(namespace_separator=_SEP)
        self._parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
        self._parser.StartDoctypeDeclHandler = self._refuse_doctype
        self._parser.EntityDeclHandler = self._refuse_entity
        self._parser.StartElementHandler = self._start
        self._parser.EndElementHandler = self._end
        self._depth = 0
        self._modes: list[str] = []
        self._include = False
        self._collecting = False
        self._names: dict[PropName, None] = {}
        self._name_bytes = 0
        self._root_seen = False

    # -- expat handlers ----------------------------------------------------

    def _refuse_doctype(self, *args) -> None:
        raise PropfindSyntaxError("a document type declaration is not allowed")

    def _refuse_entity(self, *args) -> None:
        raise PropfindSyntaxError("entity declarations are not allowed")

    def _start(self, tag: str, attrs) -> None:
        self._depth += 1
        name = split_name(tag)
        if self._depth == 1:
            if name != (DAV, "propfind"):
                raise PropfindSyntaxError("the body is not a DAV:propfind")
            self._root_seen = True
        elif self._depth == 2 and name[0] == DAV:
            if name[1] in _MODES:
                self._modes.append(name[1])
                self._collecting = name[1] == "prop"
            elif name[1] == "include":
                self._include = True
                self._collecting = True
        elif self._depth == 3 and self._collecting:
            if name not in self._names:
                self._names[name] = None
                self._name_bytes += len(name[0].encode()) + len(name[1].encode())
            if len(self._names) > MAX_PROPERTIES:
                raise PropfindSyntaxError(f"more than {MAX_PROPERTIES} properties asked for")
            if self._name_bytes > MAX_PROPERTY_NAME_BYTES:
                raise PropfindSyntaxError(
                    f"the properties asked for are named in over {MAX_PROPERTY_NAME_BYTES} bytes"
                )

    def _end(self, tag: str) -> None:
        if self._depth == 2:
            self._collecting = False
        self._depth -= 1

    # -- feeding -----------------------------------------------------------

    def feed(self, data: bytes) -> None:
        self._parse(data, False)

    def close(self) -> PropfindQuery:
        """The query the whole body made (PropfindSyntaxError if none)."""
        self._parse(b"", True)
        if len(self._modes) != 1:
            raise PropfindSyntaxError("a propfind holds exactly one of allprop, propname, prop")
        kind = self._modes[0]
        if self._include and kind != "allprop":
            raise PropfindSyntaxError("include goes with allprop only")
        return PropfindQuery(kind, tuple(self._names) if kind != "propname" else ())

    def _parse(self, data: bytes, final: bool) -> None:
        try:
            self._parser.Parse(data, final)
        except expat.ExpatError as e:
            raise PropfindSyntaxError(f"malformed XML: {expat.errors.messages[e.code]}") from None
        except PropfindSyntaxError:
            raise  # a ValueError too: from our own handlers
        except (LookupError, ValueError) as e:  # UnicodeError is a ValueError
            # An XML declaration naming an encoding expat cannot use.
            raise PropfindSyntaxError(f"unusable encoding: {type(e).__name__}") from None


def parse_propfind(body: bytes) -> PropfindQuery:
    """The query of a whole body; empty means allprop (RFC 4918, 9.1)."""
    if not body:
        return ALLPROP
    parser = PropfindParser()
    parser.feed(body)
    return parser.close()


def split_name(tag: str) -> PropName:
    """expat's ``"namespace local"`` (or ``"local"``) as a PropName.  expat
    refuses a namespace holding the separator, so the split is unambiguous."""
    namespace, sep, local = tag.rpartition(_SEP)
    return (namespace, local) if sep else ("", tag)


# -- rendering -------------------------------------------------------------


@frozen
class Resource:
    """One resource's live properties, as a response reports them.

    ``href`` is percent-encoded already (``paths.to_url_path``); the
    others are None where the resource has no such property.
    """

    href: str
    is_dir: bool
    mtime: float
    size: int | None = None
    etag: str | None = None
    content_type: str | None = None
    display_name: str | None = None


def live_properties(resource: Resource) -> dict[str, str]:
    """The DAV: properties ``resource`` has, local name -> XML content."""
    props = {
        "resourcetype": "<D:collection/>" if resource.is_dir else "",
        "getlastmodified": conditional.format_http_date(resource.mtime),
    }
    if resource.size is not None:
        props["getcontentlength"] = str(resource.size)
    if resource.etag is not None:
        props["getetag"] = text(resource.etag)
    if resource.content_type is not None:
        props["getcontenttype"] = text(resource.content_type)
    if resource.display_name is not None:
        props["displayname"] = text(resource.display_name)
    return props


def response(resource: Resource, query: PropfindQuery) -> bytes:
    """One ``<D:response>`` for ``resource``: found properties in a 200
    propstat, asked-for properties it lacks in a 404 one."""
    live = live_properties(resource)
    missing: list[str] = []
    if query.kind == "propname":
        found = [f"<D:{local}/>" for local in live]
    elif query.kind == "allprop":
        found = [element((DAV, local), value) for local, value in live.items()]
        missing = [element(n, "") for n in query.names if not _is_live(n, live)]
    else:
        found = [element(n, live[n[1]]) for n in query.names if _is_live(n, live)]
        missing = [element(n, "") for n in query.names if not _is_live(n, live)]
    parts = [f"<D:response><D:href>{text(resource.href)}</D:href>"]
    if found or not missing:
        # A response holds a propstat at least (RFC 4918, 14.24): an empty
        # ``<prop/>`` asked for nothing, found in an empty 200 one.
        parts.append(_propstat(found, "200 OK"))
    if missing:
        parts.append(_propstat(missing, "404 Not Found"))
    parts.append("</D:response>\n")
    return "".join(parts).encode("utf-8")


def _is_live(name: PropName, live: dict[str, str]) -> bool:
    return name[0] == DAV and name[1] in live


def _propstat(elements: Iterable[str], status: str) -> str:
    return (
        "<D:propstat><D:prop>" + "".join(elements) + "</D:prop>"
        f"<D:status>HTTP/1.1 {status}</D:status></D:propstat>"
    )


def element(name: PropName, content: str) -> str:
    """``name`` as an element holding ``content`` (XML already): DAV: ones
    with the ``D:`` prefix, others declaring their namespace themselves."""
    namespace, local = name
    if namespace == DAV:
        tag, declaration = f"D:{local}", ""
    else:
        tag, declaration = local, f" xmlns={quoteattr(namespace)}"
    if not content:
        return f"<{tag}{declaration}/>"
    return f"<{tag}{declaration}>{content}</{tag}>"


def text(value: str) -> str:
    """``value`` as XML character data: escaped, and with the characters
    XML 1.0 cannot carry at all (most C0 controls, lone surrogates, which
    a file name may hold) replaced by U+FFFD."""
    return escape(_XML_INVALID.sub("\ufffd", value))


_XML_INVALID = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")

MULTISTATUS_HEAD = b'<?xml version="1.0" encoding="utf-8"?>\n<D:multistatus xmlns:D="DAV:">\n'
MULTISTATUS_TAIL = b"</D:multistatus>\n"

FINITE_DEPTH_ERROR = (
    b'<?xml version="1.0" encoding="utf-8"?>\n'
    b'<D:error xmlns:D="DAV:"><D:propfind-finite-depth/></D:error>\n'
)
"""The body of the 403 that refuses ``Depth: infinity`` (RFC 4918, 9.1)."""

CONTENT_TYPE = "application/xml; charset=utf-8"

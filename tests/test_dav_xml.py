"""The XML of PROPFIND (``wsfront.http.dav_xml``): bodies in, responses out.

Every answer is parsed back with ElementTree, so a test fails on XML that is
not well-formed as much as on a wrong value.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsfront.http import dav_xml
from wsfront.http.dav_xml import DAV, PropfindQuery, PropfindSyntaxError, parse_propfind

D = "{DAV:}"

RCLONE_BODY = b"""<?xml version="1.0"?>
<d:propfind  xmlns:d="DAV:" xmlns:oc="http://owncloud.org/ns" xmlns:nc="http://nextcloud.org/ns">
 <d:prop>
  <d:displayname />
  <d:getlastmodified />
  <d:getcontentlength />
  <d:resourcetype />
  <d:getcontenttype />
  <oc:checksums />
  <oc:permissions />
 </d:prop>
</d:propfind>
"""


def test_an_empty_body_is_allprop():
    assert parse_propfind(b"") == PropfindQuery("allprop")


def test_rclones_body_asks_for_its_properties_in_order():
    query = parse_propfind(RCLONE_BODY)
    assert query.kind == "prop"
    assert query.names == (
        (DAV, "displayname"),
        (DAV, "getlastmodified"),
        (DAV, "getcontentlength"),
        (DAV, "resourcetype"),
        (DAV, "getcontenttype"),
        ("http://owncloud.org/ns", "checksums"),
        ("http://owncloud.org/ns", "permissions"),
    )


def test_allprop_propname_and_include_parse():
    assert parse_propfind(b'<propfind xmlns="DAV:"><allprop/></propfind>') == PropfindQuery(
        "allprop"
    )
    assert parse_propfind(b'<propfind xmlns="DAV:"><propname/></propfind>').kind == "propname"
    query = parse_propfind(
        b'<D:propfind xmlns:D="DAV:"><D:allprop/>'
        b'<D:include><D:supportedlock/><x xmlns="urn:x"/></D:include></D:propfind>'
    )
    assert query == PropfindQuery("allprop", ((DAV, "supportedlock"), ("urn:x", "x")))


def test_unknown_elements_are_ignored_and_names_deduplicated():
    query = parse_propfind(
        b'<propfind xmlns="DAV:" xmlns:e="urn:e"><e:hint>text</e:hint>'
        b"<prop><getetag/><getetag/><nons xmlns=''/><e:deep><e:deeper/></e:deep></prop></propfind>"
    )
    assert query.names == ((DAV, "getetag"), ("", "nons"), ("urn:e", "deep"))


@pytest.mark.parametrize(
    "body",
    [
        b"<propfind",  # not well-formed
        b"   ",  # no element at all
        b'<propfind xmlns="DAV:"><prop><x:y/></prop></propfind>',  # undeclared prefix
        b"<propfind><prop/></propfind>",  # not in the DAV: namespace
        b'<prop xmlns="DAV:"><getetag/></prop>',  # not a propfind
        b'<propfind xmlns="DAV:"/>',  # none of allprop, propname, prop
        b'<propfind xmlns="DAV:"><allprop/><propname/></propfind>',  # two
        b'<propfind xmlns="DAV:"><propname/><include/></propfind>',  # include without allprop
        b'<propfind xmlns="DAV:"><prop>&ent;</prop></propfind>',  # undeclared entity
    ],
)
def test_malformed_bodies_are_refused(body):
    with pytest.raises(PropfindSyntaxError):
        parse_propfind(body)


@pytest.mark.parametrize(
    "body",
    [
        # An external entity: would read a server file if it were expanded.
        b'<?xml version="1.0"?><!DOCTYPE p [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        b'<propfind xmlns="DAV:"><prop><getetag>&x;</getetag></prop></propfind>',
        # Billion laughs, the first levels of it.
        b'<?xml version="1.0"?><!DOCTYPE p [<!ENTITY a "aaaaaaaaaa">'
        b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>'
        b'<propfind xmlns="DAV:"><prop><getetag>&b;</getetag></prop></propfind>',
        # A DTD with no entity at all is refused just as well.
        b'<!DOCTYPE propfind SYSTEM "http://127.0.0.1:9/x.dtd">'
        b'<propfind xmlns="DAV:"><allprop/></propfind>',
    ],
)
def test_document_type_declarations_are_refused(body):
    with pytest.raises(PropfindSyntaxError, match="document type"):
        parse_propfind(body)


def test_a_body_fed_in_single_bytes_parses_the_same():
    parser = dav_xml.PropfindParser()
    for i in range(len(RCLONE_BODY)):
        parser.feed(RCLONE_BODY[i : i + 1])
    assert parser.close() == parse_propfind(RCLONE_BODY)


def test_too_many_property_names_are_refused():
    props = "".join(f"<p{i}/>" for i in range(dav_xml.MAX_PROPERTIES + 1))
    body = f'<propfind xmlns="DAV:"><prop>{props}</prop></propfind>'.encode()
    with pytest.raises(PropfindSyntaxError, match="properties"):
        parse_propfind(body)
    ok = "".join(f"<p{i}/>" for i in range(dav_xml.MAX_PROPERTIES))
    assert (
        len(parse_propfind(f'<propfind xmlns="DAV:"><prop>{ok}</prop></propfind>'.encode()).names)
        == dav_xml.MAX_PROPERTIES
    )


# -- responses ---------------------------------------------------------------

FILE = dav_xml.Resource(
    href="/docs/a%20%3C%26%3E.txt",
    is_dir=False,
    mtime=1_700_000_000.9,
    size=42,
    etag='"abc123"',
    content_type="text/plain; charset=utf-8",
    display_name="a <&>.txt",
)
DIRECTORY = dav_xml.Resource(href="/docs/", is_dir=True, mtime=1_700_000_000, display_name="docs")


def parsed(resource, query) -> ET.Element:
    """The response element, parsed back out of a whole multistatus."""
    body = dav_xml.MULTISTATUS_HEAD + dav_xml.response(resource, query) + dav_xml.MULTISTATUS_TAIL
    root = ET.fromstring(body)
    assert root.tag == D + "multistatus"
    (response,) = root
    return response


def propstats(response) -> dict[str, ET.Element]:
    """status line -> its prop element."""
    return {
        ps.find(D + "status").text: ps.find(D + "prop") for ps in response.findall(D + "propstat")
    }


def test_allprop_of_a_file_gives_every_live_property_escaped():
    response = parsed(FILE, dav_xml.ALLPROP)
    assert response.find(D + "href").text == "/docs/a%20%3C%26%3E.txt"
    (status,) = propstats(response)
    assert status == "HTTP/1.1 200 OK"
    prop = propstats(response)[status]
    assert {child.tag: child.text for child in prop} == {
        D + "resourcetype": None,
        D + "getlastmodified": "Tue, 14 Nov 2023 22:13:20 GMT",
        D + "getcontentlength": "42",
        D + "getetag": '"abc123"',
        D + "getcontenttype": "text/plain; charset=utf-8",
        D + "displayname": "a <&>.txt",
    }
    assert len(prop.find(D + "resourcetype")) == 0


def test_a_directory_is_a_collection_without_length_type_or_etag():
    prop = propstats(parsed(DIRECTORY, dav_xml.ALLPROP))["HTTP/1.1 200 OK"]
    assert prop.find(D + "resourcetype").find(D + "collection") is not None
    assert {child.tag for child in prop} == {
        D + "resourcetype",
        D + "getlastmodified",
        D + "displayname",
    }


def test_properties_asked_for_split_into_found_and_404():
    query = parse_propfind(RCLONE_BODY.replace(b"<d:displayname />", b"<d:creationdate/>"))
    stats = propstats(parsed(DIRECTORY, query))
    assert [c.tag for c in stats["HTTP/1.1 200 OK"]] == [
        D + "getlastmodified",
        D + "resourcetype",
    ]
    assert [c.tag for c in stats["HTTP/1.1 404 Not Found"]] == [
        D + "creationdate",
        D + "getcontentlength",
        D + "getcontenttype",
        "{http://owncloud.org/ns}checksums",
        "{http://owncloud.org/ns}permissions",
    ]


def test_propname_lists_names_only():
    prop = propstats(parsed(FILE, PropfindQuery("propname")))["HTTP/1.1 200 OK"]
    assert all(child.text is None and len(child) == 0 for child in prop)
    assert D + "getetag" in {child.tag for child in prop}


def test_allprop_include_answers_unknown_names_404():
    query = PropfindQuery("allprop", ((DAV, "getetag"), ("urn:a&b", "x"), ("", "bare")))
    stats = propstats(parsed(FILE, query))
    assert len(stats["HTTP/1.1 200 OK"]) == 6
    assert [c.tag for c in stats["HTTP/1.1 404 Not Found"]] == ["{urn:a&b}x", "bare"]


def test_names_xml_cannot_carry_are_replaced_not_sent():
    resource = dav_xml.Resource("/x%01y", False, 0, size=1, display_name="x\x01y\ud800z\tw")
    prop = propstats(parsed(resource, dav_xml.ALLPROP))["HTTP/1.1 200 OK"]
    assert prop.find(D + "displayname").text == "x\ufffdy\ufffdz\tw"


def test_the_finite_depth_error_names_its_precondition():
    root = ET.fromstring(dav_xml.FINITE_DEPTH_ERROR)
    assert root.tag == D + "error"
    assert root.find(D + "propfind-finite-depth") is not None


# -- any bytes ------------------------------------------------------------------

_FRAGMENTS = st.sampled_from(
    [
        b'<propfind xmlns="DAV:">', b"</propfind>", b"<prop>", b"</prop>", b"<allprop/>",
        b"<propname/>", b"<include>", b"</include>", b"<getetag/>", b'<x xmlns="urn:x"/>',
        b"<!DOCTYPE p>", b"&amp;", b"&x;", b"<?xml version='1.0' encoding='utf-16'?>",
        b"<![CDATA[", b"]]>", b"<!--", b"-->", b"\xff\xfe", b"\x00", b"<a:b/>", b" ",
    ]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=400), st.lists(_FRAGMENTS, max_size=30).map(b"".join)))
def test_any_body_is_a_query_or_a_syntax_error(body):
    try:
        query = parse_propfind(body)
    except PropfindSyntaxError:
        return
    assert query.kind in ("allprop", "propname", "prop")
    assert len(query.names) <= dav_xml.MAX_PROPERTIES
    for resource in (FILE, DIRECTORY):
        ET.fromstring(
            dav_xml.MULTISTATUS_HEAD + dav_xml.response(resource, query) + dav_xml.MULTISTATUS_TAIL
        )


def test_a_namespace_with_quotes_and_ampersands_round_trips():
    query = parse_propfind(
        b"<propfind xmlns='DAV:'><prop><x xmlns='urn:a\"&amp;c&lt;'/></prop></propfind>"
    )
    assert query.names == (('urn:a"&c<', "x"),)
    stats = propstats(parsed(FILE, query))
    assert [c.tag for c in stats["HTTP/1.1 404 Not Found"]] == ['{urn:a"&c<}x']
    # expat's namespace separator (a space) cannot be in a namespace: a
    # URI with a space is not one, so this is a plain syntax error.
    with pytest.raises(PropfindSyntaxError):
        parse_propfind(b"<propfind xmlns='DAV:'><prop><x xmlns='a b'/></prop></propfind>")


def test_property_names_longer_than_4_kib_in_all_are_refused():
    """Each name asked for is echoed in every entry of a Depth 1 answer:
    128 names in 400-byte namespaces made 54 KB per entry."""
    long_ns = "urn:x:" + "n" * 400
    props = "".join(f'<p{i} xmlns="{long_ns}"/>' for i in range(12))
    body = f'<propfind xmlns="DAV:"><prop>{props}</prop></propfind>'.encode()
    with pytest.raises(PropfindSyntaxError, match="4096 bytes"):
        parse_propfind(body)
    fits = "".join(f'<p{i} xmlns="{long_ns}"/>' for i in range(9))
    query = parse_propfind(f'<propfind xmlns="DAV:"><prop>{fits}</prop></propfind>'.encode())
    assert len(query.names) == 9

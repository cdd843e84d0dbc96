"""WebDAV PROPFIND and OPTIONS on wsfront's site, over the real transfer
layer, driven with treq: what a WebDAV client lists with must agree with
what GET, HEAD and the HTML listing say.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import attrs
import pytest
import pytest_twisted
from twisted.internet import defer

from tests.http_env import HttpEnv
from tests.http_raw import connect, head_of
from tests.test_http_pending_uploads import leave_pending
from tests.transfer_env import PASSWORD
from wsfront.http import dav_xml

D = "{DAV:}"
XML = "application/xml; charset=utf-8"


@pytest.fixture
def env(tmp_path):
    from twisted.internet import reactor

    e = pytest_twisted.blockon(defer.ensureDeferred(HttpEnv(reactor, tmp_path).start()))
    yield e
    pytest_twisted.blockon(defer.ensureDeferred(e.stop()))


def header(response, name: str) -> str | None:
    values = response.headers.getRawHeaders(name)
    return None if values is None else values[0]


async def put(env, path: str, data: bytes) -> None:
    r = await env.request("PUT", path, data=data)
    assert r.code in (201, 204), await r.text()


async def propfind(env, path: str, depth: str | None = "1", body: bytes = b"", **kw):
    headers = dict(kw.pop("headers", {}))
    if depth is not None:
        headers["Depth"] = depth
    r = await env.request("PROPFIND", path, headers=headers, data=body or None, **kw)
    return r, await r.content()


def responses(body: bytes) -> dict[str, dict[str, dict[str, ET.Element]]]:
    """href -> status line -> property tag -> element, in document order."""
    root = ET.fromstring(body)
    assert root.tag == D + "multistatus"
    out = {}
    for response in root.findall(D + "response"):
        href = response.find(D + "href").text
        out[href] = {
            ps.find(D + "status").text: {p.tag: p for p in ps.find(D + "prop")}
            for ps in response.findall(D + "propstat")
        }
    return out


def ok(props) -> dict[str, ET.Element]:
    return props["HTTP/1.1 200 OK"]


def text_of(props, name: str) -> str | None:
    return ok(props)[D + name].text


@pytest_twisted.ensureDeferred
async def test_depth_0_on_a_file_says_what_get_says(env):
    await put(env, "/notes.txt", b"twelve bytes")
    got = await env.request("GET", "/notes.txt")
    await got.content()
    r, body = await propfind(env, "/notes.txt", "0")
    assert (r.code, header(r, "Content-Type")) == (207, XML)
    assert header(r, "X-Content-Type-Options") == "nosniff"
    (href, props) = next(iter(responses(body).items()))
    assert href == "/notes.txt"
    assert list(props) == ["HTTP/1.1 200 OK"]
    assert text_of(props, "getetag") == header(got, "ETag")
    assert text_of(props, "getcontenttype") == header(got, "Content-Type")
    assert text_of(props, "getcontentlength") == "12"
    assert text_of(props, "getlastmodified") == header(got, "Last-Modified")
    assert text_of(props, "displayname") == "notes.txt"
    assert len(ok(props)[D + "resourcetype"]) == 0
    # Depth 1 on a file is the file alone.
    r, body1 = await propfind(env, "/notes.txt", "1")
    assert (r.code, list(responses(body1))) == (207, ["/notes.txt"])


@pytest_twisted.ensureDeferred
async def test_depth_1_lists_a_directory_with_the_html_listings_hrefs(env):
    await env.transfers.mkdir(env.user, "/d <&> %")
    await env.upload("/d <&> %/b <&>.txt", b"bb")
    await env.upload("/d <&> %/ünï ✓", b"u")
    await env.transfers.mkdir(env.user, "/d <&> %/sub")
    page = await env.request("GET", "/d%20%3C%26%3E%20%25/")
    html = (await page.content()).decode()
    html_hrefs = re.findall(r'<a href="([^"]+)">', html)
    r, body = await propfind(env, "/d%20%3C%26%3E%20%25/")
    assert r.code == 207
    assert header(r, "Content-Length") is None  # streamed, chunked
    found = responses(body)
    self_href = "/d%20%3C%26%3E%20%25/"
    assert list(found) == [self_href] + [h.replace("&amp;", "&") for h in html_hrefs[1:]]
    assert list(found) == [
        self_href,
        self_href + "b%20%3C%26%3E.txt",
        self_href + "sub/",
        self_href + "%C3%BCn%C3%AF%20%E2%9C%93",
    ]
    assert ok(found[self_href])[D + "resourcetype"].find(D + "collection") is not None
    assert text_of(found[self_href], "displayname") == "d <&> %"
    assert text_of(found[self_href + "b%20%3C%26%3E.txt"], "displayname") == "b <&>.txt"
    sub = ok(found[self_href + "sub/"])
    assert sub[D + "resourcetype"].find(D + "collection") is not None
    assert D + "getcontentlength" not in sub and D + "getetag" not in sub
    # A directory named without its slash answers for itself all the same.
    r, body = await propfind(env, "/d%20%3C%26%3E%20%25", "0")
    assert (r.code, list(responses(body))) == (207, [self_href])


@pytest_twisted.ensureDeferred
async def test_the_root_lists_and_has_no_display_name(env):
    await put(env, "/f", b"f")
    _, body = await propfind(env, "/")
    found = responses(body)
    assert list(found) == ["/", "/f"]
    assert D + "displayname" not in ok(found["/"])


@pytest_twisted.ensureDeferred
async def test_asked_for_properties_come_back_found_or_404(env):
    await put(env, "/f.bin", b"12345")
    body = (
        b'<?xml version="1.0"?><D:propfind xmlns:D="DAV:" xmlns:Z="urn:z"><D:prop>'
        b"<D:getcontentlength/><D:creationdate/><Z:color/><D:lockdiscovery/>"
        b"</D:prop></D:propfind>"
    )
    r, answer = await propfind(env, "/f.bin", "0", body)
    assert r.code == 207
    props = responses(answer)["/f.bin"]
    assert {tag: e.text for tag, e in ok(props).items()} == {D + "getcontentlength": "5"}
    assert list(props["HTTP/1.1 404 Not Found"]) == [
        D + "creationdate",
        "{urn:z}color",
        D + "lockdiscovery",
    ]
    r, answer = await propfind(env, "/f.bin", "0", b'<propfind xmlns="DAV:"><propname/></propfind>')
    names = ok(responses(answer)["/f.bin"])
    assert D + "getetag" in names and all(e.text is None for e in names.values())


@pytest.mark.parametrize("depth", ["infinity", "Infinity", None])
@pytest_twisted.ensureDeferred
async def test_infinite_depth_is_refused_with_its_precondition(env, depth):
    r, body = await propfind(env, "/", depth)
    assert (r.code, header(r, "Content-Type")) == (403, XML)
    root = ET.fromstring(body)
    assert root.tag == D + "error"
    assert root.find(D + "propfind-finite-depth") is not None


@pytest_twisted.ensureDeferred
async def test_bad_depth_and_bad_bodies_are_400(env):
    r, _ = await propfind(env, "/", "2")
    assert r.code == 400
    for body in (
        b"<propfind",
        b'<propfind xmlns="DAV:"><getetag/></propfind>',
        b'<!DOCTYPE p [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        b'<propfind xmlns="DAV:"><prop><getetag>&x;</getetag></prop></propfind>',
        # Encodings expat cannot use raised LookupError/ValueError, which
        # escaped as an unanswered, dropped connection and three tracebacks.
        b'<?xml version="1.0" encoding="x-foo"?><propfind xmlns="DAV:"><allprop/></propfind>',
        b'<?xml version="1.0" encoding="shift_jis"?><propfind xmlns="DAV:"><allprop/></propfind>',
        b'<?xml version="1.0" encoding="idna"?><propfind xmlns="DAV:"><allprop/></propfind>',
    ):
        r, text = await propfind(env, "/", "1", body)
        assert r.code == 400, body
        assert b"passwd" not in text and b"root:" not in text


@pytest_twisted.ensureDeferred
async def test_two_depth_headers_are_400_not_the_last_one_wins(env):
    from twisted.internet import reactor

    client = await connect(reactor, env.port.getHost().port)
    token = env.auth_header[b"Authorization"][0]
    client.send(
        b"PROPFIND / HTTP/1.1\r\nHost: x\r\nDepth: 0\r\nDepth: 1\r\n"
        b"Content-Length: 0\r\nAuthorization: " + token + b"\r\n\r\n"
    )
    answer = await client.until(b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    client.close()
    r, _ = await propfind(env, "/", "0")
    assert r.code == 207, "one Depth header is still answered"


@pytest_twisted.ensureDeferred
async def test_a_body_past_64_kib_is_413_declared_or_chunked(env):
    from twisted.internet import reactor

    big = b'<propfind xmlns="DAV:"><prop>' + b" " * (64 << 10) + b"</prop></propfind>"
    r, _ = await propfind(env, "/", "1", big)
    assert r.code == 413
    client = await connect(reactor, env.port.getHost().port)
    token = env.auth_header[b"Authorization"][0]
    client.send(
        b"PROPFIND / HTTP/1.1\r\nHost: x\r\nDepth: 1\r\nTransfer-Encoding: chunked\r\n"
        b"Authorization: " + token + b"\r\n\r\n"
    )
    piece = b" " * 8192
    for _ in range(9):
        client.send(b"%x\r\n%s\r\n" % (len(piece), piece))
    answer = await client.until(b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 413 ")
    client.close()


@pytest_twisted.ensureDeferred
async def test_a_body_in_one_byte_chunks_is_parsed_once_not_per_piece(env, monkeypatch):
    """expat before 2.6 re-scans an unfinished token at every feed: a body
    fed as it arrived, in 1-byte chunks, cost time quadratic in its size on
    the reactor (1.3 s for 63 KiB).  It is parsed once, whole."""
    from twisted.internet import reactor

    feeds = []
    real_feed = dav_xml.PropfindParser.feed

    def counted(self, data: bytes) -> None:
        feeds.append(len(data))
        real_feed(self, data)

    monkeypatch.setattr(dav_xml.PropfindParser, "feed", counted)
    await put(env, "/f", b"f")
    token = env.auth_header[b"Authorization"][0]
    long_attribute = b' a="' + b"x" * 4000 + b'"'
    prop = b"<getcontentlength" + long_attribute + b"/>"
    body = b'<propfind xmlns="DAV:"><prop>' + prop + b"</prop></propfind>"
    client = await connect(reactor, env.port.getHost().port)
    client.send(
        b"PROPFIND /f HTTP/1.1\r\nHost: x\r\nDepth: 0\r\nTransfer-Encoding: chunked\r\n"
        b"Authorization: "
        + token
        + b"\r\n\r\n"
        + b"".join(b"1\r\n%s\r\n" % body[i : i + 1] for i in range(len(body)))
        + b"0\r\n\r\n"
    )
    answer = await client.until(b"</D:multistatus>")
    client.close()
    assert answer.startswith(b"HTTP/1.1 207 ")
    assert feeds == [len(body)]


@pytest_twisted.ensureDeferred
async def test_a_chunked_body_is_parsed_and_an_empty_one_is_allprop(env):
    from twisted.internet import reactor

    await put(env, "/f", b"f")
    token = env.auth_header[b"Authorization"][0]
    body = b'<propfind xmlns="DAV:"><prop><getcontentlength/></prop></propfind>'
    client = await connect(reactor, env.port.getHost().port)
    client.send(
        b"PROPFIND /f HTTP/1.1\r\nHost: x\r\nDepth: 0\r\nTransfer-Encoding: chunked\r\n"
        b"Authorization: " + token + b"\r\n\r\n"
    )
    for i in range(0, len(body), 10):
        client.send(b"%x\r\n%s\r\n" % (len(body[i : i + 10]), body[i : i + 10]))
    client.send(b"0\r\n\r\n")
    answer = await client.until(b"</D:multistatus>")
    client.close()
    head, _, xml = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 207 ")
    props = ok(responses(xml)["/f"])
    assert list(props) == [D + "getcontentlength"]
    _, answer = await propfind(env, "/f", "0", headers={"Content-Type": "application/xml"})
    assert D + "getetag" in ok(responses(answer)["/f"])


@pytest_twisted.ensureDeferred
async def test_missing_paths_files_named_as_directories_and_server_paths_are_not_listed(env):
    await put(env, "/f", b"f")
    for path in ("/nothing", "/nothing/", "/f/", "/-/", "/-/uploads/"):
        r, body = await propfind(env, path)
        assert r.code in (404, 405), path
        assert b"multistatus" not in body
    r, body = await propfind(env, "/f/x")
    assert r.code == 409  # as GET: a file is not a directory
    r, _ = await propfind(env, "/%2e%2e/etc")
    assert r.code == 400


@pytest_twisted.ensureDeferred
async def test_propfind_needs_a_login_unless_anonymous_reading_is_on(env):
    await put(env, "/public.txt", b"hello all")
    r, _ = await propfind(env, "/", auth=False)
    assert r.code == 401
    assert header(r, "WWW-Authenticate").startswith('Basic realm="wsfs"')
    r, _ = await propfind(env, "/", auth=False, headers={"Authorization": "Basic YWxpY2U6d3Jvbmc="})
    assert r.code == 401
    env.site.context.settings = attrs.evolve(env.site.context.settings, anonymous_user="alice")
    r, body = await propfind(env, "/", auth=False)
    assert (r.code, list(responses(body))) == (207, ["/", "/public.txt"])
    r = await env.request("OPTIONS", "/", auth=False)
    assert (r.code, header(r, "DAV")) == (204, "1")
    r = await env.request("MKCOL", "/x", auth=False)
    assert r.code == 401
    assert PASSWORD  # the login of the other requests


@pytest_twisted.ensureDeferred
async def test_the_owners_pending_upload_shows_as_get_and_head_show_it(env):
    await put(env, "/both", b"COMMITTED")
    await leave_pending(env, "/both", b"pe")
    await leave_pending(env, "/only", b"pen")
    head = await env.request("HEAD", "/both")
    r, body = await propfind(env, "/both", "0")
    assert r.code == 207
    assert header(r, "Upload-Offset") == header(head, "Upload-Offset") == "2"
    props = ok(responses(body)["/both"])
    assert props[D + "getcontentlength"].text == "9"
    assert props[D + "getetag"].text == header(head, "ETag")
    get = await env.request("GET", "/only")
    await get.content()
    r, _ = await propfind(env, "/only", "0")
    assert (r.code, header(r, "Upload-Offset")) == (get.code, header(get, "Upload-Offset"))
    assert (r.code, header(r, "Upload-Offset")) == (404, "3")
    r, body = await propfind(env, "/")
    assert list(responses(body)) == ["/", "/both"]  # as the HTML/JSON listing


@pytest_twisted.ensureDeferred
async def test_depth_1_pages_through_a_large_directory(env):
    env.site.context.settings = attrs.evolve(env.site.context.settings, listing_page=7)
    await env.request("MKCOL", "/many")
    names = [f"f{i:03d}" for i in range(30)]
    for name in names:
        await env.upload(f"/many/{name}", name.encode())
    calls = []
    list_dir = env.transfers.list_dir

    def counted(*args, **kw):
        calls.append(args)
        return list_dir(*args, **kw)

    env.transfers.list_dir = counted
    r, body = await propfind(env, "/many/")
    assert r.code == 207
    assert list(responses(body)) == ["/many/"] + [f"/many/{n}" for n in names]
    assert len(calls) == 5  # 7 + 7 + 7 + 7 + 2


@pytest_twisted.ensureDeferred
async def test_options_announces_dav_class_1_and_propfind(env):
    r = await env.request("OPTIONS", "/")
    assert r.code == 204
    assert header(r, "DAV") == "1"
    allow = [m.strip() for m in header(r, "Allow").split(",")]
    assert "PROPFIND" in allow
    assert not {"LOCK", "UNLOCK", "PROPPATCH", "COPY"} & set(allow)
    await put(env, "/f", b"f")
    for method in ("PROPPATCH", "LOCK", "UNLOCK", "COPY"):
        r = await env.request(method, "/f")
        await r.content()
        assert r.code == 405, method
        assert "PROPFIND" in header(r, "Allow")


@pytest_twisted.ensureDeferred
async def test_options_asterisk_describes_the_server(env):
    """RFC 9110 (9.3.7): ``OPTIONS *`` asks about the server; it was 401
    without a login and 400 ("must start with '/'") with one."""
    from twisted.internet import reactor

    token = env.auth_header[b"Authorization"][0]
    for login in (b"", b"Authorization: " + token + b"\r\n"):
        client = await connect(reactor, env.port.getHost().port)
        client.send(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n" + login + b"\r\n")
        status, headers = head_of(await client.until(b"\r\n\r\n"))
        client.close()
        assert status == 204, login
        assert headers["dav"] == "1" and "PROPFIND" in headers["allow"]
    client = await connect(reactor, env.port.getHost().port)
    client.send(b"GET * HTTP/1.1\r\nHost: x\r\nAuthorization: " + token + b"\r\n\r\n")
    status, _ = head_of(await client.until(b"\r\n\r\n"))
    client.close()
    assert status == 400


@pytest_twisted.ensureDeferred
async def test_an_empty_prop_gets_an_empty_200_propstat(env):
    """RFC 4918 (14.24): a response is href then status or propstat+; an
    empty ``<prop/>`` was answered with a bare href, which the DTD forbids."""
    await put(env, "/e.txt", b"e")
    asked = b'<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:prop/></D:propfind>'
    for depth in ("0", "1"):
        r, body = await propfind(env, "/e.txt", depth, asked)
        assert r.code == 207
        assert responses(body) == {"/e.txt": {"HTTP/1.1 200 OK": {}}}, body


class _SlowClientRequest:
    """Just what ``_stream_children`` uses of a request, recording writes;
    the test pauses and resumes the producer it registers, as a socket
    that fills and drains would."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.producer = None
        self.finished = False
        self._disconnected = False

    @property
    def gone(self) -> bool:
        return self.finished

    def setResponseCode(self, code: int) -> None:
        self.code = code

    def set_headers(self, headers) -> None:
        pass

    def setHeader(self, name, value) -> None:
        pass

    def registerProducer(self, producer, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        self.written.append(data)
        self.producer.pauseProducing()  # the socket is full after every write

    def finish(self) -> None:
        self.finished = True


def test_depth_1_waits_for_a_slow_client_before_fetching_the_next_page():
    from types import SimpleNamespace

    from twisted.internet.defer import succeed

    from wsfront.catalog.records import Entry
    from wsfront.http import dav_xml, propfind

    entries = [Entry(f"/d/f{i}", f"f{i}", "file", i, 1, 0.0, etag="e") for i in range(7)]
    fetched = []

    def list_dir(user, vpath, after, limit):
        start = 0 if after is None else int(after[1:]) + 1
        fetched.append(after)
        return succeed(entries[start : start + limit])

    context = SimpleNamespace(
        transfers=SimpleNamespace(list_dir=list_dir), settings=SimpleNamespace(listing_page=3)
    )
    request = _SlowClientRequest()
    own = propfind.resource_of("/d", True, 0, 0.0, None)
    done = propfind._stream_children(context, request, None, "/d", own, dav_xml.ALLPROP, ())
    assert fetched == [None]  # paused after the first page's write: no second fetch
    request.producer.resumeProducing()
    assert fetched == [None, "f2"]
    assert not done.called
    request.producer.resumeProducing()
    assert fetched == [None, "f2", "f5"]  # a short page: the last
    assert done.called and request.finished
    body = b"".join(request.written)
    assert list(responses(body)) == ["/d/"] + [f"/d/f{i}" for i in range(7)]


def test_depth_1_waits_for_a_slow_client_within_a_page_too(monkeypatch):
    from types import SimpleNamespace

    from twisted.internet.defer import succeed

    from wsfront.catalog.records import Entry
    from wsfront.http import dav_xml, propfind

    monkeypatch.setattr(propfind, "FLUSH_BYTES", 1)  # write after every response
    entries = [Entry(f"/d/f{i}", f"f{i}", "file", i, 1, 0.0, etag="e") for i in range(3)]
    context = SimpleNamespace(
        transfers=SimpleNamespace(list_dir=lambda *a: succeed(entries)),
        settings=SimpleNamespace(listing_page=500),
    )
    request = _SlowClientRequest()
    own = propfind.resource_of("/d", True, 0, 0.0, None)
    done = propfind._stream_children(context, request, None, "/d", own, dav_xml.ALLPROP, ())
    for written in (1, 2, 3):
        assert len(request.written) == written  # the head and /d/, then one entry a resume
        request.producer.resumeProducing()
    assert done.called and len(request.written) == 4
    assert list(responses(b"".join(request.written))) == ["/d/", "/d/f0", "/d/f1", "/d/f2"]

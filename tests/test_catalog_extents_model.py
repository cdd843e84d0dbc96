"""Property test: whatever sequence of begin / checkpoint / restart /
commit / abort a client drives, the committed extents describe exactly the
bytes a simple model of the file says (each byte named by its blob and
offset in that blob).  Runs the catalog's transactions directly on SQLite,
without the reactor, so hypothesis can try many sequences quickly."""

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wsfront.catalog import _namespace, _uploads
from wsfront.catalog.opening import open_catalog

NOW = 1000.0
steps = st.lists(
    st.one_of(
        st.tuples(st.just("begin"), st.integers(0, 60)),
        st.tuples(st.just("write"), st.integers(0, 25)),
        st.tuples(st.just("restart"), st.integers(0, 60)),
        st.tuples(st.just("commit"), st.just(0)),
        st.tuples(st.just("abort"), st.just(0)),
    ),
    max_size=25,
)


def expand(extents):
    """The file as a list of (blob_id, blob_offset), one per byte."""
    out = []
    for e in extents:
        assert e.file_offset == len(out), "extents must be contiguous"
        out += [(e.blob_id, e.blob_offset + i) for i in range(e.length)]
    return out


@pytest.fixture(scope="module")
def cat(tmp_path_factory):
    from twisted.internet import reactor

    c = open_catalog(reactor, f"sqlite:///{tmp_path_factory.mktemp('model')}/c.sqlite")
    yield c
    c.close()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps)
def test_committed_extents_match_a_byte_model(cat, script):
    run = cat._runner.run_sync
    path = f"/m{next(PATHS)}"
    blobs = (f"blob{n}" for n in BLOBS)
    committed: list = []  # model of the committed file
    session = None  # (upload, base bytes, current blob id, start, written)
    run(lambda tx: _namespace.mkdir(tx, path, NOW))
    path += "/f"
    for op, n in script:
        if op == "begin" and session is None:
            base = min(n, len(committed))
            blob = next(blobs)
            up = run(lambda tx, base=base, blob=blob: _uploads.begin_upload(
                tx, NOW, "u", path, base, blob, ["s1"], 1, "fe", NOW + 99, None, None))  # fmt: skip
            session = [up, committed[:base], blob, base, 0]
            assert expand(up.base_extents) == committed[:base]
        elif op == "write" and session is not None:
            up, base, blob, start, written = session
            session[4] = written + n
            run(lambda tx, s=session: _uploads.checkpoint(
                tx, NOW, s[0].upload_id, 1, s[3] + s[4], None, None))  # fmt: skip
        elif op == "restart" and session is not None:
            up, base, blob, start, written = session
            offset = min(n, start + written)
            current = [(blob, i) for i in range(written)]
            new_base = (base + current)[:offset]
            new_blob = next(blobs)
            up = run(lambda tx, o=offset, b=new_blob, u=up.upload_id: _uploads.restart_at(
                tx, NOW, u, 1, o, b, ["s1"], 1, None))  # fmt: skip
            assert expand(up.base_extents) == new_base
            session = [up, new_base, new_blob, offset, 0]
        elif op == "commit" and session is not None:
            up, base, blob, start, written = session
            version = run(lambda tx, s=session: _uploads.commit_upload(
                tx, NOW, s[0].upload_id, 1, s[3] + s[4], None, None))  # fmt: skip
            committed = base + [(blob, i) for i in range(written)]
            assert version.size == len(committed)
            assert expand(version.extents) == committed
            session = None
        elif op == "abort" and session is not None:
            run(lambda tx, s=session: _uploads.abort_upload(tx, NOW, s[0].upload_id, 1))
            session = None
        entry = run(lambda tx: _namespace.stat(tx, path)) if committed or session else None
        if committed:
            assert expand(entry.version.extents) == committed


PATHS = itertools.count()
BLOBS = itertools.count()

"""Fuzz client path resolution (FTP ``resolve``, HTTP ``resolve_http``).

Invariants: a path either is refused with ``PathError`` or is a normalized
virtual path whose every component the catalog accepts, that maps into the
user's root and back, and (HTTP) survives ``to_url_path`` unchanged.
"""

from __future__ import annotations

import sys

import _harness
import atheris

ROOT = "/alice"


def _check(vpath: str) -> None:
    from wsfront import paths
    from wsfront.catalog import names

    assert paths.is_virtual_path(vpath), vpath
    parts = [] if vpath == "/" else vpath[1:].split("/")
    for part in parts:
        names.check_name(part)
        assert "\\" not in part
    assert not parts or parts[0] not in names.RESERVED_ROOT_NAMES
    stored = paths.to_storage_path(ROOT, vpath)
    assert stored == ROOT or stored.startswith(ROOT + "/")
    names.split_path(stored)
    assert paths.to_virtual_path(ROOT, stored) == vpath


def test_one_input(data: bytes) -> None:
    from wsfront import paths

    fdp = atheris.FuzzedDataProvider(data)
    cwd = fdp.PickValueInList(["/", "/a", "/a/b"])
    clamp = fdp.ConsumeBool()
    raw = fdp.ConsumeBytes(fdp.remaining_bytes())

    text = raw.decode("utf-8", "surrogateescape")  # what the FTP parser hands over
    try:
        vpath = paths.resolve(cwd, text, clamp_at_root=clamp)
    except paths.PathError as e:
        assert e.ftp_code in (550, 553)
    else:
        _check(vpath)

    try:
        target = paths.resolve_http(b"/" + raw)
    except paths.PathError as e:
        assert e.http_status in (400, 404, 414)
    else:
        _check(target.path)
        assert paths.resolve_http(paths.to_url_path(target.path)).path == target.path


if __name__ == "__main__":
    _harness.run(test_one_input, ("wsfront.paths", "wsfront.catalog.names"))
    sys.exit(0)

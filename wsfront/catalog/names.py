"""The name policy (DESIGN.md, Files), in one place so FTP and HTTP agree.

Names are UTF-8, at most 255 bytes a component, without NUL, CR, LF or ``/``,
never ``.`` or ``..``, case sensitive and stored exactly as given.  The
root-level name ``-`` is reserved for HTTP's ``/-/`` endpoints.
"""

from __future__ import annotations

from wsfront.catalog.errors import InvalidName

MAX_NAME_BYTES = 255
RESERVED_ROOT_NAMES = frozenset({"-"})
_FORBIDDEN = ("\x00", "\r", "\n", "/")


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid path component, else raise InvalidName."""
    if not isinstance(name, str) or name in ("", ".", ".."):
        raise InvalidName(f"invalid name {name!r}")
    for ch in _FORBIDDEN:
        if ch in name:
            raise InvalidName(f"name {name!r} contains a forbidden character")
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidName(f"name {name!r} is not valid UTF-8") from None
    if len(encoded) > MAX_NAME_BYTES:
        raise InvalidName(f"name is {len(encoded)} bytes, more than {MAX_NAME_BYTES}")
    return name


def split_path(path: str) -> tuple[str, ...]:
    """Split an absolute path into validated components; ``"/"`` is ``()``.

    One trailing slash is accepted (``"/a/b/"`` names the directory ``b``);
    empty components elsewhere are not, so two spellings never reach one file.
    """
    if not isinstance(path, str) or not path.startswith("/"):
        raise InvalidName(f"path {path!r} is not absolute")
    if path == "/":
        return ()
    body = path[1:-1] if path.endswith("/") else path[1:]
    parts = tuple(check_name(part) for part in body.split("/"))
    if parts[0] in RESERVED_ROOT_NAMES:
        raise InvalidName(f"the root name {parts[0]!r} is reserved")
    return parts


def join_path(parts: tuple[str, ...] | list[str]) -> str:
    """The absolute path of already validated components."""
    return "/" + "/".join(parts)

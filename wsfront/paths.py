"""Client-supplied paths turned into normalized virtual paths inside a user's root.

FTP and HTTP both hand us a path the client chose; both must land on the same
virtual path, and neither may ever reach outside the user's root.  A virtual
path is absolute, ``/``-separated, has no empty, ``.`` or ``..`` component and
no trailing slash (the root is ``/``).  Every component obeys the name policy
of DESIGN.md (Files): valid UTF-8, at most 255 bytes, no NUL, CR or LF; and
the root-level name ``-`` is reserved for HTTP's ``/-/``.

Decisions worth knowing:

- ``..`` is resolved lexically; a ``..`` that would climb above the root is
  refused (``OUTSIDE_ROOT``) unless the caller asks for chroot-like clamping
  (FTP's ``CDUP`` at ``/``).
- Backslashes are refused, not treated as separators nor as ordinary
  characters: a name holding one would turn into a path on a Windows client
  that mirrors the tree, and ``..\\..`` is a classic traversal probe.
- HTTP paths are split on ``/`` first, then each component is percent-decoded
  exactly once; a component that decodes to something holding ``/`` or NUL is
  refused rather than interpreted (``%2f`` never becomes a separator), while
  ``%2e%2e`` decodes to ``..`` and is then resolved like a literal ``..``.

Every refusal is a ``PathError`` whose ``kind`` tells the FTP and HTTP
adapters which reply to send (``ftp_code``, ``http_status``).
"""

from __future__ import annotations

import enum
import functools
import re
from urllib.parse import quote

from attrs import frozen

from wsfront.catalog import names
from wsfront.catalog.errors import InvalidName

MAX_NAME_BYTES = names.MAX_NAME_BYTES
"""Longest component, in UTF-8 bytes (DESIGN.md, Files)."""

MAX_PATH_BYTES = 4096
"""Longest client-supplied path, so a hostile client can't make us split megabytes."""

RESERVED_ROOT_NAMES = names.RESERVED_ROOT_NAMES
"""Root-level names kept for the server: ``-`` is HTTP's ``/-/``."""

_FORBIDDEN_CHARS = ("\x00", "\r", "\n")
_PERCENT_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")


class PathErrorKind(enum.Enum):
    """Why a path was refused, with the reply each front end gives for it."""

    MALFORMED = ("malformed", 553, 400)
    """Bad percent-encoding, invalid UTF-8, or an encoded ``/`` or NUL."""
    INVALID_NAME = ("invalid-name", 553, 400)
    """A component holds NUL, CR, LF or a backslash, or is too long."""
    TOO_LONG = ("too-long", 553, 414)
    """The whole path is longer than ``MAX_PATH_BYTES``."""
    OUTSIDE_ROOT = ("outside-root", 550, 400)
    """``..`` would climb above the user's root."""
    RESERVED = ("reserved", 553, 404)
    """The path is under the root-level name ``-``, which belongs to ``/-/``."""

    def __init__(self, label: str, ftp_code: int, http_status: int) -> None:
        self.label = label
        self.ftp_code = ftp_code
        self.http_status = http_status


class PathError(ValueError):
    """A client-supplied path was refused; ``kind`` says why and how to answer."""

    def __init__(self, kind: PathErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message

    @property
    def ftp_code(self) -> int:
        return self.kind.ftp_code

    @property
    def http_status(self) -> int:
        return self.kind.http_status


def check_name(name: str) -> None:
    """Raise ``PathError`` unless ``name`` may be stored as one directory entry.

    The adapters call this for names they create (STOR, MKD, RNTO, PUT,
    MKCOL); ``resolve`` calls it for every component it keeps.
    """
    if name in ("", ".", ".."):
        raise PathError(PathErrorKind.INVALID_NAME, f"{name!r} is not a file name")
    for ch in _FORBIDDEN_CHARS:
        if ch in name:
            raise PathError(PathErrorKind.INVALID_NAME, "file names may not contain NUL, CR or LF")
    if "\\" in name:
        raise PathError(PathErrorKind.INVALID_NAME, "file names may not contain a backslash")
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        raise PathError(PathErrorKind.MALFORMED, "file names must be valid UTF-8") from None
    if len(encoded) > MAX_NAME_BYTES:
        raise PathError(
            PathErrorKind.INVALID_NAME,
            f"a file name is at most {MAX_NAME_BYTES} bytes ({len(encoded)} given)",
        )
    try:
        names.check_name(name)
    except InvalidName as e:
        raise PathError(PathErrorKind.INVALID_NAME, str(e)) from None


def _resolve_components(base: list[str], components: list[str], clamp_at_root: bool) -> list[str]:
    parts = list(base)
    for component in components:
        if component in ("", "."):
            continue
        if component == "..":
            if parts:
                parts.pop()
            elif not clamp_at_root:
                raise PathError(PathErrorKind.OUTSIDE_ROOT, "path leads outside your root")
            continue
        check_name(component)
        parts.append(component)
    if parts and parts[0] in RESERVED_ROOT_NAMES:
        raise PathError(PathErrorKind.RESERVED, f"the name {parts[0]!r} at the root is reserved")
    return parts


def _join(parts: list[str]) -> str:
    return "/" + "/".join(parts)


def _check_length(raw: str | bytes) -> None:
    size = len(raw.encode("utf-8", "surrogateescape")) if isinstance(raw, str) else len(raw)
    if size > MAX_PATH_BYTES:
        raise PathError(
            PathErrorKind.TOO_LONG, f"a path is at most {MAX_PATH_BYTES} bytes ({size} given)"
        )


def is_virtual_path(path: str) -> bool:
    """Whether ``path`` is already a normalized virtual path (what ``resolve`` returns)."""
    if path == "/":
        return True
    if not path.startswith("/") or path.endswith("/"):
        return False
    try:
        return _join(_resolve_components([], path[1:].split("/"), False)) == path
    except PathError:
        return False


def _split_virtual(path: str) -> list[str]:
    if not is_virtual_path(path):
        raise ValueError(f"not a normalized virtual path: {path!r}")
    return [] if path == "/" else path[1:].split("/")


def resolve(cwd: str, path: str, *, clamp_at_root: bool = False) -> str:
    """The virtual path that ``path`` names when the client stands in ``cwd``.

    For FTP arguments (already decoded text).  ``path`` may be absolute or
    relative, with ``.``, ``..``, repeated and trailing slashes; an empty
    ``path`` names ``cwd``.  ``cwd`` must itself be a virtual path.  With
    ``clamp_at_root``, ``..`` at the root stays at the root (like chroot)
    instead of raising ``PathError(OUTSIDE_ROOT)``.
    """
    _check_length(path)
    base = [] if path.startswith("/") else _split_virtual(cwd)
    return _join(_resolve_components(base, path.split("/"), clamp_at_root))


def _percent_decode_component(raw: bytes) -> str:
    if b"%" in _PERCENT_ESCAPE.sub(b"", raw):
        raise PathError(PathErrorKind.MALFORMED, "bad percent-encoding in the path")
    decoded = _PERCENT_ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), raw)
    if b"/" in decoded:
        raise PathError(PathErrorKind.MALFORMED, "an encoded slash is not allowed in a path")
    if b"\x00" in decoded:
        raise PathError(PathErrorKind.MALFORMED, "an encoded NUL is not allowed in a path")
    try:
        return decoded.decode("utf-8")
    except UnicodeDecodeError:
        raise PathError(PathErrorKind.MALFORMED, "the path is not valid UTF-8") from None


@frozen
class HttpTarget:
    """A resolved HTTP request path: the virtual path, and whether it ended in ``/``.

    The trailing slash matters to HTTP (a directory is listed at ``/dir/``
    and redirected there from ``/dir``) but not to the namespace.
    """

    path: str
    trailing_slash: bool


def resolve_http(raw_path: bytes | str) -> HttpTarget:
    """The virtual path of an HTTP request path (still percent-encoded, no query).

    Must start with ``/`` (an absolute-form URI is reduced to its path by
    the HTTP layer first); a ``str`` is taken as its UTF-8 bytes.  Each
    component is percent-decoded exactly once, so ``%252e`` names a file
    called ``%2e``.  Paths under ``/-/`` are the server's own and raise
    ``PathError(RESERVED)``: route them before calling this.
    """
    raw = raw_path.encode("utf-8", "surrogateescape") if isinstance(raw_path, str) else raw_path
    _check_length(raw)
    if not raw.startswith(b"/"):
        raise PathError(PathErrorKind.MALFORMED, "an HTTP path must start with '/'")
    if b"\x00" in raw or b"\r" in raw or b"\n" in raw:
        raise PathError(PathErrorKind.MALFORMED, "NUL, CR or LF in the path")
    components = [_percent_decode_component(c) for c in raw[1:].split(b"/")]
    parts = _resolve_components([], components, clamp_at_root=False)
    trailing = len(raw) > 1 and raw.endswith(b"/")
    return HttpTarget(_join(parts), trailing)


@functools.lru_cache(maxsize=4096)
def _checked_root(root: str) -> str:
    """``root`` once it is a normalized virtual path (else ValueError).

    A user's root is a fixed string, valid or not for good, and the same
    few roots come back with every command of every session: each is
    checked once (a refused one is not kept, so it is refused each time).
    """
    _split_virtual(root)
    return root


def to_storage_path(root: str, vpath: str) -> str:
    """The catalog path of ``vpath`` for a user whose root is ``root``.

    ``to_storage_path("/alice", "/docs/a.txt") == "/alice/docs/a.txt"``.
    Both arguments must be normalized virtual paths (ValueError), so the
    result can never leave ``root``; ``vpath`` is checked with every call,
    ``root`` once (``_checked_root``).  Two normalized paths join as
    strings: only the root ``/`` and the path ``/`` need care.
    """
    root = _checked_root(root)
    if not is_virtual_path(vpath):
        raise ValueError(f"not a normalized virtual path: {vpath!r}")
    if root == "/":
        return vpath
    return root if vpath == "/" else root + vpath


def to_virtual_path(root: str, storage_path: str) -> str:
    """The inverse of ``to_storage_path``: what the user sees for a catalog path.

    Raises ``PathError(OUTSIDE_ROOT)`` if ``storage_path`` is not inside
    ``root`` (``/alicex`` is not inside ``/alice``).
    """
    root_parts = _split_virtual(root)
    parts = _split_virtual(storage_path)
    if parts[: len(root_parts)] != root_parts:
        raise PathError(PathErrorKind.OUTSIDE_ROOT, "path is outside the user's root")
    return _join(parts[len(root_parts) :])


def parent(vpath: str) -> str:
    """The directory holding ``vpath`` (the root is its own parent)."""
    parts = _split_virtual(vpath)
    return _join(parts[:-1])


def basename(vpath: str) -> str:
    """The last component of ``vpath`` (empty for the root)."""
    parts = _split_virtual(vpath)
    return parts[-1] if parts else ""


def to_url_path(vpath: str, *, directory: bool = False) -> str:
    """``vpath`` percent-encoded for an HTTP ``href`` or ``Location``.

    Round-trips through ``resolve_http``; ``directory`` appends the slash
    under which HTTP lists a directory.
    """
    parts = _split_virtual(vpath)
    url = "/" + "/".join(quote(p, safe="") for p in parts)
    if directory and parts:
        url += "/"
    return url

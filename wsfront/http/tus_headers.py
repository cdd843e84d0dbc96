"""The tus 1.0 header vocabulary: parsing what clients send, formatting what
they read.

Kept apart from the request handling in ``tus.py`` so every rule about a
header's syntax is in one place and testable without a socket.  Every
parser raises ``HttpError`` with the status tus prescribes for that header.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Mapping

import attrs

from wsfront.http.conditional import format_http_date
from wsfront.http.errors_map import HttpError

TUS_VERSION = "1.0.0"
EXTENSIONS = (
    "creation",
    "creation-with-upload",
    "creation-defer-length",
    "termination",
    "checksum",
    "expiration",
)
OFFSET_CONTENT_TYPE = b"application/offset+octet-stream"

#: Upload-Checksum algorithms (names as tus clients send them).
CHECKSUMS: dict[str, Callable[[], object]] = {
    "sha1": hashlib.sha1,
    "sha256": hashlib.sha256,
}

#: Where a tus upload's URL lives, below the site's ``/-/`` endpoints.
UPLOADS_PREFIX = "/-/uploads/"

_MAX_NUMBER_DIGITS = 19


def upload_url(upload_id: str) -> str:
    """The tus URL (absolute path) of a transfer-layer upload."""
    return UPLOADS_PREFIX + upload_id


def tus_link(info) -> tuple[str, str] | None:
    """The ``Link`` header that tells the owner of a pending upload where to
    continue it with tus, for ``HEAD /<path>``; None when ``info`` (a
    transfer-layer FileInfo) has no pending upload."""
    if info is None or not getattr(info, "pending", False) or not info.upload_id:
        return None
    return ("Link", f'<{upload_url(info.upload_id)}>; rel="tus-upload"')


def parse_number(name: str, raw: bytes | None) -> int | None:
    """A non-negative decimal header value (400 if malformed), None if absent."""
    if raw is None:
        return None
    text = raw.strip()
    if not text.isdigit() or len(text) > _MAX_NUMBER_DIGITS:
        raise HttpError(400, f"{name} must be a non-negative integer")
    return int(text)


def check_resumable(raw: bytes | None) -> None:
    """412 unless the client speaks the tus version we do."""
    if raw is None or raw.strip().decode("latin-1") != TUS_VERSION:
        raise HttpError(
            412,
            f"this server speaks tus {TUS_VERSION} (Tus-Resumable)",
            (("Tus-Version", TUS_VERSION), ("Tus-Resumable", TUS_VERSION)),
        )


def check_offset_content_type(raw: bytes | None) -> None:
    """415 unless the body is announced as ``application/offset+octet-stream``."""
    if raw is None or raw.split(b";")[0].strip().lower() != OFFSET_CONTENT_TYPE:
        raise HttpError(415, "a tus body must be application/offset+octet-stream")


@attrs.frozen
class Checksum:
    """An Upload-Checksum header: the algorithm and the expected digest."""

    algorithm: str
    digest: bytes

    def hasher(self):
        return CHECKSUMS[self.algorithm]()


def parse_checksum(raw: bytes | None) -> Checksum | None:
    """The Upload-Checksum of a request (400 if malformed or unsupported)."""
    if raw is None:
        return None
    name, _, value = raw.strip().decode("latin-1").partition(" ")
    name = name.lower()
    if name not in CHECKSUMS:
        raise HttpError(
            400,
            f"unsupported checksum algorithm {name!r}",
            (("Tus-Checksum-Algorithm", ",".join(CHECKSUMS)),),
        )
    try:
        digest = base64.b64decode(value.strip(), validate=True)
    except ValueError:  # binascii.Error, or non-ASCII text
        raise HttpError(400, "the Upload-Checksum digest is not base64") from None
    if len(digest) != CHECKSUMS[name]().digest_size:
        raise HttpError(400, f"the Upload-Checksum digest has the wrong length for {name}")
    return Checksum(name, digest)


def parse_metadata(raw: bytes | None) -> dict[str, str]:
    """Upload-Metadata: ``key base64value`` pairs separated by commas.

    Values are decoded as UTF-8 (a key without a value maps to ``""``).
    Duplicate keys, bad base64 or non-UTF-8 values are 400.
    """
    if raw is None or not raw.strip():
        return {}
    meta: dict[str, str] = {}
    for pair in raw.decode("latin-1").split(","):
        pair = pair.strip()
        key, _, value = pair.partition(" ")
        if not key or " " in value.strip() or key in meta:
            raise HttpError(400, "malformed Upload-Metadata")
        try:
            meta[key] = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except ValueError:  # binascii.Error, non-ASCII text, UnicodeDecodeError
            raise HttpError(400, f"Upload-Metadata value of {key!r} is not base64 UTF-8") from None
    return meta


def format_metadata(meta: Mapping[str, object]) -> str:
    """The Upload-Metadata header for ``meta`` (only string values are shown)."""
    pairs = []
    for key, value in meta.items():
        if not isinstance(value, str):
            continue
        encoded = base64.b64encode(value.encode("utf-8")).decode("ascii")
        pairs.append(f"{key} {encoded}" if value else key)
    return ",".join(pairs)


def format_expires(seconds: float) -> str:
    """Upload-Expires: an RFC 9110 date."""
    return format_http_date(seconds)

"""Content-Type by file extension, from a fixed table.

Python's ``mimetypes`` reads the host's ``/etc/mime.types`` and the Windows
registry, so the same file would get a different Content-Type on different
front ends, and an ETag-identical response would differ between them.  A
small table built into wsfs answers identically everywhere; anything unknown
is ``application/octet-stream``.  Text types carry ``charset=utf-8`` since
names and most text today are UTF-8 (browsers would otherwise guess).
"""

from __future__ import annotations

DEFAULT = "application/octet-stream"

_TEXT = {
    "txt": "text/plain",
    "text": "text/plain",
    "log": "text/plain",
    "md": "text/markdown",
    "csv": "text/csv",
    "tsv": "text/tab-separated-values",
    "html": "text/html",
    "htm": "text/html",
    "css": "text/css",
    "js": "text/javascript",
    "mjs": "text/javascript",
    "xml": "text/xml",
    "ics": "text/calendar",
    "vtt": "text/vtt",
}

_BINARY = {
    "json": "application/json",
    "pdf": "application/pdf",
    "zip": "application/zip",
    "gz": "application/gzip",
    "tgz": "application/gzip",
    "bz2": "application/x-bzip2",
    "xz": "application/x-xz",
    "zst": "application/zstd",
    "tar": "application/x-tar",
    "7z": "application/x-7z-compressed",
    "iso": "application/x-iso9660-image",
    "wasm": "application/wasm",
    "epub": "application/epub+zip",
    "doc": "application/msword",
    "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "xls": "application/vnd.ms-excel",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "ppt": "application/vnd.ms-powerpoint",
    "pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "odt": "application/vnd.oasis.opendocument.text",
    "ods": "application/vnd.oasis.opendocument.spreadsheet",
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "gif": "image/gif",
    "webp": "image/webp",
    "avif": "image/avif",
    "svg": "image/svg+xml",
    "ico": "image/vnd.microsoft.icon",
    "bmp": "image/bmp",
    "tif": "image/tiff",
    "tiff": "image/tiff",
    "mp3": "audio/mpeg",
    "ogg": "audio/ogg",
    "oga": "audio/ogg",
    "opus": "audio/opus",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "m4a": "audio/mp4",
    "mp4": "video/mp4",
    "m4v": "video/mp4",
    "webm": "video/webm",
    "mkv": "video/x-matroska",
    "mov": "video/quicktime",
    "avi": "video/x-msvideo",
    "woff": "font/woff",
    "woff2": "font/woff2",
    "ttf": "font/ttf",
    "otf": "font/otf",
}


def content_type(name: str) -> str:
    """The Content-Type for a file called ``name`` (a name or a path).

    The extension is matched case-insensitively; names without one, and
    dot-files like ``.bashrc``, are ``application/octet-stream``.
    """
    base = name.rsplit("/", 1)[-1]
    stem, dot, ext = base.rpartition(".")
    if not dot or not stem.strip("."):
        return DEFAULT
    ext = ext.lower()
    if ext in _TEXT:
        return f"{_TEXT[ext]}; charset=utf-8"
    return _BINARY.get(ext, DEFAULT)

"""Run tuspy, the real tus client, in its own process for the tus tests.

The tests run it with ``getProcessOutputAndValue`` or ``spawnProcess`` so the
reactor serving the upload stays free (tuspy blocks on ``requests``).  One
JSON argument says what to do::

    {"endpoint": "http://127.0.0.1:P/-/uploads/",   # create a new upload, or
     "url": "http://127.0.0.1:P/-/uploads/ID",      # resume this one
     "file": "/path/to/file", "auth": "Basic ...",
     "chunk_size": 1048576, "stop_at": 2097152,      # both optional
     "metadata": {"filename": "a.bin"}, "checksum": true,
     "headers": {"Upload-Length": "123"}}            # extra headers, every request

It prints one JSON line ``{"url": ..., "offset": ...}`` when it stops, or
exits 3 with the server's status on stderr if tuspy raised.
"""

from __future__ import annotations

import json
import sys
from sys import maxsize

from tusclient.client import TusClient
from tusclient.exceptions import TusCommunicationError, TusUploadFailed


def main(spec: dict) -> int:
    headers = {"Authorization": spec["auth"], **spec.get("headers", {})}
    client = TusClient(spec.get("endpoint") or spec["url"], headers=headers)
    uploader = client.uploader(
        file_path=spec["file"],
        url=spec.get("url"),
        chunk_size=spec.get("chunk_size") or maxsize,
        metadata=spec.get("metadata") or {},
        upload_checksum=bool(spec.get("checksum")),
    )
    try:
        uploader.upload(stop_at=spec.get("stop_at"))
    except (TusCommunicationError, TusUploadFailed) as e:
        print(json.dumps({"status": e.status_code, "error": str(e)}), file=sys.stderr)
        return 3
    print(json.dumps({"url": uploader.url, "offset": uploader.offset}))
    return 0


if __name__ == "__main__":
    sys.exit(main(json.loads(sys.argv[1])))

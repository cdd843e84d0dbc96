"""Every blob the catalog references, found by walking the namespace.

The catalog can list under-replicated and collectable blobs, but not "every
blob with a replica on server N".  Repair needs that when a server is lost
(its replicas are still marked ok), and fsck needs the whole set; both get
it here by paging through directories and live uploads.  The walk reads the
catalog only; it is O(files) and meant for background passes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import attrs

from wsfront.catalog.records import Extent

PAGE = 500


@attrs.frozen
class BlobUse:
    """One reference to a blob: the file path and its extent in that file."""

    blob_id: str
    path: str
    extent: Extent | None
    upload_id: str | None = None


async def committed_files(catalog, root: str = "/") -> AsyncIterator:
    """Each committed file under ``root`` as its ``Entry`` with ``version``."""
    dirs = [root]
    while dirs:
        directory = dirs.pop()
        after = None
        while True:
            page = await catalog.list_dir(directory, after, PAGE)
            for entry in page:
                if entry.is_dir:
                    dirs.append(entry.path)
                    continue
                try:
                    full = await catalog.stat(entry.path)
                except Exception:
                    continue  # deleted or renamed meanwhile
                if full.version is not None:
                    yield full
            if len(page) < PAGE:
                break
            after = page[-1].name


async def referenced_blobs(catalog) -> AsyncIterator[BlobUse]:
    """Every reference of a committed version or a live upload to a blob."""
    async for entry in committed_files(catalog):
        for extent in entry.version.extents:
            yield BlobUse(extent.blob_id, entry.path, extent)
    for upload in await catalog.list_uploads():
        for extent in upload.base_extents:
            yield BlobUse(extent.blob_id, upload.path, extent, upload.upload_id)
        yield BlobUse(upload.blob_id, upload.path, None, upload.upload_id)


async def referenced_blob_ids(catalog) -> set[str]:
    """The ids of every referenced blob (deduplicated)."""
    return {use.blob_id async for use in referenced_blobs(catalog)}

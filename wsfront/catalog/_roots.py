"""Users' roots in the namespace: directories that stay where they are.

Access goes by path (a user's root, ``users.root``), so a directory that
is an account's root, or holds one, cannot move or go away under it: the
account's ``/`` would answer 404 and every upload 409.  A root inside
another user's tree is a legitimate way to share a folder, so the owner
of that tree is refused exactly those two operations, as a mount point
refuses rename(2) and rmdir(2) with EBUSY.
"""

from __future__ import annotations

from wsfront.catalog._db import Tx
from wsfront.catalog.errors import RootBusy
from wsfront.catalog.names import join_path


def refuse_user_roots(tx: Tx, parts: tuple[str, ...], doing: str) -> None:
    """RootBusy if the directory at ``parts`` is a user's root or holds one.

    Whoever asks: the account itself never names its root (it is its
    ``/``), and an admin moving it would break the account the same way
    (``wsfs user del --keep-files``, then ``user add --root NEW
    --adopt-files`` moves an account).  The prefix is compared with
    ``substr``, not LIKE, whose wildcards a name may hold.  The message
    names the catalog's paths and the account: for logs, never for clients
    (the protocol maps answer with the class's text).
    """
    path = join_path(parts)
    prefix = path.rstrip("/") + "/"
    row = tx.one(
        "SELECT name, root FROM users WHERE root = ? OR substr(root, 1, ?) = ? "
        "ORDER BY root LIMIT 1",
        path,
        len(prefix),
        prefix,
    )
    if row is not None:
        what = "is" if row["root"] == path else "holds"
        raise RootBusy(f"{path} cannot be {doing}: it {what} the root of user {row['name']!r}")

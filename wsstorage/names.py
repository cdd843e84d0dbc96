"""The one rule for a storage server's name, shared by every program that
takes one: ``wsstorage --name``, ``wsfront --storage NAME=EP`` and ``wsfs``.

A server announces its name in the wire protocol's handshake and a front
end accepts it only under the name it was registered with (``expected_name``),
so a name one of them accepts and another refuses is a registry entry no
server can ever answer to.  The rule is that of a blob id (an opaque token,
never a path): a letter or digit, then letters, digits, ``-`` and ``_``, at
most 128 characters, the whole string (no line end after it either).
"""

from __future__ import annotations

from wsstorage.records import BLOB_ID_RE

#: How the rule is said in a refusal.
STORAGE_NAME_RULE = "use letters, digits, '-' and '_' (a letter or digit first, at most 128)"


def storage_name_problem(name: str) -> str | None:
    """None if ``name`` is a valid storage server name, else what to say."""
    if BLOB_ID_RE.fullmatch(name) is None:
        return STORAGE_NAME_RULE
    return None

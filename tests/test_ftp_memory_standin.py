"""The FTP protocol tests' upload stand-in keeps up with the real session.

``tests/ftp_memory.MemoryWrite`` copies by hand the part of the transfer
layer's ``WriteSession`` that the FTP code calls.  When a branch taught the
FTP code a new member of the session (``discarded``), the stand-in fell
behind and the break showed only once that branch met another on main.
This test finds the members the FTP package can reach (every public member
of ``WriteSession`` whose name the FTP code uses as an attribute) and asks
the stand-in to have each, with the same parameters.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import wsfront.ftp
from tests.ftp_memory import MemoryWrite
from wsfront.transfer.writer import WriteSession

#: Names the FTP code uses on other objects only, that happen to be members
#: of WriteSession too: ``log.error(...)`` and ``transfer.session`` (the
#: data command's own transfer record).
NOT_ON_SESSIONS = {"error", "session"}

#: Classes and functions of the FTP code that read a path's FileInfo, what
#: SIZE reported (``SizeReported``) or a file's extents, and never a
#: session: their attributes (a pending upload's ``blob_id``,
#: ``blob_start``) are not looked for on the stand-in.  Skipping these
#: scopes rather than the names keeps a real ``session.blob_id`` elsewhere
#: caught.
NOT_SESSION_SCOPES = {"SizeReported", "spans"}


def _session_members() -> set[str]:
    """Public methods and properties of WriteSession, and the public
    attributes its ``__init__`` sets."""
    members = {name for name in vars(WriteSession) if not name.startswith("_")}
    init = ast.parse(inspect.getsource(WriteSession.__init__).lstrip())
    for node in ast.walk(init):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.ctx, ast.Store)
            and isinstance(node.value, ast.Name)
            and node.value.id == "self"
            and not node.attr.startswith("_")
        ):
            members.add(node.attr)
    return members


def _attributes_used_by_ftp(skipped: set[str] | None = None) -> set[str]:
    """The attribute names the FTP code uses, outside NOT_SESSION_SCOPES;
    the names of the scopes skipped go into ``skipped``."""
    used: set[str] = set()
    scopes = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    for source in Path(wsfront.ftp.__file__).parent.glob("*.py"):
        todo: list[ast.AST] = [ast.parse(source.read_text())]
        while todo:
            node = todo.pop()
            if isinstance(node, scopes) and node.name in NOT_SESSION_SCOPES:
                if skipped is not None:
                    skipped.add(node.name)
                continue
            if isinstance(node, ast.Attribute):
                used.add(node.attr)
            todo.extend(ast.iter_child_nodes(node))
    return used


def _parameters(function) -> list[str]:
    return [name for name in inspect.signature(function).parameters if name != "self"]


def test_the_stand_in_has_every_session_member_the_ftp_code_uses():
    reached = (_session_members() & _attributes_used_by_ftp()) - NOT_ON_SESSIONS
    # The FTP code writes into sessions, ends them three ways and asks how
    # they ended: if this set shrinks to nothing the search itself broke.
    assert {"write", "finish", "interrupt", "abort", "discarded"} <= reached
    stand_in = MemoryWrite({}, "a")
    missing = sorted(name for name in reached if not hasattr(stand_in, name))
    assert missing == [], f"tests/ftp_memory.MemoryWrite lacks {missing}"


def test_the_stand_in_methods_take_the_sessions_parameters():
    reached = (_session_members() & _attributes_used_by_ftp()) - NOT_ON_SESSIONS
    differing = {}
    for name in sorted(reached):
        real = inspect.getattr_static(WriteSession, name, None)
        if not inspect.isfunction(real):
            continue
        copy = getattr(MemoryWrite, name)
        if _parameters(real) != _parameters(copy):
            differing[name] = (_parameters(real), _parameters(copy))
    assert differing == {}


def test_the_exclusions_are_still_needed():
    """Each name kept out above is a session member the FTP code mentions,
    and each scope skipped is still in the FTP code; once either stops
    being true the exclusion hides nothing and goes."""
    skipped: set[str] = set()
    assert _session_members() & _attributes_used_by_ftp(skipped) >= NOT_ON_SESSIONS
    assert skipped == NOT_SESSION_SCOPES

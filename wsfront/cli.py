"""``wsfs``: the administrator's command line, talking to the catalog.

Every front end and this CLI share the catalog, so user management, status
and the list of sessions need no running front end.  Work that needs the
storage tier (``repair``, ``drain``, ``rebalance``, ``fsck``, ``compact``, ``gc``) is
queued as a job in the catalog; a front end runs it and the CLI follows its progress.
``fsck --rebuild-catalog`` talks to the storage servers itself (the catalog
it would find them in is the thing being rebuilt).  Tables by default, ``--json`` for
scripts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

import attrs
from twisted.internet import defer, task

from wsfront.catalog import open_catalog
from wsfront.catalog.errors import CatalogUnavailable, NotEmpty, NotFound, RootInUse
from wsfront.catalog.opening import catalog_location
from wsfront.catalog.records import NODE_DRAINING
from wsfront.cli_input import read_password, whole
from wsfront.cli_output import masked_url, printable, without_password
from wsfront.failures import driver_error, operator_error
from wsfront.maintenance.backup import remove_temporaries
from wsfront.maintenance.lease import LEASE_NAME, LIVENESS_PREFIX
from wsstorage.names import storage_name_problem
from wsstorage.reserve import human_bytes

#: Exit status of a CLI the reader of its output went away from (``| head``):
#: what a shell reports for a process killed by SIGPIPE, as ``cat`` would be.
EXIT_BROKEN_PIPE = 128 + 13

#: Exit status of a job that ended but left part of its work undone: a
#: drain with replicas still on the server, a repair with blobs still
#: under-replicated, a rebalance stopped by a failed copy.  Not 0, so
#: ``wsfs drain s1 && retire s1`` stops there.
EXIT_UNFINISHED = 4

#: Exit status a shell reports after Ctrl-C (SIGINT): the CLI says one line
#: and dies by SIGINT (``die_of_sigint``), so a script stops too; a job it
#: waited for goes on in the cluster.  Only a fallback exits with it.
EXIT_INTERRUPTED = 128 + 2

#: Exit status of a job the problems it found are the answer of
#: (``fsck`` without ``--fix``, ``compact`` with a sha256 mismatch).
EXIT_PROBLEMS = 3

EXIT_CODES = f"""exit status: 0 done; 1 error (one line on stderr); 2 usage;
{EXIT_PROBLEMS} fsck (without --fix) found problems, or compact a sha256 mismatch;
{EXIT_UNFINISHED} the job ended with work left: drain left replicas on the
server, repair or fsck --fix left blobs under-replicated or unrecoverable,
rebalance stopped at a failed copy; 130 (killed by SIGINT) interrupted by Ctrl-C,
a job waited for goes on in the cluster; 141 output pipe closed.
"""


def _shown(value: Any) -> str:
    """A name (a file's, a user's, a server's) to put in a message: every
    control character escaped, a line end too, so a name cannot forge a
    line of the output (the message's own line ends are kept by ``emit``)."""
    return printable(str(value))


def _table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[printable(str(r.get(c, ""))) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = "  ".join(c.upper().ljust(w) for c, w in zip(columns, widths))
    out = [line.rstrip()]
    for row in cells:
        out.append("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
    return "\n".join(out)


def _blobs_and_files(blobs: int, files: int) -> str:
    """``3 blobs (2 files)``, or ``0``: a count of ``wsfs status`` and the
    committed files among them (a pending upload's blob is no file's)."""
    if not blobs:
        return "0"
    text = f"{blobs} blob{'s' if blobs != 1 else ''}"
    return text + f" ({files} file{'s' if files != 1 else ''})" if files else text


def _human(n: int | None) -> str:
    return "-" if n is None else human_bytes(n)


#: How long ``wsfs status`` notes a server found on a new data directory.
REPLACED_SHOWN = 86400.0


def _ago(seconds: float) -> str:
    """``12s ago``, ``5m ago``, ``3h ago``, ``2d ago``."""
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def _strays_waiting(count: int, after: float) -> str:
    """fsck's line for the stray copies still in their grace: the old
    copies a drain or rebalance left, which GC deletes once it is over.
    Expected, not a problem (they do not make fsck exit 3): said so, with
    when, so ``wsfs drain s1 && wsfs fsck`` reads as the healthy cluster
    it is."""
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(after))
    return (
        f"{count} stray copies waiting out their grace period, collected by GC after "
        f"{when} (left by a drain, rebalance or repair: not a problem)"
    )


def _record(obj: Any) -> Any:
    if attrs.has(type(obj)):
        return {k: _record(v) for k, v in attrs.asdict(obj, recurse=False).items()}
    if isinstance(obj, list | tuple):
        return [_record(v) for v in obj]
    if isinstance(obj, frozenset | set):
        return sorted(obj)
    if isinstance(obj, dict):
        return {k: _record(v) for k, v in obj.items()}
    return obj


def check_user_name(name: str) -> str:
    """Refuse at ``user add`` a name no client could log in with.

    HTTP Basic auth splits ``user:password`` at the first colon (RFC 7617),
    so a name with one could never log in over HTTP; the catalog's own name
    rules (a valid path component, not reserved) are checked when it adds
    the user.
    """
    if ":" in name:
        raise SystemExit(f"wsfs: user name {name!r}: ':' is not allowed (HTTP logins split at it)")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise SystemExit("wsfs: the user name is not valid UTF-8") from None
    return name


def die_of_sigint(message: str) -> NoReturn:
    """Say ``message`` on stderr and die by SIGINT, as a process the
    shell's Ctrl-C killed (exit status 130 in a shell): a script's ``wsfs
    drain s1; retire s1`` stops there, as bash stops when a child it waited
    for died of the SIGINT it got too.  An ``exit(130)`` let it carry on.
    What was printed is flushed first; a backup's temporary file is
    removed (its thread dies with the process)."""

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed pipe, a write this handler interrupted
            pass
    try:
        os.write(2, f"wsfs: {printable(message)}\n".encode("utf-8", "backslashreplace"))
    except OSError:
        pass
    remove_temporaries()
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGINT)
    os._exit(EXIT_INTERRUPTED)  # not reached: SIGINT's default action ended the process


class _Interrupt:
    """Ctrl-C (SIGINT) for the whole command: one ``wsfs: interrupted``
    line and death by SIGINT (``die_of_sigint``), never a traceback nor a
    silent exit 0 (Twisted's own handler stopped the reactor and
    ``task.react`` exited 0 with no word).

    While a job is followed (``following``), the first Ctrl-C cancels the
    current pause between polls (``CancelledError`` in ``_follow``) and
    ``_job`` says what becomes of the job before dying.  Elsewhere in the
    reactor the running ``command`` is cancelled (its ``finally`` closes
    the catalog), at a password prompt KeyboardInterrupt unwinds it (the
    terminal's echo comes back), before the reactor runs the process dies
    at once.  A second Ctrl-C dies at once (the catalog may be what hangs).

    A SIGINT ignored when the CLI starts (SIG_IGN: a non-interactive
    shell's background ``wsfs drain s1 &``, ``nohup``) stays ignored, as
    whoever started it meant.  The previous handler is back on exit."""

    def __init__(self) -> None:
        self._previous: Any = None
        self._pause: defer.Deferred[None] | None = None
        self._at_prompt = False
        self.reactor: Any = None
        self.command: defer.Deferred[Any] | None = None
        self.following = False
        self.pressed = False

    def __enter__(self) -> _Interrupt:
        if signal.getsignal(signal.SIGINT) != signal.SIG_IGN:
            self._previous = signal.signal(signal.SIGINT, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.pressed:
            die_of_sigint("interrupted again: exiting now")
        self.pressed = True
        if self._at_prompt:
            raise KeyboardInterrupt
        if self.reactor is None:
            die_of_sigint("interrupted")
        self.reactor.callFromThread(self._wake)

    def _wake(self) -> None:
        if self.following:
            if self._pause is not None and not self._pause.called:
                self._pause.cancel()
        elif self.command is not None:
            self.command.cancel()

    @contextlib.contextmanager
    def prompt(self) -> Iterator[None]:
        """Around a blocking read of the operator's input (no reactor turn
        happens in it): Ctrl-C there unwinds it, then dies."""
        self._at_prompt = True
        try:
            yield
        except KeyboardInterrupt:
            die_of_sigint("interrupted")
        finally:
            self._at_prompt = False

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds``; CancelledError once Ctrl-C was pressed."""
        if self.pressed:
            raise defer.CancelledError()
        reactor = self.reactor
        if reactor is None:
            from twisted.internet import reactor
        self._pause = task.deferLater(reactor, seconds, lambda: None)
        try:
            await self._pause
        finally:
            self._pause = None
        if self.pressed:  # pressed during the poll before: its wake found no pause
            raise defer.CancelledError()


class Commands:
    """One method per sub-command; each returns what to print."""

    def __init__(
        self, catalog, args: argparse.Namespace, out, interrupt: _Interrupt | None = None
    ) -> None:
        self.catalog = catalog
        self.args = args
        self.out = out
        # Not entered here: ``main`` installs it for the whole command.
        self.interrupt = interrupt if interrupt is not None else _Interrupt()

    def emit(self, data: Any, table: str) -> None:
        if self.args.json:
            json.dump(_record(data), self.out, indent=2, sort_keys=True, default=str)
            self.out.write("\n")
        else:
            # Names were escaped in their cells; this is the net for the
            # ones a sentence quotes (``user NAME added``).
            self.out.write(printable(table, newlines=True) + "\n")

    async def user_add(self) -> None:
        a = self.args
        with self.interrupt.prompt():
            password = read_password(a)
        try:
            user = await self.catalog.add_user(
                a.name, password, admin=a.admin, root=a.root,
                quota_bytes=a.quota_bytes, quota_files=a.quota_files, adopt_files=a.adopt_files,
            )  # fmt: skip
        except RootInUse as e:
            raise SystemExit(
                f"wsfs: {e.message}; `wsfs ls` shows them, `user add --adopt-files` gives "
                "them to the new user, or move them away first"
            ) from None
        text = f"user {_shown(user.name)} added (root {_shown(user.root)})"
        if a.adopt_files:
            used = f"{_human(user.used_bytes)} in {user.used_files} files"
            text += f"; usage {used}, adopted included"
        self.emit(user, text)

    async def user_list(self) -> None:
        users = await self.catalog.list_users()
        rows = [
            {"name": u.name, "admin": "yes" if u.admin else "", "root": u.root,
             "used": _human(u.used_bytes), "files": u.used_files,
             "pending": _human(u.pending_bytes), "quota": _human(u.quota_bytes)}
            for u in users
        ]  # fmt: skip
        # PENDING: what their pending uploads hold, charged toward the quota too.
        columns = ["name", "admin", "root", "used", "files", "pending", "quota"]
        self.emit(users, _table(rows, columns))

    async def user_del(self) -> None:
        """Delete an account; its files and pending uploads only as asked.

        Without ``--purge`` or ``--keep-files`` a user who still has either
        is refused: deleting data, or leaving it for the next holder of the
        name, must be the operator's explicit choice.
        """
        a = self.args
        files = "purge" if a.purge else "keep" if a.keep_files else "refuse"
        try:
            result = await self.catalog.delete_user(a.name, files)
        except NotEmpty as e:
            hint = (
                "`user del --keep-files` deletes the account only"
                if a.purge
                else "`user del --purge` deletes them too, `--keep-files` keeps them "
                "(a later `user add` of the name then needs --adopt-files)"
            )
            raise SystemExit(f"wsfs: {e.message}; {hint}") from None
        text = f"user {_shown(a.name)} deleted"
        if a.purge:
            outside = result["uploads_aborted_outside_root"]
            moved = f", {outside} of them moved out of {_shown(result['root'])}" if outside else ""
            text += (
                f"; {result['files_deleted']} files deleted and {result['uploads_aborted']} "
                f"pending uploads aborted{moved} (their storage is freed by the garbage "
                "collector)"
            )
        elif a.keep_files:
            text += f"; the files under {_shown(result['root'])} are kept"
        self.emit({"deleted": a.name, **result}, text)

    async def user_passwd(self) -> None:
        with self.interrupt.prompt():
            password = read_password(self.args)
        await self.catalog.set_password(self.args.name, password)
        self.emit({"changed": self.args.name}, f"password of {_shown(self.args.name)} changed")

    async def user_quota(self) -> None:
        a = self.args
        user = await self.catalog.set_quota(a.name, a.bytes, a.files)
        files = "-" if user.quota_files is None else user.quota_files
        self.emit(user, f"quota of {_shown(user.name)}: {_human(user.quota_bytes)}, {files} files")

    async def user_recount(self) -> None:
        """Count the users' pending bytes again from their live uploads,
        each user in its own short transaction: for a count a front end of
        the code before schema 12 left wrong (docs/catalog.md, Schema)."""
        names = self.args.names or [u.name for u in await self.catalog.list_users()]
        counted = []
        for name in names:
            user, before = await self.catalog.recount_pending(name)
            counted.append({"name": user.name, "pending_bytes": user.pending_bytes,
                            "was": before})  # fmt: skip
        lines = [
            f"pending of {_shown(c['name'])}: {_human(c['pending_bytes'])}"
            + ("" if c["was"] == c["pending_bytes"] else f" (was {_human(c['was'])})")
            for c in counted
        ]
        self.emit(counted, "\n".join(lines) if lines else "no users")

    async def status(self) -> None:
        """Totals and the storage registry.  A server's state is what a
        front end's probe last recorded: SEEN says how long ago it answered
        one, and a note says when no front end is alive to keep the states
        current (a server killed since still shows ``up``); another, for a
        day, that a server came back on a wiped data directory."""
        st = await self.catalog.status()
        now = time.time()
        leases = await self.catalog.list_leases(LIVENESS_PREFIX)
        alive = sorted(owner for owner, expires in leases.values() if expires > now)
        rows = [
            {"name": n.name, "endpoint": n.endpoint, "state": n.state,
             "seen": "never" if n.seen_at is None else _ago(now - n.seen_at),
             "free": _human(n.free_bytes), "total": _human(n.total_bytes),
             "error": n.last_error or ""}
            for n in st["nodes"]
        ]  # fmt: skip
        columns = ["name", "endpoint", "state", "seen", "free", "total"]
        if any(n.last_error for n in st["nodes"]):
            columns.append("error")  # why a server is down, as its front end saw it
        text = (
            f"files: {st['files']}  bytes: {_human(st['bytes'])}  dirs: {st['dirs']}  "
            f"live uploads: {st['live_uploads']}  under-replicated: "
            f"{_blobs_and_files(st['under_replicated'], st['under_replicated_files'])}  "
            f"unavailable: {_blobs_and_files(st['unavailable'], st['unavailable_files'])}\n"
            + _table(rows, columns)
        )
        # Which cluster this catalog is: the id its storage servers' CLUSTER
        # files must name (a store of another shows ``foreign``).  After the
        # totals and the table, before the notes, so the lines scripts read
        # by place keep theirs: the totals first, the table's header second,
        # a note (no front end alive) last.
        cluster = st["cluster_id"] or "none yet (the first front end's start makes it)"
        text += f"\ncluster: {cluster}"
        if st["unavailable"]:
            shown = st["unavailable_paths"]
            more = st["unavailable_files"] - len(shown)
            text += (
                "\nunavailable (no replica on a server that is up): "
                + _blobs_and_files(st["unavailable"], st["unavailable_files"])
                + (f": {', '.join(map(_shown, shown))}" if shown else "")
                + (f" and {more} more" if more > 0 else "")
            )
        for n in st["nodes"]:
            if n.store_replaced_at is not None and now - n.store_replaced_at < REPLACED_SHOWN:
                text += (
                    f"\n{_shown(n.name)}: came back on a wiped or replaced data directory "
                    f"{_ago(now - n.store_replaced_at)} (store {n.store_replaced} -> "
                    f"{n.store_id}): {n.store_lost} replica(s) there were lost"
                    + (", repair copies them back (see under-replicated)" if n.store_lost else "")
                )
        if not alive and st["nodes"]:
            note = "no front end is alive"
            if leases:
                owner, expires = max(leases.values(), key=lambda lease: lease[1])
                note += f" (the last, {_shown(owner)}, stopped renewing {_ago(now - expires)})"
            text += f"\n{note}: each STATE is as last recorded, SEEN ago, and may be out of date"
        self.emit({**st, "front_ends_alive": alive}, text)

    async def sessions(self) -> None:
        uploads = await self.catalog.list_uploads()
        now = time.time()
        rows = [
            {"id": u.upload_id, "user": u.user, "path": u.path, "state": u.state,
             "offset": u.checkpoint, "front_end": u.owner, "epoch": u.epoch,
             "age": f"{now - u.created_at:.0f}s"}
            for u in uploads
        ]  # fmt: skip
        self.emit(
            uploads,
            _table(rows, ["id", "user", "path", "state", "offset", "front_end", "epoch", "age"]),
        )

    async def ls(self) -> None:
        entries, after = [], None
        while True:
            page = await self.catalog.list_dir(self.args.path, after, 1000)
            entries.extend(page)
            if len(page) < 1000:
                break
            after = page[-1].name
        rows = [
            {"name": e.name + ("/" if e.is_dir else ""), "size": "" if e.is_dir else e.size,
             "modified": time.strftime("%Y-%m-%d %H:%M", time.gmtime(e.mtime))}
            for e in entries
        ]  # fmt: skip
        self.emit(entries, _table(rows, ["name", "size", "modified"]))

    def _show_progress(self, kind: str, job) -> None:
        """A redrawn bar on a terminal, one plain line per change otherwise."""
        p = job.progress or {}
        done, total = p.get("copied", p.get("done")), p.get("total")
        if not self.out.isatty():
            self.out.write(f"{kind} job {job.job_id}: {job.state} {p}\n")
        elif isinstance(done, int) and isinstance(total, int) and total > 0:
            width = 30
            filled = min(width, width * done // total)
            bar = "#" * filled + "-" * (width - filled)
            self.out.write(f"\r{kind} [{bar}] {done}/{total} {p.get('phase', job.state)}  ")
        else:
            self.out.write(f"\r{kind}: {p.get('phase', job.state)} {p}"[:120])
        self.out.flush()

    async def _no_front_end(self) -> bool:
        """True when no front end holds the maintenance lease unexpired:
        then none runs jobs (only the holder claims them).

        Only read: the lease stays as its holder left it, even an expired
        one (its front end may be renewing it right now).
        """
        lease = await self.catalog.get_lease(LEASE_NAME)
        return lease is None or lease[1] <= time.time()

    def _warn(self, text: str) -> None:
        """A note on stderr (stdout may be JSON for a script)."""
        sys.stderr.write(f"wsfs: {printable(text)}\n")
        sys.stderr.flush()

    def _say_restarted(self, kind: str, job_id: int, why: str) -> None:
        self._warn(
            f"{kind} job {job_id} restarted ({why}): it runs again from the start, its "
            "progress counts from 0; what it did before stays done"
        )

    async def _job(self, kind: str, args: dict[str, Any]) -> Any:
        """Queue a job for a front end and follow it to the end.

        The operator is told at once when no front end could run it, and
        again when it has waited a while with nobody taking it, rather than
        waiting silently up to ``--timeout``.  Ctrl-C stops the waiting
        only (``_interrupted``): the job is the cluster's once queued.
        """
        interrupt = self.interrupt
        interrupt.following = True
        try:
            job = await self.catalog.enqueue_job(kind, args)
            if interrupt.pressed:
                await self._interrupted(kind, job.job_id, job.state)
            try:
                return await self._follow(kind, job, interrupt)
            except defer.CancelledError:
                if not interrupt.pressed:
                    raise
                await self._interrupted(kind, job.job_id, None)
        finally:
            interrupt.following = False

    async def _interrupted(self, kind: str, job_id: int, state: str | None) -> NoReturn:
        """After Ctrl-C: say what becomes of the job, die by SIGINT.

        The CLI never cancels it: a queued job is run by the next front end
        that takes it, a running one goes on to its end (a drain until
        ``wsfs undrain``).  Its state is read once more to say which; a
        second Ctrl-C meanwhile exits at once."""
        if self.out.isatty() and not self.args.json:
            self.out.write("\n")
        if state is None:
            try:
                state = (await self.catalog.get_job(job_id)).state
            except Exception:  # a hung or failing catalog: say what is known
                state = None
        job = f"the {kind} job {job_id}"
        if state in ("queued", "running"):
            text = f"{job} is still {state} and goes on in the cluster"
            text += " (a front end runs it when one takes it)" if state == "queued" else ""
            if kind == "drain":
                text += f"; `wsfs undrain {_shown(self.args.name)}` stops it"
        elif state is not None:
            text = f"{job} ended meanwhile ({state})"
        else:
            text = f"{job} was queued and, as far as is known, goes on in the cluster"
        die_of_sigint(f"interrupted: stopped waiting; {text}")

    async def _follow(self, kind: str, job: Any, interrupt: _Interrupt) -> Any:
        """Poll ``job`` to its end, showing its progress."""
        started = time.monotonic()
        deadline = started + self.args.timeout
        nag_at: float | None = started + self.args.no_taker_after
        if await self._no_front_end():
            self._warn(
                f"no front end is running to run the {kind} job {job.job_id}; "
                "it stays queued until one starts"
            )
        shown = None
        restart_said = False
        while job.state in ("queued", "running"):
            if job.error is not None and not restart_said:
                # Re-queued after its runner died or lost the lease
                # (``jobs.end_job``): it runs again from the start.
                restart_said = True
                self._say_restarted(kind, job.job_id, job.error)
            now = time.monotonic()
            if now > deadline:
                raise SystemExit(
                    f"wsfs: {kind} job {job.job_id} is still {job.state} after "
                    f"{self.args.timeout:.0f}s; is a front end running?"
                )
            if nag_at is not None and now >= nag_at:
                nag_at = None
                if job.state == "queued":
                    self._warn(
                        f"{kind} job {job.job_id} is still queued after {now - started:.0f}s: "
                        "no front end has taken it (waiting up to "
                        f"{self.args.timeout:.0f}s; Ctrl-C leaves it queued)"
                    )
            if job.progress != shown and not self.args.json:
                shown = job.progress
                self._show_progress(kind, job)
            await interrupt.sleep(self.args.poll)
            job = await self.catalog.get_job(job.job_id)
        if shown is not None and self.out.isatty():
            self.out.write("\n")
        restarted = job.result.get("restarted") if isinstance(job.result, dict) else None
        if restarted and not restart_said:  # re-run between two polls
            self._say_restarted(kind, job.job_id, restarted["why"])
        if job.state == "failed":
            raise SystemExit(f"wsfs: {kind} failed: {job.error}")
        return job

    async def repair(self) -> None:
        job = await self._job("repair", {"now": True})
        r = job.result
        text = (
            f"repair done: {r['copied']} replicas copied ({_human(r['bytes'])}) for "
            f"{r['examined']} under-replicated blobs, {r['failed']} copies failed, "
            f"{len(r['unrecoverable'])} blobs unrecoverable; "
            f"{r['under_replicated']} blobs still under-replicated"
        )
        if r.get("reclaimed"):  # a result from an older front end has none
            text += (
                f"; {r['reclaimed']} lost replicas on servers back up read back intact "
                "and counted ok again (not copied)"
            )
        if r["lost_nodes"]:
            text += (
                f"; servers lost: {', '.join(map(_shown, r['lost_nodes']))} "
                f"({r['marked_lost']} replicas marked lost)"
            )
        lines = [text]
        for blob in r["unrecoverable"]:
            lines.append(f"unrecoverable: blob {blob} has no reachable replica")
        for b in job.result.get("no_verified_replica", []):
            where = ", ".join(map(_shown, b.get("paths", []))) or "no file"
            # ``stale``: what older front ends named this count; a job one
            # of them ran (a cluster being upgraded) is still read.
            count = b.get("stale_or_lost", b.get("stale"))
            lines.append(
                f"no verified replica: {count} stale or lost, {_shown(b['why'])}: blob {b['blob']} "
                f"({where}); see Repair in docs/maintenance.md"
            )
        self.emit(job, "\n".join(lines))
        if r["under_replicated"] or r["unrecoverable"]:
            self._unfinished(
                f"{r['under_replicated']} blobs still under-replicated, "
                f"{len(r['unrecoverable'])} unrecoverable"
            )

    async def drain(self) -> None:
        job = await self._job("drain", {"node": self.args.name})
        r = job.result
        if r.get("cancelled"):
            raise SystemExit(
                f"wsfs: drain of {_shown(self.args.name)} cancelled (`wsfs undrain`) after "
                f"{r['moved']} replicas moved"
            )
        text = f"drain of {_shown(self.args.name)} done: {r['moved']} replicas moved"
        restarted = r.get("restarted")
        if restarted:
            before = restarted["before"].get("moved", 0)
            # The first run's last recorded progress is a lower bound: a
            # move may land after it and before the runner died.
            text = (
                f"drain of {_shown(self.args.name)} done: {r['moved']} replicas moved since the "
                f"job restarted ({_shown(restarted['why'])}); "
                f"its first run had moved at least {before}"
            )
        stuck, busy = r.get("stuck") or [], r.get("busy") or 0
        if stuck:
            homeless, others = await self._homeless(self.args.name, stuck)
            text += f"; {len(stuck)} could not move"
            if homeless:
                why = (
                    "every other storage server is draining or holds a copy already"
                    if others
                    else "there is no other storage server"
                )
                text += (
                    f" ({homeless} with no server to go to: {why}; add a server or "
                    "`wsfs undrain` one, then drain again)"
                )
            if homeless < len(stuck):
                text += " (run again once the servers that could take them are up)"
        if busy:
            text += f"; {busy} in live uploads (run again once they end)"
        self.emit(job, text)
        if stuck or busy:
            self._unfinished(f"replicas are still on {_shown(self.args.name)}: it cannot go yet")

    async def _homeless(self, node: str, blob_ids: list[str]) -> tuple[int, int]:
        """How many of ``blob_ids``, replicas a drain of ``node`` could not
        move, no run again can move: every other registered server is
        draining too or holds an ok copy already (or there is none), so
        running the drain again would only find them stuck again; and how
        many servers are neither ``node`` nor draining."""
        others = [n.name for n in await self.catalog.list_nodes()
                  if n.name != node and n.state != NODE_DRAINING]  # fmt: skip
        homeless = 0
        for blob_id in blob_ids:
            try:
                held = set((await self.catalog.get_blob(blob_id)).ok_replicas)
            except NotFound:
                continue  # collected since: nothing left to move
            if all(name in held for name in others):
                homeless += 1
        return homeless, len(others)

    def _unfinished(self, why: str) -> None:
        """End with ``EXIT_UNFINISHED``: the job ended with work left, what
        is left already printed (said again on stderr for ``--json``)."""
        if self.args.json:
            self._warn(why)
        raise SystemExit(EXIT_UNFINISHED)

    async def undrain(self) -> None:
        """End a drain (finished or not): the server takes new replicas
        again.  Needs no front end: the catalog's mark is the drain, and a
        drain job that finds it gone stops before its next move (one
        running now, or queued again after its front end died); jobs still
        queued are failed at once, so their ``wsfs drain`` stops waiting.
        Replicas already moved stay where they went."""
        name = self.args.name
        before = {n.name: n.state for n in await self.catalog.list_nodes()}
        node = await self.catalog.set_node_draining(name, False)  # NotFound: one line
        cancelled, running = [], []
        for job in await self.catalog.list_jobs(["queued", "running"]):
            if job.kind != "drain" or job.args.get("node") != name:
                continue
            why = f"cancelled by wsfs undrain {name}"
            if job.state == "queued" and await self.catalog.cancel_job(job.job_id, why):
                cancelled.append(job.job_id)
            else:
                running.append(job.job_id)
        if before.get(name) != NODE_DRAINING:
            text = f"{_shown(name)} was not draining (state {node.state})"
        else:
            text = f"{_shown(name)} is no longer draining: it takes new replicas again"
        if cancelled:
            text += f"; queued drain jobs cancelled: {', '.join(map(str, cancelled))}"
        if running:
            text += f"; running drain job {', '.join(map(str, running))} stops before its next move"
        self.emit(
            {"node": name, "state": node.state, "cancelled": cancelled, "running": running}, text
        )

    async def rebalance(self) -> None:
        args = {} if self.args.max_bytes is None else {"max_bytes": self.args.max_bytes}
        job = await self._job("rebalance", args)
        r = job.result
        text = f"rebalance done: {r['moved']} replicas moved ({_human(r['bytes'])})"
        if r.get("failed"):
            text += f"; stopped early: {r['failed']} copies failed (run again)"
        self.emit(job, text)
        if r.get("failed"):
            self._unfinished("rebalance stopped early at a failed copy")

    async def compact(self) -> None:
        args = {
            k: v
            for k, v in (("min_extents", self.args.min_extents), ("max_files", self.args.max_files))
            if v is not None
        }
        job = await self._job("compact", args)
        r = job.result
        self.emit(
            job,
            f"compact done: {r['compacted']} of {r['examined']} files merged into one blob "
            f"({_human(r['bytes'])}, {r['extents_before']} extents before); "
            f"{r['changed']} changed meanwhile, {r['failed']} failed, {r['mismatch']} with a "
            f"sha256 mismatch, {r['skipped']} skipped",
        )
        if r["mismatch"]:
            raise SystemExit(EXIT_PROBLEMS)

    async def gc(self) -> None:
        """A garbage collection pass now rather than at its next turn, with
        the same grace periods and guards: a blob deleted a minute ago is
        still kept (a download begun before the delete may be reading it),
        unless ``--grace`` says otherwise for this pass."""
        grace = getattr(self.args, "grace", None)
        args = {} if grace is None else {"grace_seconds": grace}
        job = await self._job("gc", args)
        r = job.result
        # A done pass has every key (``GarbageCollector.run_pass``): no
        # defaults, so a renamed one fails here instead of printing 0; but
        # the copies kept in their grace are counted since this release,
        # and a lease holder not yet upgraded (a rolling upgrade) runs the
        # job without them: "?" then, not a KeyError after the pass ran.
        if "orphans_waiting" in r and "strays_waiting" in r:
            kept = str(r["orphans_waiting"] + r["strays_waiting"])
        else:
            kept = "?"
        text = (
            f"gc done: {r['forgotten']} blobs collected "
            f"({r['waiting']} kept in their grace period, "
            f"{r['left_behind']} copies left on unreachable servers), "
            f"{r['orphans_deleted']} orphan and {r['strays_deleted']} stray "
            f"copies deleted ({kept} kept in their grace period), "
            f"{r['expired_uploads']} uploads expired, {r['purged_uploads']} purged"
        )
        if r.get("guarded"):
            text += "; too many unknown blobs, left alone: " + ", ".join(r["guarded"])
        self.emit(job, text)

    async def fsck(self) -> None:
        if self.args.rebuild_catalog:
            await self._rebuild()
            return
        job = await self._job("fsck", {"fix": self.args.fix})
        r = job.result
        lines = [
            f"blobs checked: {r['blobs_checked']}  replicas checked: {r['replicas_checked']}",
            f"missing replicas: {len(r['missing'])}  wrong replicas: {len(r['wrong'])}  "
            f"orphans: {r['orphans']}  strays: {r['strays']}  "
            f"under-replicated: {r['under_replicated']}",
        ]
        if r.get("unknown"):  # absent from a front end not yet upgraded
            lines.append(
                f"not judged: {r['unknown']} replicas (their server did not answer their "
                "stat, or failed it: see the lease holder's log)"
            )
        if r.get("strays_waiting"):  # absent from a front end not yet upgraded
            lines.append(_strays_waiting(r["strays_waiting"], r["strays_collected_after"]))
        if r["unreachable_nodes"]:
            lines.append("unreachable: " + ", ".join(map(_shown, r["unreachable_nodes"])))
        for f in r.get("failing_nodes", []):
            # Up, but its disk could not list its blobs: its copies were asked
            # for one by one (missing if it said so, else unknown).
            lines.append(f"failing: {_shown(f['node'])} ({_shown(f['why'])})")
        if r["guarded_nodes"]:
            lines.append(
                "too many unknown blobs (left alone): " + ", ".join(map(_shown, r["guarded_nodes"]))
            )
        for m in r["missing"]:
            lines.append(f"missing: blob {m['blob']} on {_shown(m['node'])}")
        for w in r["wrong"]:
            lines.append(
                f"wrong: blob {w['blob']} on {_shown(w['node'])} ({w['size']} != {w['length']})"
            )
        left = ""
        if self.args.fix:
            deleted = r["gc"]["orphans_deleted"] + r["gc"]["strays_deleted"]
            lines.append(
                f"fixed: {r.get('marked', 0)} replicas marked, "
                f"{r['repair']['copied']} copied, {deleted} deleted"
            )
            # ``under_replicated`` is counted again after the repair.
            unrecoverable = len(r["repair"]["unrecoverable"])
            if r["under_replicated"] or unrecoverable:
                left = (
                    f"{r['under_replicated']} blobs still under-replicated, "
                    f"{unrecoverable} unrecoverable"
                )
                lines.append(f"not fixed: {left} (as `wsfs repair` would leave them)")
        self.emit(job, "\n".join(lines))
        if not self.args.fix and r["problems"]:
            raise SystemExit(EXIT_PROBLEMS)
        if left:  # what repair exits 4 for: the fix is not done
            self._unfinished(left)

    async def _rebuild(self) -> None:
        from twisted.internet import reactor

        from wsfront.maintenance.rebuild import rebuild_catalog
        from wsfront.transfer.pool import StoragePool
        from wsstorage.client import StorageClient

        a = self.args
        if not a.storage or not a.secret_file:
            raise SystemExit("wsfs: --rebuild-catalog needs --storage NAME=EP and --secret-file")
        with open(a.secret_file, "rb") as f:
            secret = f.read().strip()
        pool = StoragePool(reactor)
        clients = []
        for spec in a.storage:
            name, sep, endpoint = spec.partition("=")
            if not sep or not name or not endpoint:
                raise SystemExit(f"wsfs: --storage wants NAME=ENDPOINT, not {spec!r}")
            problem = storage_name_problem(name)
            if problem is not None:
                raise SystemExit(f"wsfs: --storage {spec!r}: not a storage server name: {problem}")
            # A mistyped endpoint reaching another server would rebuild its
            # blobs under this name: the server must announce ``name``.
            client = StorageClient(reactor, name, endpoint, secret, expected_name=name)
            clients.append(client)
            pool.add(name, endpoint, client)
        try:
            try:
                report = await rebuild_catalog(self.catalog, pool, a.replicas, time.time())
            except ValueError as e:
                raise SystemExit(f"wsfs: {e}") from None
        finally:
            for client in clients:
                await client.close()
        text = [f"rebuilt: {report['files']} files from {report['blobs']} blobs; "
                f"under-replicated: {report['under_replicated']}"]  # fmt: skip
        for p in report["problems"]:
            text.append("problem: " + ", ".join(f"{k}={_shown(v)}" for k, v in p.items()))
        if report["skipped"]:
            text.append(f"skipped blobs: {report['skipped']}")
        if report.get("replaced_by_compaction"):
            text.append(
                f"blobs replaced by compaction, left for GC: {report['replaced_by_compaction']}"
            )
        if report.get("unused_compaction_copies"):
            text.append(
                "compaction copies not used (abandoned or of an overwritten version), "
                f"left for GC: {report['unused_compaction_copies']}"
            )
        text.append("re-create users with: wsfs user add NAME --adopt-files (their files are back)")
        self.emit(report, "\n".join(text))
        from wsfront.maintenance.adopt import WARNING

        print(WARNING, file=sys.stderr)

    async def backup(self) -> None:
        from twisted.internet import threads

        from wsfront.maintenance.backup import backup_catalog

        size = await threads.deferToThread(backup_catalog, self.args.catalog, self.args.file)
        self.emit({"file": self.args.file, "bytes": size},
                  f"catalog backed up to {_shown(self.args.file)} ({_human(size)})")  # fmt: skip


def _seconds_or_none(text: str) -> float:
    """An argparse type: a number of seconds, 0 included (so its refusal
    says "0 or more", not "positive", which 0 is not)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value == 0:
        return 0.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(
            f"{text} is not a number of seconds: it must be 0 or more (and finite)"
        )
    return value


def _seconds(text: str) -> float:
    """An argparse type: a positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of seconds")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="wsfs",
        description="administer a wsfs cluster",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # Required, but checked in ``parse_args``: it may come after the command too.
    p.add_argument("--catalog", help="sqlite:///abs/path or postgresql://...")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    sub = p.add_subparsers(dest="command", required=True)

    user = sub.add_parser("user", help="manage users").add_subparsers(dest="action", required=True)
    add = user.add_parser("add", help="add a user (password on stdin)")
    add.add_argument("name")
    add.add_argument("--admin", action="store_true")
    add.add_argument("--root", default=None)
    add.add_argument("--quota-bytes", type=whole(0), default=None)
    add.add_argument("--quota-files", type=whole(0), default=None)
    add.add_argument("--password-file", default=None)
    add.add_argument(
        "--adopt-files",
        action="store_true",
        help="give the new user the files already under their root (a deleted user's); "
        "they count against the quota",
    )
    user.add_parser("list", help="list users")
    dele = user.add_parser(
        "del", help="delete a user (refused while they have files, unless told what to do)"
    )
    dele.add_argument("name")
    gone = dele.add_mutually_exclusive_group()
    gone.add_argument(
        "--purge",
        action="store_true",
        help="delete the files under the user's root and abort all their pending uploads "
        "(also those a rename moved out of the root: nobody could resume them)",
    )
    gone.add_argument(
        "--keep-files",
        action="store_true",
        help="keep the files (a new user of the name gets them only with --adopt-files)",
    )
    pw = user.add_parser("passwd", help="set a user's password (stdin)")
    pw.add_argument("name")
    pw.add_argument("--password-file", default=None)
    quota = user.add_parser("quota", help="set a user's quotas")
    quota.add_argument("name")
    quota.add_argument("--bytes", type=whole(0), default=None, help="byte quota (omit: unlimited)")
    quota.add_argument("--files", type=whole(0), default=None, help="file quota (omit: unlimited)")

    recount = user.add_parser(
        "recount", help="count users' pending upload bytes again (after mixed-version front ends)"
    )
    recount.add_argument("names", nargs="*", help="the users (omit: every user)")

    sub.add_parser("status", help="storage servers, files, under-replicated count")
    sub.add_parser("sessions", help="live and interrupted uploads")
    ls = sub.add_parser("ls", help="list a directory of the namespace")
    ls.add_argument("path", nargs="?", default="/")

    def job_options(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.epilog = EXIT_CODES
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
        parser.add_argument(
            "--timeout",
            type=_seconds,
            default=3600.0,
            help="seconds to wait for the job to end (default 3600); it is not cancelled then",
        )
        parser.add_argument("--poll", type=_seconds, default=0.5, help=argparse.SUPPRESS)
        parser.add_argument("--no-taker-after", type=_seconds, default=10.0, help=argparse.SUPPRESS)
        return parser

    job_options(sub.add_parser("repair", help="restore the replica count now"))
    drain = job_options(sub.add_parser("drain", help="move every replica off a storage server"))
    drain.add_argument("name")
    undrain = sub.add_parser(
        "undrain",
        help="end a drain: the storage server takes new replicas again "
        "(its drain jobs stop; moved replicas stay moved)",
    )
    undrain.add_argument("name")
    reb = job_options(sub.add_parser("rebalance", help="even out the storage servers' fill"))
    reb.add_argument("--max-bytes", type=whole(1), default=None, help="stop after moving this much")
    comp = job_options(
        sub.add_parser("compact", help="merge files of many extents into one blob each")
    )
    comp.add_argument("--min-extents", type=whole(1), default=None, help="files with at least N")
    comp.add_argument("--max-files", type=whole(1), default=None, help="stop after N files")
    gc = job_options(
        sub.add_parser(
            "gc", help="collect garbage now (deleted files' blobs past their grace period)"
        )
    )
    gc.add_argument(
        "--grace",
        type=_seconds_or_none,
        default=None,
        help="for this pass, seconds a deleted file's blobs are kept (default: the front "
        "end's, 3600); 0 frees a full cluster's space now, cutting short downloads that "
        "began before the delete and still read them",
    )
    fsck = job_options(sub.add_parser("fsck", help="cross-check catalog and storage servers"))
    fsck.add_argument("--fix", action="store_true", help="repair what is found")
    fsck.add_argument(
        "--rebuild-catalog",
        action="store_true",
        help="rebuild an empty catalog from the blobs' metadata (needs --storage, --secret-file)",
    )
    fsck.add_argument("--storage", action="append", default=[], metavar="NAME=EP")
    fsck.add_argument("--secret-file", default=None)
    fsck.add_argument("--replicas", type=whole(1), default=2)
    backup = sub.add_parser("backup", help="write a consistent copy of the catalog to FILE")
    backup.add_argument("file")
    _global_options_after_the_command(p)
    return p


def _global_options_after_the_command(parser: argparse.ArgumentParser, top: bool = True) -> None:
    """Take ``--json`` and ``--catalog`` after the command too (``wsfs
    --catalog URL status --json``, ``wsfs status --catalog URL``, ``wsfs
    user --json list``), where scripts and hands often put them, not only
    before it: every parser below the top-level one, a command group's
    (``user``) as well as each command's, accepts them, and leaves the
    top-level one's value alone when they are not given there (SUPPRESS)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _global_options_after_the_command(child, top=False)
    if top:
        return  # it has its own, with their defaults
    parser.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print JSON instead of tables",
    )
    parser.add_argument(
        "--catalog", default=argparse.SUPPRESS, help="sqlite:///abs/path or postgresql://..."
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line, ``--catalog`` required wherever it was given."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.catalog:
        parser.error("the following arguments are required: --catalog")
    return args


def creates_catalog(args: argparse.Namespace) -> bool:
    """Whether this command may create a SQLite catalog that is not there.

    ``user add`` is how the README sets a cluster up (the first admin, before
    or after the first front end starts), and ``fsck --rebuild-catalog`` is
    pointed at a new, empty catalog by design.  Any other command on a
    missing file is a typo, which must not look like an empty healthy
    cluster.  Directories are never created: a typo there is likelier than a
    wish for a new one.
    """
    if args.command == "user":
        return args.action == "add"
    return args.command == "fsck" and args.rebuild_catalog


def check_catalog_url(url: str, may_create: bool) -> None:
    """Refuse a catalog URL before anything is opened (or created)."""
    try:
        kind, path = catalog_location(url)
    except ValueError as e:
        raise SystemExit(without_password(f"wsfs: --catalog {e}", url)) from None
    if kind != "sqlite" or os.path.exists(path):
        return
    if not may_create:
        raise SystemExit(
            f"wsfs: no catalog at {path} (a typo? `wsfs --catalog URL user add NAME` "
            "or a front end creates one)"
        )
    if not os.path.isdir(os.path.dirname(path)):
        raise SystemExit(f"wsfs: no directory {os.path.dirname(path)} for the catalog {path}")


def explain(failure: Any, url: str) -> str | None:
    """The one-line message for a failure an operator can fix
    (``failures.operator_error``), or None for a bug (whose traceback is
    then worth seeing)."""
    e = failure.value
    if isinstance(e, CatalogUnavailable) and e.__cause__ is not None:
        e = e.__cause__  # the driver's own error: said below as for a bad URL
    if not operator_error(e) or isinstance(e, BrokenPipeError):
        return None
    if isinstance(e, sqlite3.Error):
        return f"catalog {masked_url(url)}: {e}"
    if driver_error(e):
        # The server's reason (refused, unknown database or role) is the
        # first line; psycopg adds hints on the next ones.
        reason = str(e).strip().splitlines()
        said = reason[0] if reason else type(e).__name__
        return f"cannot use the catalog {masked_url(url)}: {said}"
    if isinstance(e, OSError):
        where = f"{e.filename}: " if e.filename else ""
        return f"{where}{e.strerror or e}"
    return e.message


def quiet_broken_pipe() -> None:
    """The reader of stdout went away (``wsfs ... | head``): exit quietly.

    Later writes (and the interpreter's final flush) go to /dev/null, so
    no second BrokenPipeError is printed on the way out.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    raise SystemExit(EXIT_BROKEN_PIPE)


def check_postgresql_catalog(url: str) -> None:
    """Refuse a PostgreSQL database that holds no wsfs catalog, before
    opening it would create one: ``wsfs status`` pointed at the wrong
    database must neither add wsfs's tables to it nor report it as an
    empty, healthy cluster (what ``check_catalog_url`` refuses for a
    SQLite path).  Only ``user add`` and ``fsck --rebuild-catalog`` set up
    a new catalog (``creates_catalog``); a front end does too.  The URL's
    own settings (``options=-csearch_path=...``) say where to look."""
    from wsfront.catalog.postgres import PostgresBackend

    conn = PostgresBackend(url).connect()
    try:
        # schema_version alone is another tool's name too (Flyway's, once).
        row = conn.execute(
            "SELECT to_regclass('schema_version') IS NOT NULL"
            " AND to_regclass('dirents') IS NOT NULL AND to_regclass('uploads') IS NOT NULL"
            " AS found"
        ).fetchone()
    finally:
        conn.close()
    if not row["found"]:
        raise SystemExit(
            f"wsfs: no catalog in {masked_url(url)} (no wsfs tables there: a typo? "
            "`wsfs --catalog URL user add NAME` or a front end creates one)"
        )


async def _run(reactor, args: argparse.Namespace, out, interrupt: _Interrupt | None = None) -> None:
    if catalog_location(args.catalog)[0] == "postgresql" and not creates_catalog(args):
        check_postgresql_catalog(args.catalog)
    catalog = open_catalog(reactor, args.catalog)
    try:
        commands = Commands(catalog, args, out, interrupt)
        name = args.command if args.command != "user" else f"user_{args.action}"
        await getattr(commands, name)()
        out.flush()  # a closed pipe shows here, not in the exit's flush
    finally:
        await catalog.close()


def main(argv: Sequence[str] | None = None) -> None:
    """Run one command; every error an operator can fix is one ``wsfs: ...``
    line on stderr and a nonzero exit, never a traceback.  Ctrl-C anywhere
    is one line and death by SIGINT (``_Interrupt``)."""
    with _Interrupt() as interrupt:
        _main(argv, interrupt)


def _main(argv: Sequence[str] | None, interrupt: _Interrupt) -> None:
    args = parse_args(argv)
    if args.command == "user" and args.action == "add":
        check_user_name(args.name)
    check_catalog_url(args.catalog, creates_catalog(args))

    def run(reactor):
        interrupt.reactor = reactor
        d = defer.ensureDeferred(_run(reactor, args, sys.stdout, interrupt))
        interrupt.command = d

        def report(failure):
            if interrupt.pressed:  # cancelled by Ctrl-C, or failing since
                die_of_sigint("interrupted")
            if failure.check(BrokenPipeError):
                quiet_broken_pipe()
            if failure.check(SystemExit) and isinstance(failure.value.code, str):
                # One line each, by design: a LF in a name quoted in it is escaped.
                said = without_password(failure.value.code, args.catalog)
                raise SystemExit(printable(said))
            message = explain(failure, args.catalog)
            if message is not None:
                said = printable(without_password(message, args.catalog))
                sys.stderr.write(f"wsfs: {said}\n")
                raise SystemExit(1)
            return failure

        return d.addErrback(report)

    try:
        task.react(run)
    except BrokenPipeError:
        quiet_broken_pipe()


if __name__ == "__main__":
    main()

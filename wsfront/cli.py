"""``wsfs``: the administrator's command line, talking to the catalog.

Every front end and this CLI share the catalog, so user management, status
and the list of sessions need no running front end.  Work that needs the
storage tier (``repair``) is queued as a job in the catalog; a front end
runs it and the CLI follows its progress.  Tables by default, ``--json`` for
scripts.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import attrs
from twisted.internet import defer, task

from wsfront.catalog import open_catalog
from wsfront.catalog.errors import CatalogError


def _table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = "  ".join(c.upper().ljust(w) for c, w in zip(columns, widths))
    out = [line.rstrip()]
    for row in cells:
        out.append("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
    return "\n".join(out)


def _human(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


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


def _read_password(args: argparse.Namespace) -> str:
    if getattr(args, "password_file", None):
        with open(args.password_file, encoding="utf-8") as f:
            password = f.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            raise SystemExit("wsfs: the passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise SystemExit("wsfs: an empty password is not allowed")
    return password


class Commands:
    """One method per sub-command; each returns what to print."""

    def __init__(self, catalog, args: argparse.Namespace, out) -> None:
        self.catalog = catalog
        self.args = args
        self.out = out

    def emit(self, data: Any, table: str) -> None:
        if self.args.json:
            json.dump(_record(data), self.out, indent=2, sort_keys=True, default=str)
            self.out.write("\n")
        else:
            self.out.write(table + "\n")

    async def user_add(self) -> None:
        a = self.args
        user = await self.catalog.add_user(
            a.name, _read_password(a), admin=a.admin, root=a.root,
            quota_bytes=a.quota_bytes, quota_files=a.quota_files,
        )  # fmt: skip
        self.emit(user, f"user {user.name} added (root {user.root})")

    async def user_list(self) -> None:
        users = await self.catalog.list_users()
        rows = [
            {"name": u.name, "admin": "yes" if u.admin else "", "root": u.root,
             "used": _human(u.used_bytes), "files": u.used_files,
             "quota": _human(u.quota_bytes)}
            for u in users
        ]  # fmt: skip
        self.emit(users, _table(rows, ["name", "admin", "root", "used", "files", "quota"]))

    async def user_del(self) -> None:
        await self.catalog.delete_user(self.args.name)
        self.emit({"deleted": self.args.name}, f"user {self.args.name} deleted")

    async def user_passwd(self) -> None:
        await self.catalog.set_password(self.args.name, _read_password(self.args))
        self.emit({"changed": self.args.name}, f"password of {self.args.name} changed")

    async def user_quota(self) -> None:
        a = self.args
        user = await self.catalog.set_quota(a.name, a.bytes, a.files)
        files = "-" if user.quota_files is None else user.quota_files
        self.emit(user, f"quota of {user.name}: {_human(user.quota_bytes)}, {files} files")

    async def status(self) -> None:
        st = await self.catalog.status()
        rows = [
            {"name": n.name, "endpoint": n.endpoint, "state": n.state,
             "free": _human(n.free_bytes), "total": _human(n.total_bytes)}
            for n in st["nodes"]
        ]  # fmt: skip
        text = (
            f"files: {st['files']}  bytes: {_human(st['bytes'])}  dirs: {st['dirs']}  "
            f"live uploads: {st['live_uploads']}  under-replicated: {st['under_replicated']}\n"
            + _table(rows, ["name", "endpoint", "state", "free", "total"])
        )
        self.emit(st, text)

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

    async def repair(self) -> None:
        job = await self.catalog.enqueue_job("repair", {"now": True})
        deadline = time.monotonic() + self.args.timeout
        shown = None
        from twisted.internet import reactor

        while job.state in ("queued", "running"):
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"wsfs: repair job {job.job_id} is still {job.state} after "
                    f"{self.args.timeout:.0f}s; is a front end running?"
                )
            if job.progress != shown and not self.args.json:
                shown = job.progress
                self.out.write(f"repair job {job.job_id}: {job.state} {job.progress}\n")
                self.out.flush()
            await task.deferLater(reactor, 0.5, lambda: None)
            job = await self.catalog.get_job(job.job_id)
        if job.state == "failed":
            raise SystemExit(f"wsfs: repair failed: {job.error}")
        self.emit(job, f"repair done: {job.result}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wsfs", description="administer a wsfs cluster")
    p.add_argument("--catalog", required=True, help="sqlite:///abs/path or postgresql://...")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    sub = p.add_subparsers(dest="command", required=True)

    user = sub.add_parser("user", help="manage users").add_subparsers(dest="action", required=True)
    add = user.add_parser("add", help="add a user (password on stdin)")
    add.add_argument("name")
    add.add_argument("--admin", action="store_true")
    add.add_argument("--root", default=None)
    add.add_argument("--quota-bytes", type=int, default=None)
    add.add_argument("--quota-files", type=int, default=None)
    add.add_argument("--password-file", default=None)
    user.add_parser("list", help="list users")
    dele = user.add_parser("del", help="delete a user (files stay)")
    dele.add_argument("name")
    pw = user.add_parser("passwd", help="set a user's password (stdin)")
    pw.add_argument("name")
    pw.add_argument("--password-file", default=None)
    quota = user.add_parser("quota", help="set a user's quotas")
    quota.add_argument("name")
    quota.add_argument("--bytes", type=int, default=None, help="byte quota (omit: unlimited)")
    quota.add_argument("--files", type=int, default=None, help="file quota (omit: unlimited)")

    sub.add_parser("status", help="storage servers, files, under-replicated count")
    sub.add_parser("sessions", help="live and interrupted uploads")
    ls = sub.add_parser("ls", help="list a directory of the namespace")
    ls.add_argument("path", nargs="?", default="/")
    rep = sub.add_parser("repair", help="restore the replica count now")
    rep.add_argument("--timeout", type=float, default=3600.0)
    return p


async def _run(reactor, args: argparse.Namespace, out) -> None:
    catalog = open_catalog(reactor, args.catalog)
    try:
        commands = Commands(catalog, args, out)
        name = args.command if args.command != "user" else f"user_{args.action}"
        await getattr(commands, name)()
    finally:
        await catalog.close()


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)

    def run(reactor):
        d = defer.ensureDeferred(_run(reactor, args, sys.stdout))

        def report(failure):
            if failure.check(CatalogError):
                sys.stderr.write(f"wsfs: {failure.value.message}\n")
                raise SystemExit(1)
            return failure

        return d.addErrback(report)

    task.react(run)


if __name__ == "__main__":
    main()

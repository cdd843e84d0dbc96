"""fsck: cross-check the catalog against what the storage servers hold.

For every blob the catalog references (committed versions and live
uploads), every replica it counts ok must exist on its server, sealed, with
at least the catalog's length (more when its old writer sealed it past the
offset a takeover resumed at); a server that is unreachable is reported, not judged
(it may come back with every blob).  A server that answers but cannot list
its blobs for a disk error (``DiskError``: its blobs directory was removed)
is reported as failing (a problem), and each of its replicas asked for
as a suspect below: one it answers it has not (its blobs directory gone)
is missing, and repair replaces it; one whose ``stat`` its disk fails too
is unknown, not judged, as on a server out of reach.  Judged lost
unasked, every copy of a server whose listing failed for a moment (a
remount, a directory put back) was marked and re-copied, and a blob
whose other copy was out of reach had none left counted.  This spares
them only if the directory is back when they are asked for: while it is
away the server answers not found, as one wiped (``rm -rf blobs``),
which must be repaired, and the two cannot be told apart.
The listings are taken before the catalog is read, so a blob uploaded (or a
copy recorded) in between is counted ok and yet absent or open in them: a
replica a listing shows missing or wrong is only a suspect, asked for
directly (``stat``) and judged only if that answer agrees and the blob's
record, read again, still counts it ok (``fsck_confirm``, several blobs
at a time); so neither the report nor ``--fix`` nor the audit acts on a
copy that came after its server was listed.
Every blob a server holds must be known to the catalog and counted (else it
is an orphan or a stray copy, see ``gc``): each server is listed again for
that, and each blob it lists looked up in the catalog after, so a blob
uploaded meanwhile (recorded before its first byte) is never an orphan.  A stray still in GC's grace
(the old copy a drain, rebalance or repair left) is expected, counted
apart (``strays_waiting``) and not a problem: ``wsfs drain s1 && wsfs
fsck`` must pass on a healthy cluster; one past its grace is a problem.
The report is a plain dict (it becomes the result of the ``fsck`` job that
``wsfs fsck`` waits for).

With ``fix``: replicas found missing are marked lost and replicas with the
wrong size or state stale, then a repair pass (``now``) re-copies them from
good ones, and orphans and strays are deleted without waiting (the operator
asked; the orphan guard still applies).  A scrub that quarantined a damaged
blob makes it *missing* here, so scrub + fsck (or the periodic audit the
maintenance service runs) heal it.

The ``fsck`` job stops between blobs (and between servers, marks and
deletes) once ``keep_going()`` is false: its runner lost the maintenance
lease, and deleting strays while the new holder repairs is the race the
lease exists to prevent.  The job then ends interrupted (``handlers``), not
done.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.logger import Logger

from wsfront.catalog import errors as catalog_errors
from wsfront.catalog.records import REPLICA_LOST, REPLICA_OK, REPLICA_STALE, BlobRecord
from wsfront.maintenance.fsck_confirm import (
    CONFIRM_CONCURRENCY,
    NO_RECORD,
    Confirmations,
    Verdict,
)
from wsfront.maintenance.gc import ORPHAN, Garbage, GarbageCollector
from wsfront.maintenance.inventory import referenced_blob_ids
from wsfront.maintenance.repair import Progress, Repairer, holds_the_blob
from wsfront.transfer.pool import StoragePool
from wsstorage.errors import DiskError
from wsstorage.records import BlobInfo

log = Logger()

#: Problems listed by blob id in the report are capped at this many each.
LIST_CAP = 100
#: Said of a copy missing on a server that cannot list its blobs.
FAILING = "its server cannot list its blobs"


@attrs.frozen
class _Listing:
    """What the servers hold (``held``), which could not be asked
    (``unreachable``: not judged), and which answered that their disk
    cannot list (``failing``: node -> why; each copy counted there is
    then asked for, as a suspect: ``check``)."""

    held: dict[str, dict[str, BlobInfo]]
    unreachable: list[str]
    failing: dict[str, str]


async def _listing(pool: StoragePool) -> _Listing:
    held: dict[str, dict[str, BlobInfo]] = {}
    unreachable = []
    failing: dict[str, str] = {}
    for node in pool.names():
        if not pool.is_up(node):
            unreachable.append(node)
            continue
        try:
            infos = await pool.client(node).list_blobs()
        except DiskError as e:
            # The server answered: its disk, not the network, failed the
            # listing.  Only that error, from a server up for the pool,
            # counts; a lost connection or a timeout stays unreachable.
            log.warn("fsck: {node} cannot list its blobs: {err}", node=node, err=e.message)
            failing[node] = e.message
            continue
        except Exception as e:
            log.warn("fsck: cannot list {node}: {err}", node=node, err=e)
            unreachable.append(node)
            continue
        held[node] = {i.blob_id: i for i in infos}
    return _Listing(held, sorted(unreachable), failing)


def _garbage(
    gc: GarbageCollector,
    found: dict[str, tuple[list[Garbage], int]],
    bad: set[str],
) -> dict[str, Any]:
    """The report's garbage counts from each server's ``find_garbage``.

    ``strays`` counts every stray copy; ``strays_waiting`` those of them
    still in their grace that GC's sweep will delete once it is over (at
    ``strays_collected_after`` at the latest, epoch seconds, None if
    none): the old copies a drain, a rebalance or a repair left, expected
    for an hour, so not problems.  A stray past its grace is one (the
    sweep is not keeping up); so is one the sweep would not touch: on a
    guarded server, cluster-wide too, or on one not yet bound to this
    cluster (``GarbageCollector.spared``, the sweep's own decision).  So
    is a stray of a blob in ``bad`` (this check found another of its
    copies missing or wrong): the catalog still counts that copy ok, so
    the sweep would take the stray as surplus and leave fewer copies than
    wanted; its grace is not started either (the audit or ``--fix`` marks
    the bad copy, after which the stray is no longer surplus)."""
    spared = gc.spared(found)
    counts: dict[str, Any] = {
        "orphans": 0,
        "strays": 0,
        "strays_waiting": 0,
        "strays_collected_after": None,
        "guarded_nodes": [],
    }
    for node, (garbage, total) in found.items():
        counts["orphans"] += sum(1 for g in garbage if g.kind == ORPHAN)
        counts["strays"] += sum(1 for g in garbage if g.kind != ORPHAN)
        if gc.guarded(garbage, total):
            counts["guarded_nodes"].append(node)
        if node in spared:
            continue  # the sweep deletes nothing here: no grace runs out
        for g in garbage:
            if g.kind == ORPHAN or g.blob_id in bad:
                continue
            after = gc.sweep_after(g)
            if after is not None:
                counts["strays_waiting"] += 1
                latest = counts["strays_collected_after"]
                counts["strays_collected_after"] = after if latest is None else max(latest, after)
    return counts


def _findings(
    blob_id: str, judged: Verdict, failing: dict[str, str]
) -> list[tuple[str, str, dict[str, Any]]]:
    """What ``confirm`` judged of ``blob_id``'s copies, as the report's
    (list, mark, entry) of each: missing copies to mark lost, wrong ones
    stale.  A copy
    missing on a server that cannot list says so (``FAILING``)."""
    findings: list[tuple[str, str, dict[str, Any]]] = []
    for node, (info, length) in judged.bad.items():
        if info is None:
            entry = {"blob": blob_id, "node": node}
            if node in failing:
                entry["why"] = FAILING
            findings.append(("missing", REPLICA_LOST, entry))
        else:
            findings.append(
                ("wrong", REPLICA_STALE, {"blob": blob_id, "node": node, "state": info.state,
                                          "size": info.size, "length": length})
            )  # fmt: skip
    return findings


def _suspects(
    blob: BlobRecord,
    held: dict[str, dict[str, BlobInfo]],
    failing: dict[str, str],
    silent: set[str],
) -> tuple[int, int, list[str]]:
    """How many of ``blob``'s counted-ok copies the listings let be
    checked, how many not (their server, listed, went silent since), and
    the servers of the checked that are suspects: absent from their
    server's listing (every copy of a failing server) or shown open or
    short there."""
    checked, unknown, suspects = 0, 0, []
    for replica in blob.replicas:
        if replica.state != REPLICA_OK:
            continue
        if replica.node in silent:
            unknown += 1
            continue
        if replica.node in failing:
            info = None  # not listed: asked for, as a copy a listing lacks
        elif replica.node in held:
            info = held[replica.node].get(blob.blob_id)
        else:
            continue  # unreachable: not judged
        checked += 1
        if info is None or not holds_the_blob(info, blob.length):
            suspects.append(replica.node)
    return checked, unknown, suspects


async def _wind_down(confirmations: Confirmations) -> None:
    """Wait for the confirmations under way behind a check that failed
    (the catalog out of reach, ``keep_going`` raising): none is left
    asking servers and reading records after the check has ended.  One
    failing too is logged: the check's own failure is the one raised."""
    try:
        await confirmations.finish()
    except Exception:
        log.failure("fsck: a confirmation failed too, behind the check's failure")


async def check(
    catalog,
    pool: StoragePool,
    gc: GarbageCollector,
    keep_going: Callable[[], bool] = lambda: True,
    confirm_concurrency: int = CONFIRM_CONCURRENCY,
) -> dict[str, Any]:
    """Compare catalog and servers; return the report (and the raw findings
    under ``_bad``, which ``fsck`` uses to fix and drops from the result).
    A check cut short by ``keep_going`` is partial.  Suspect copies are
    confirmed ``confirm_concurrency`` blobs at a time (``fsck_confirm``);
    the report and ``_bad`` list the blobs in id order all the same."""
    await pool.probe_all()
    listing = await _listing(pool)
    held, failing = listing.held, listing.failing
    report: dict[str, Any] = {
        "blobs_checked": 0,
        "replicas_checked": 0,
        "missing": [],
        "wrong": [],
        "unreachable_nodes": listing.unreachable,
        "failing_nodes": [{"node": n, "why": failing[n]} for n in sorted(failing)],
    }
    bad: list[tuple[str, str, str]] = []
    counts = {"missing": 0, "wrong": 0, "erred": 0}
    report["unknown"] = 0

    def listed(kind: str, entry: dict[str, Any]) -> None:
        # Counted all, listed up to the cap as they come (in blob order).
        counts[kind] += 1
        if len(report[kind]) < LIST_CAP:
            report[kind].append(entry)

    def verdict(blob_id: str, judged: Verdict | str) -> None:
        if isinstance(judged, str):  # NO_RECORD
            listed("missing", {"blob": blob_id, "node": None, "why": NO_RECORD})
            return
        # Counted checked when found suspect, not judged after all.
        report["replicas_checked"] -= judged.unknown
        report["unknown"] += judged.unknown
        counts["erred"] += judged.erred
        for kind, state, entry in _findings(blob_id, judged, failing):
            listed(kind, entry)
            bad.append((blob_id, entry["node"], state))

    silent: set[str] = set()
    confirmations = Confirmations(catalog, pool, silent, verdict, confirm_concurrency, keep_going)
    try:
        for blob_id in sorted(await referenced_blob_ids(catalog)):
            if not keep_going() or confirmations.failed:
                break
            try:
                blob = await catalog.get_blob(blob_id)
            except catalog_errors.NotFound:
                await confirmations.put(blob_id, NO_RECORD)
                continue
            report["blobs_checked"] += 1
            if not blob.sealed:
                continue  # a live upload's current blob: its session is the authority
            checked, unknown, suspects = _suspects(blob, held, failing, silent)
            report["replicas_checked"] += checked
            report["unknown"] += unknown
            if suspects and not await confirmations.add(blob, suspects):
                break
    except Exception:
        await _wind_down(confirmations)
        raise
    await confirmations.finish()
    if silent.difference(failing):
        # Listed, then silent when a copy was confirmed: reported, not judged.
        # (A failing server silent so is reported failing: its copies unknown.)
        report["unreachable_nodes"] = sorted(set(listing.unreachable) | silent.difference(failing))
    found: dict[str, tuple[list[Garbage], int]] = {}
    for node in held:
        if not keep_going():
            break
        if node in silent:
            continue
        found[node] = await gc.find_garbage(node)
    report.update(_garbage(gc, found, {blob_id for blob_id, _, _ in bad}))
    report["under_replicated"] = await catalog.count_under_replicated()
    report["problems"] = (
        counts["missing"]
        + counts["wrong"]
        + report["orphans"]
        + report["strays"]
        - report["strays_waiting"]
        + report["under_replicated"]
        + len(failing)
        + counts["erred"]
    )
    report["_bad"] = bad
    return report


async def fsck(
    catalog,
    pool: StoragePool,
    repairer: Repairer,
    gc: GarbageCollector,
    fix: bool = False,
    progress: Progress | None = None,
    keep_going: Callable[[], bool] = lambda: True,
) -> dict[str, Any]:
    """Check, and with ``fix`` repair what was found; fire with the report
    (partial if ``keep_going`` stopped it: nothing after that point was
    fixed).  ``keep_going`` stays false once false (``jobs.LeaseCheck``)."""

    async def report(stage: dict[str, Any]) -> None:
        if progress is not None:
            result = progress(stage)
            if result is not None:
                await result

    await report({"phase": "checking"})
    found = await check(catalog, pool, gc, keep_going)
    bad = found.pop("_bad")
    if not fix or not keep_going():
        return found
    found["marked"] = 0
    for blob_id, node, state in bad:
        if not keep_going():
            return found
        await catalog.mark_replica(blob_id, node, state)
        found["marked"] += 1

    async def repair_progress(stats: dict[str, Any]) -> None:
        await report({"phase": "repairing", **stats})

    found["repair"] = await repairer.run_pass(
        now=True, progress=repair_progress, keep_going=keep_going
    )
    if not keep_going():
        return found
    await report({"phase": "collecting"})
    found["gc"] = await gc.sweep(grace=0.0, keep_going=keep_going)
    if keep_going():
        # That sweep had no grace: no stray waits out one now (the ones
        # the check counted waiting are deleted, ``gc.strays_deleted``).
        found["strays_waiting"] = 0
        found["strays_collected_after"] = None
    found["under_replicated"] = await catalog.count_under_replicated()
    return found


async def audit(
    catalog,
    pool: StoragePool,
    gc: GarbageCollector,
    keep_going: Callable[[], bool] = lambda: True,
) -> int:
    """The periodic part of fsck: mark replicas that are missing (a scrub
    quarantined them, a disk was replaced) or wrong, so the next repair pass
    re-copies them.  Deletes nothing.  Returns how many were marked.

    ``keep_going`` (the maintenance lease, latched by the caller) is asked
    through the check and before each mark: a front end that lost the
    lease meanwhile marks nothing more, as fsck's ``--fix`` does, since the
    new holder's repair may be copying those very blobs."""
    found = await check(catalog, pool, gc, keep_going)
    marked = 0
    for blob_id, node, state in found["_bad"]:
        if not keep_going():
            log.info("audit: stopped, the maintenance lease was lost ({n} marked)", n=marked)
            break
        await catalog.mark_replica(blob_id, node, state)
        marked += 1
    if marked:
        log.warn("audit: {n} replicas missing or wrong, marked for repair", n=marked)
    return marked

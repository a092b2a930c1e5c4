"""Run one build on a worker: claim it, build and push its images, then record the outcome and the release."""

from __future__ import annotations

import logging
import time

from rack import events, logconfig, objects, registry, releases
from rack.builds import queue
from rack.context import Rack
from rack.errors import BuildError, BuildPlatformError, Busy, RackError, Unavailable
from rack.logs.masking import Masker, secret_values
from rack.logs.stream import BuildLog
from rack.pipeline import folders
from rack.pipeline.steps import BuildRun, Output, open_engine
from rack.pipeline.watch import Watch
from rack.reasons import Reason
from rack.sql import apps as apps_sql
from rack.sql import builds as sql

log = logging.getLogger(__name__)


class _Lost(Exception):
    """The build was ended by someone else (cancel, reaper) before this worker could finish it."""


class Waiting(Exception):
    """Builds wait, but every one of their apps runs as many builds as it may: try again shortly."""


def run_next(rack: Rack, *, process: str, park: float = 0.0, poll: float = 0.5) -> dict | None:
    """Claim the next build in the fair order (`rack.builds.queue`) and run it to its end; return its row.

    None when no build waits. While builds wait but their apps are at their limit, look again every
    `poll` seconds for up to `park` seconds (a build of another app may come), then raise Waiting.
    """
    deadline = time.monotonic() + park
    while True:
        with rack.db.transaction() as conn:
            row = queue.claim_next(conn, process=process, app_max_running=rack.settings.app_max_running)
            if row is None and not queue.waiting(conn):
                return None
            app = apps_sql.get(conn, name=row["app"]) if row is not None else None
        if row is not None:
            timeout = int((app or {}).get("build_timeout") or rack.settings.build_timeout)
            return _claimed(rack, row, timeout, process=process)
        if time.monotonic() + poll > deadline:
            raise Waiting
        time.sleep(poll)


def run_build(rack: Rack, build_id: str, *, process: str) -> dict | None:
    """Run a `created` build to its end and return its final row; None when it is not this worker's to run."""
    claimed = claim(rack, build_id, process=process)
    if claimed is None:
        return None
    row, timeout = claimed
    return _claimed(rack, row, timeout, process=process)


def _claimed(rack: Rack, row: dict, timeout: int, *, process: str) -> dict | None:
    """Run a build this worker has claimed to its end.

    Whatever goes wrong once the build is claimed, it ends with a recorded outcome: an unexpected error
    becomes `platform:internal` (traceback in this process's log), never a build left `running`.
    """
    with logconfig.build_context(row["id"], process.rpartition(":")[2]):
        log.info("build %s of app %s started (attempt %s)", row["id"], row["app"], row.get("attempt", 1))
        try:
            done = _run(rack, row, timeout, process=process)
        except Exception as exc:
            log.exception("build %s: recording its outcome failed", row["id"])
            done = _last_resort(rack, row, f"{type(exc).__name__}: {exc}", process=process)
        if done is not None:
            log.info("build %s ended %s %s", row["id"], done["status"], done["reason"])
    events.build_ended(rack, done, promoted=bool(done and done.get("promoted")))
    if done is not None:
        _drop_source(rack, done)
    return done


def _drop_source(rack: Rack, row: dict) -> None:
    """Delete a finished build's uploaded source (under the app's `tmp/`), unless RACK_KEEP_SOURCES."""
    url = row.get("source_url") or ""
    if rack.settings.keep_sources or not url.startswith(f"object://{row['app']}/tmp/"):
        return
    try:
        app, key = objects.parse_url(url)
        rack.store.delete(f"{app}/{key}")
    except Exception:  # a source left behind is only disk; the build's outcome stands
        log.warning("build %s: its source %s could not be deleted", row["id"], url, exc_info=True)


def _run(rack: Rack, row: dict, timeout: int, *, process: str) -> dict | None:
    build_id = row["id"]
    settings = rack.settings
    build_log = BuildLog(rack.redis, build_id, masker=Masker(secret_values({}, [settings.registry_password])))
    out = Output(build_log, max_bytes=settings.log_max_bytes)
    try:
        return _watched(rack, row, out, timeout, process=process)
    finally:
        out.discard()


def _watched(rack: Rack, row: dict, out: Output, timeout: int, *, process: str) -> dict | None:
    build_id = row["id"]
    watch = Watch(rack, build_id=build_id, process=process, timeout=timeout)
    run: BuildRun | None = None
    error: BuildError | None = None
    # The watch heartbeats until the outcome is recorded: storing the log can take a while, and a build
    # that looks silent meanwhile would be reaped as worker-lost.
    with watch:
        folder = folders.make(rack, build_id)
        try:
            with open_engine(rack, scratch=folder) as engine:
                watch.on_stop(engine.interrupt)
                run = BuildRun(rack, row, folder / "src", out, engine, watch)
                run.run()
        except BuildError as exc:
            error = exc
        except RackError as exc:  # Postgres, Redis or the store went away mid-build
            error = BuildPlatformError(Reason.UNAVAILABLE, exc.message)
        except Exception as exc:
            log.exception("build %s failed unexpectedly", build_id)
            error = BuildPlatformError(Reason.INTERNAL, f"{type(exc).__name__}: {exc}")
        except BaseException as exc:  # the worker is stopping: leave the build failed, not running
            error = BuildPlatformError(Reason.INTERRUPTED, f"the worker stopped ({type(exc).__name__})")
            _fail(rack, row, out, watch.stopped or error, process=process, run=run)
            raise
        finally:
            folders.remove(folder)
        if error is not None:
            # Once the build was told to stop, what failed next (a killed step) is a consequence.
            return _fail(rack, row, out, watch.stopped or error, process=process, run=run)
        assert run is not None  # no error: the run was made and ran
        return _complete(rack, row, out, run, process=process)


def _last_resort(rack: Rack, row: dict, message: str, *, process: str) -> dict | None:
    """Fail the build with `platform:internal`, recording nothing else that could be refused again."""
    reason = storable(Reason.INTERNAL(message))
    try:
        done = _record(
            rack, lambda conn: sql.finish(conn, id=row["id"], status="failed", reason=reason, process=process)
        )
        BuildLog(rack.redis, row["id"]).end("failed", ttl=rack.settings.log_stream_ttl)
    except Exception:
        log.exception("build %s: even its failure could not be recorded", row["id"])
        return None
    return done


def promoting(conn, row: dict) -> bool:
    """Whether a completing build promotes its release: asked for, and its app is not locked."""
    if not (row["options"] or {}).get("promote"):
        return False
    app = apps_sql.get(conn, name=row["app"], lock=True)
    return app is not None and not app["locked"]


def storable(text: str, *, limit: int = 4096) -> str:
    """Return text that Postgres can hold (no NUL), cut to `limit` characters."""
    text = text.replace("\x00", "\\x00")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def claim(rack: Rack, build_id: str, *, process: str) -> tuple[dict, int] | None:
    """Mark a `created` build `running` for this worker; return it with its timeout, or None if taken.

    A webhook's builds run in the order of their pushes: one made while an earlier build of the same
    webhook has not ended raises Busy, and its task tries again later.
    """
    with rack.db.transaction() as conn:
        row = sql.get_by_id(conn, id=build_id)
        if row is None or row["status"] != "created":
            return None
        if row["webhook"]:
            earlier = sql.earlier_unfinished(
                conn, webhook=row["webhook"], id=build_id, started=row["started"]
            )
            if earlier is not None:
                raise Busy(f"build {build_id} waits for build {earlier['id']} of the same webhook to end")
        row = sql.mark_running(conn, id=build_id, process=process)
        if row is None:
            return None
        app = apps_sql.get(conn, name=row["app"])
    timeout = (app or {}).get("build_timeout") or rack.settings.build_timeout
    return row, int(timeout)


def _store_log(rack: Rack, row: dict, out: Output) -> str:
    try:
        return objects.store_build_log(rack, row["app"], row["id"], out.close())
    except Exception as exc:  # a lost log must never leave the build `running`: record it without one
        expected = isinstance(exc, (RackError, OSError))
        log.warning("build %s: the log could not be stored: %s", row["id"], exc, exc_info=not expected)
        return ""


def _end_stream(rack: Rack, out: Output, status: str) -> None:
    try:
        out.build_log.end(status, ttl=rack.settings.log_stream_ttl)
    except RackError as exc:
        log.warning("build %s: the log stream could not be ended: %s", out.build_log.build_id, exc)


def _record(rack: Rack, step):
    """Run a final transaction, retrying while Postgres is away (up to half the heartbeat timeout)."""
    deadline = time.monotonic() + rack.settings.heartbeat_timeout / 2
    delay = 0.5
    while True:
        try:
            with rack.db.transaction() as conn:
                return step(conn)
        except Unavailable:
            if time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def _complete(rack: Rack, row: dict, out: Output, run: BuildRun, *, process: str) -> dict | None:
    """Store the log, then create the release and mark the build complete in one transaction."""
    start = time.monotonic()  # the "release" phase: storing the log and recording the release
    fields: dict = {
        "logs": _store_log(rack, row, out),
        "images": run.images,
        "entrypoint": run.entrypoint or "",
        "inputs": run.inputs,
    }
    fields.update(log_lines=out.lines, log_bytes=out.size)

    def finish(conn) -> dict:
        release = releases.create_in(conn, app=row["app"], build=row["id"])
        phases = dict(run.phases.as_dict(), release=round(time.monotonic() - start, 3))
        done = sql.finish(
            conn,
            id=row["id"],
            status="complete",
            fields={**fields, "release": release["id"], "phases": phases},
            process=process,
        )
        if done is None:
            raise _Lost  # roll the release back: whoever ended the build decided its outcome
        if promoting(conn, row):  # asked for by a push webhook: release and promote at once
            apps_sql.set_release(conn, name=row["app"], release=release["id"])
            done["promoted"] = True  # for the release:promote event, once this commits
        return done

    try:
        done = _record(rack, finish)
    except _Lost:
        log.warning("build %s was ended elsewhere before it could complete", row["id"])
        return None
    except RackError as exc:
        error = BuildPlatformError(Reason.UNAVAILABLE, f"recording the finished build: {exc.message}")
        return _fail(rack, row, out, error, process=process, run=run)
    _end_stream(rack, out, "complete")
    return done


def _fail(rack: Rack, row: dict, out: Output, error: BuildError, *, process: str, run: BuildRun | None):
    """Log the error, store the log, mark the build failed with the error's reason, end the stream."""
    if error.code == Reason.LOST:  # whoever ended the build logged why and stored the log
        out.close()
        return None
    reason = storable(out.build_log.masker.mask(error.reason))
    fields: dict = {"images": {}}  # a failed build has no images, even those it pushed before failing
    if run is not None:
        fields["phases"] = run.phases.as_dict()
    if not out.closed:
        out.line(f"ERROR: {error.message}")
        fields["logs"] = _store_log(rack, row, out)
    fields.update(log_lines=out.lines, log_bytes=out.size)

    def finish(conn) -> dict | None:
        return sql.finish(conn, id=row["id"], status="failed", reason=reason, fields=fields, process=process)

    try:
        done = _record(rack, finish)
    except RackError as exc:
        log.warning("build %s failed (%s) and could not be recorded: %s", row["id"], error.reason, exc)
        return None
    if done is not None:
        _end_stream(rack, out, "failed")
        if run is not None and run.images:
            registry.remove_build_tags(rack.settings, row["app"], row["id"])
    return done

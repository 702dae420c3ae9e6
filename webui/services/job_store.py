"""The job history: every job the queue runs, recorded in SQLite in the data dir so it survives a restart.

One connection (standard library ``sqlite3``, WAL mode) guarded by a lock serves every thread. The schema is
versioned with ``PRAGMA user_version``; each version has its migration function. Recording is best effort: a
database error is logged and never raised into the job worker, so a broken history never costs a generation. A
file that is not a readable database is moved aside (``studio.sqlite3.corrupt-<time>``) and a fresh one made.

Images a job was given (img2img's init images and mask) are saved as PNGs under ``inputs_dir/<job id>/`` so a
reopened job gets them back; results keep their output paths and a small PNG thumbnail.
"""

from __future__ import annotations

import builtins
import dataclasses
import io
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from pydantic import BaseModel

from webui.atomic import atomic_write_bytes
from webui.services.merging import MergeResult
from webui.services.style import StyleTransferResult
from webui.services.upscaling import ExtrasResult
from webui.types import CheckpointInfo, GenerationResult

log = logging.getLogger(__name__)

THUMBNAIL_SIZE = 256  # px, the longer side
UNFINISHED = ("queued", "running", "paused")
INTERRUPTED_MESSAGE = "The server stopped before this job finished."


@dataclass(frozen=True)
class JobRecord:
    """One job as the history keeps it. ``request`` holds the request's fields without its images."""

    id: str
    kind: str
    status: str
    priority: int = 0
    request: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    device: str | None = None
    error: str | None = None
    result: dict[str, Any] | None = None
    thumbnail: bytes | None = None
    input_images: list[str] = field(default_factory=list)

    @property
    def prompt(self) -> str:
        return str(self.request.get("prompt") or "")


# --- schema -----------------------------------------------------------------------------------------------

def _v1(db: sqlite3.Connection) -> None:
    db.execute("""
        CREATE TABLE jobs (
            id           TEXT PRIMARY KEY,
            kind         TEXT NOT NULL,
            status       TEXT NOT NULL,
            priority     INTEGER NOT NULL DEFAULT 0,
            request      TEXT NOT NULL DEFAULT '{}',  -- JSON: the request's fields, prompt included
            created_at   REAL NOT NULL,               -- epoch seconds
            started_at   REAL,
            finished_at  REAL,
            device       TEXT,
            error        TEXT,
            result       TEXT,                        -- JSON: paths, seeds, infotexts, warnings, model
            thumbnail    BLOB,                        -- PNG, at most 256 px
            input_images TEXT NOT NULL DEFAULT '[]'   -- JSON list of saved input PNG paths
        )""")
    db.execute("CREATE INDEX jobs_created_at ON jobs (created_at)")


# Index i migrates a database from version i to i + 1. Append, never edit: users' files are at every version.
MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_v1,)
SCHEMA_VERSION = len(MIGRATIONS)

_COLUMNS = ("id", "kind", "status", "priority", "request", "created_at", "started_at", "finished_at", "device",
            "error", "result", "thumbnail", "input_images")


class JobStore:
    def __init__(self, path: Path, inputs_dir: Path):
        self._path = Path(path)
        self._inputs_dir = Path(inputs_dir)
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        try:
            self._db = self._open()
        except sqlite3.OperationalError as exc:  # e.g. an unwritable data dir, a newer schema: the server still runs
            log.error("Job history disabled: cannot open %s: %s", self._path, exc)
        except sqlite3.DatabaseError as exc:  # not a database, or a damaged one
            self._move_aside(exc)
            try:
                self._db = self._open()
            except sqlite3.Error as again:
                log.error("Job history disabled: cannot create %s: %s", self._path, again)
        except OSError as exc:
            log.error("Job history disabled: cannot open %s: %s", self._path, exc)

    @property
    def path(self) -> Path:
        return self._path

    @property
    def available(self) -> bool:
        return self._db is not None

    def _open(self) -> sqlite3.Connection:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit (isolation_level=None): each statement is its own transaction unless BEGIN says otherwise.
        db = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None, timeout=10)
        try:
            if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("integrity check failed")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # with WAL: durable at checkpoints, never corrupt
            self._migrate(db)
        except BaseException:
            db.close()
            raise
        return db

    def _migrate(self, db: sqlite3.Connection) -> None:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            # A newer Stable Studio wrote this file: reading it with the old schema could lose data.
            raise sqlite3.OperationalError(f"schema version {version} is newer than this program's "
                                           f"({SCHEMA_VERSION}); not touching it")
        for index in range(version, SCHEMA_VERSION):
            db.execute("BEGIN IMMEDIATE")
            try:
                MIGRATIONS[index](db)
                db.execute(f"PRAGMA user_version = {index + 1}")
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            log.info("Job history %s: schema version %d", self._path, index + 1)

    def _move_aside(self, exc: Exception) -> None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = self._path.with_name(f"{self._path.name}.corrupt-{stamp}")
        log.error("Job history %s is not a readable database (%s); moved it to %s and started a new one",
                  self._path, exc, target.name)
        for suffix in ("", "-wal", "-shm"):
            source = Path(f"{self._path}{suffix}")
            try:
                if source.exists():
                    source.replace(Path(f"{target}{suffix}"))
            except OSError as err:
                log.error("Could not move %s aside: %s", source, err)

    def _write(self, what: str, sql: str, params: Iterable[Any]) -> None:
        try:
            with self._lock:  # the check inside: close() may run on another thread
                if self._db is None:
                    return
                self._db.execute(sql, tuple(params))
        except sqlite3.Error as exc:  # never into the worker: a broken history must not fail the job
            log.error("Job history: could not record %s: %s", what, exc)

    # --- what the queue calls -------------------------------------------------------------------------------

    def submitted(self, job_id: str, kind: str, request: BaseModel | None, priority: int,
                  created_at: float) -> None:
        fields, images = _split_request(request)
        try:
            saved = self._save_inputs(job_id, images)
        except (OSError, ValueError) as exc:  # a full disk, or a mode PNG cannot hold: the job still runs
            log.error("Job history: could not save the input images of job %s: %s", job_id, exc)
            saved = []
        self._write(f"job {job_id}", "INSERT OR REPLACE INTO jobs (id, kind, status, priority, request, created_at, "
                    "input_images) VALUES (?, ?, 'queued', ?, ?, ?, ?)",
                    (job_id, kind, int(priority), _json(fields), float(created_at), json.dumps(saved)))

    def started(self, job_id: str, started_at: float, device: str) -> None:
        self._write(f"the start of job {job_id}",
                    "UPDATE jobs SET status = 'running', started_at = ?, device = ? WHERE id = ?",
                    (float(started_at), str(device), job_id))

    def set_status(self, job_id: str, status: str) -> None:
        self._write(f"the status of job {job_id}", "UPDATE jobs SET status = ? WHERE id = ?", (status, job_id))

    def finished(self, job_id: str, status: str, finished_at: float, result: object = None,
                 error: str | None = None) -> None:
        try:
            summary, thumbnail = result_summary(result)
        except Exception:  # noqa: BLE001 - an odd result must not fail the worker
            log.exception("Job history: could not summarise the result of job %s", job_id)
            summary, thumbnail = None, None
        self._write(f"the end of job {job_id}",
                    "UPDATE jobs SET status = ?, finished_at = ?, result = ?, thumbnail = ?, error = ? WHERE id = ?",
                    (status, float(finished_at), None if summary is None else _json(summary), thumbnail, error,
                     job_id))

    def mark_unfinished_interrupted(self) -> int:
        """At start-up: jobs a dead process left queued, running or paused become "interrupted"."""
        marks = ",".join("?" * len(UNFINISHED))
        try:
            with self._lock:
                if self._db is None:
                    return 0
                cursor = self._db.execute(
                    f"UPDATE jobs SET status = 'interrupted', finished_at = ?, error = COALESCE(error, ?) "
                    f"WHERE status IN ({marks})", (time.time(), INTERRUPTED_MESSAGE, *UNFINISHED))
                count = cursor.rowcount
        except sqlite3.Error as exc:
            log.error("Job history: could not mark unfinished jobs: %s", exc)
            return 0
        if count:
            log.info("Job history: %d job(s) the last run left unfinished are marked interrupted", count)
        return count

    # --- reads --------------------------------------------------------------------------------------------

    def get(self, job_id: str) -> JobRecord | None:
        rows = self._read(f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE id = ?", (job_id,))
        return _record(rows[0]) if rows else None

    def list(self, limit: int = 50, offset: int = 0, kinds: tuple[str, ...] | None = None) -> builtins.list[JobRecord]:
        """Newest first."""
        where, params = "", []
        if kinds:
            where = f"WHERE kind IN ({','.join('?' * len(kinds))})"
            params.extend(kinds)
        rows = self._read(f"SELECT {', '.join(_COLUMNS)} FROM jobs {where} ORDER BY created_at DESC, rowid DESC "
                          f"LIMIT ? OFFSET ?", (*params, max(0, int(limit)), max(0, int(offset))))
        return [_record(row) for row in rows]

    def _read(self, sql: str, params: tuple) -> builtins.list[tuple]:
        try:
            with self._lock:
                if self._db is None:
                    return []
                return self._db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            log.error("Job history: could not read: %s", exc)
            return []

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                try:
                    self._db.close()
                except sqlite3.Error as exc:
                    log.error("Job history: closing %s: %s", self._path, exc)
                self._db = None

    def _save_inputs(self, job_id: str, images: dict[str, Image.Image]) -> builtins.list[str]:
        saved = []
        for name, image in images.items():
            buffer = io.BytesIO()
            image.save(buffer, format="PNG", compress_level=4)
            target = self._inputs_dir / job_id / f"{name}.png"
            atomic_write_bytes(target, buffer.getvalue())
            saved.append(str(target))
        return saved


# --- conversions ------------------------------------------------------------------------------------------

def _json(value: Any) -> str:
    return json.dumps(value, default=str, ensure_ascii=False)


def _split_request(request: object) -> tuple[dict[str, Any], dict[str, Image.Image]]:
    """A request's plain fields, and its images by file stem (``init_images`` -> ``init_images-0``)."""
    if request is None:
        return {}, {}
    if isinstance(request, BaseModel):
        values = {name: getattr(request, name) for name in type(request).model_fields}
    elif dataclasses.is_dataclass(request) and not isinstance(request, type):
        values = {f.name: getattr(request, f.name) for f in dataclasses.fields(request)}
    else:
        return {"request": str(request)}, {}
    fields: dict[str, Any] = {}
    images: dict[str, Image.Image] = {}
    for name, value in values.items():
        if isinstance(value, BaseModel):  # a batch's template: its settings are the job's settings
            nested, _ = _split_request(value)
            fields.update({key: item for key, item in nested.items() if key not in values})
        elif isinstance(value, Image.Image):
            images[name] = value
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, Image.Image) for v in value):
            images.update((f"{name}-{i}", v) for i, v in enumerate(value))
        else:
            fields[name] = value if isinstance(value, (str, int, float, bool, type(None))) else json.loads(
                _json(value))
    return fields, images


def _thumbnail(image: Image.Image | None) -> bytes | None:
    if image is None:
        return None
    small = image.convert("RGB")
    small.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    buffer = io.BytesIO()
    small.save(buffer, format="PNG")
    return buffer.getvalue()


def result_summary(result: object) -> tuple[dict[str, Any] | None, bytes | None]:
    """What the history keeps of a job's result: a JSON-able dict and a thumbnail of the first image."""
    if result is None:
        return None, None
    if isinstance(result, GenerationResult):
        summary = {"paths": [str(p) for p in result.paths], "seeds": list(result.seeds),
                   "infotexts": list(result.infotexts), "warnings": list(result.warnings),
                   "model": result.model_name, "model_hash": result.model_hash,
                   "images": len(result.images), "interrupted": bool(result.interrupted)}
        return summary, _thumbnail(result.images[0] if result.images else None)
    if isinstance(result, StyleTransferResult):
        path = result.path
        summary = {"paths": [str(path)] if path else [], "seeds": [], "infotexts": [result.infotext],
                   "warnings": list(result.warnings), "model": result.model, "images": 1}
        return summary, _thumbnail(result.image)
    if isinstance(result, ExtrasResult):
        summary = {"paths": [str(p) for p in result.paths if p], "seeds": [], "infotexts": list(result.infotexts),
                   "warnings": list(result.warnings), "images": len(result.infotexts)}
        return summary, _thumbnail(result.images[0] if result.images else None)
    if isinstance(result, MergeResult):
        return {"checkpoint": result.title, "paths": [str(result.path)], "keys": result.keys,
                "bytes": result.bytes}, None
    if isinstance(result, CheckpointInfo):
        return {"checkpoint": result.title, "model": result.model_name, "model_hash": result.short_hash}, None
    return {"type": type(result).__name__, "summary": str(result)[:500]}, None


def _record(row: tuple) -> JobRecord:
    values = dict(zip(_COLUMNS, row))
    return JobRecord(
        id=values["id"], kind=values["kind"], status=values["status"], priority=values["priority"] or 0,
        request=_loads(values["request"], {}), created_at=values["created_at"], started_at=values["started_at"],
        finished_at=values["finished_at"], device=values["device"], error=values["error"],
        result=_loads(values["result"], None), thumbnail=values["thumbnail"],
        input_images=_loads(values["input_images"], []))


def _loads(text: str | None, default: Any) -> Any:
    if text is None:
        return default
    try:
        return json.loads(text)
    except ValueError:
        return default

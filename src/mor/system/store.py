"""State that must outlive the process — per-expert statistics and the feedback log — in SQLite (WAL, transactions).

Several processes may share one file (`mor serve --workers N`, a `mor route ask` beside a server). A save adds what
this process counted since its previous save (`calls = calls + ?`) instead of writing its own totals, so no process
overwrites another's counts. The latency EWMA is an estimate, not a count: the last process that measured a call
writes its own, and its sample count is saved so that a restarted process blends new calls into it. With
`save_every_s`, statistics that `changed` are also saved that long after, on the event loop that changes them (so
a save never reads them half-updated), and a crash loses at most that much.
"""

import asyncio
import logging
import sqlite3
import threading
import time
from pathlib import Path

from mor.errors import MorError
from mor.system.stats import ExpertStats

log = logging.getLogger("mor.system")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS expert_stats (
    name TEXT PRIMARY KEY, calls INTEGER NOT NULL, successes INTEGER NOT NULL, failures INTEGER NOT NULL,
    errors INTEGER NOT NULL, latency_ewma_s REAL NOT NULL, latency_samples INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, expert TEXT NOT NULL, success INTEGER NOT NULL,
    request TEXT);
"""
_COUNTS = ("calls", "successes", "failures", "errors", "latency_samples")
_NOTHING = (0, 0, 0, 0, 0, 0.0)  # what is saved of an expert the file has no row for
_ADD = """
INSERT INTO expert_stats (name, calls, successes, failures, errors, latency_samples, latency_ewma_s)
VALUES (?, ? - ?, ? - ?, ? - ?, ? - ?, ? - ?, ?)
ON CONFLICT(name) DO UPDATE SET calls = calls + excluded.calls, successes = successes + excluded.successes,
    failures = failures + excluded.failures, errors = errors + excluded.errors,
    latency_samples = latency_samples + excluded.latency_samples,
    latency_ewma_s = CASE WHEN ? THEN excluded.latency_ewma_s ELSE latency_ewma_s END
"""


def _snapshot(stats: ExpertStats) -> tuple:
    """The persisted part of one expert's statistics: its counts, then its latency EWMA."""
    return (*(getattr(stats, c) for c in _COUNTS), stats.latency_ewma_s)


def _increments(name: str, now: tuple, saved: tuple) -> list:
    """`_ADD`'s parameters: each count as (now, saved), subtracted in SQL; the EWMA, and whether it moved."""
    counts = [value for pair in zip(now[:-1], saved[:-1], strict=True) for value in pair]
    return [name, *counts, now[-1], now[-1] != saved[-1]]


class StateStore:
    """One SQLite file; every write is one transaction, so a crash leaves the last committed state intact.

    A store serves one system: it remembers what it saved of the statistics `load` returned, to add only what is new.
    """

    def __init__(self, path: str | Path, save_every_s: float | None = None) -> None:
        self.path, self.save_every_s = Path(path), save_every_s
        self._lock = threading.RLock()
        self._saved: dict[str, tuple] = {}
        self._later: tuple[asyncio.AbstractEventLoop, asyncio.TimerHandle] | None = None
        try:
            if str(path) != ":memory:":
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
            self._migrate()
        except (sqlite3.Error, OSError) as e:
            raise MorError(f"state file {path}: cannot open it as SQLite ({e}); point state.path to a writable "
                           "file or remove the damaged one") from e

    def _columns(self) -> set[str]:
        return {row[1] for row in self._db.execute("PRAGMA table_info(expert_stats)")}

    def _migrate(self) -> None:
        """Add `latency_samples` to a file saved before it was kept; its EWMA then counts as `calls` samples."""
        if "latency_samples" in self._columns():
            return
        with self._transaction():
            if "latency_samples" not in self._columns():  # another process may have added it meanwhile
                self._db.execute("ALTER TABLE expert_stats ADD COLUMN latency_samples INTEGER NOT NULL DEFAULT 0")
                self._db.execute("UPDATE expert_stats SET latency_samples = calls")

    def load(self) -> dict[str, ExpertStats]:
        """Saved statistics by expert name (in-flight counts and cooldowns start fresh); later saves add to them."""
        with self._lock:
            rows = self._db.execute("SELECT name, calls, successes, failures, errors, latency_samples, latency_ewma_s"
                                    " FROM expert_stats").fetchall()
            self._saved = {name: tuple(values) for name, *values in rows}
            return {name: ExpertStats(calls=c, successes=s, failures=f, errors=e, latency_samples=n,
                                      latency_ewma_s=lat) for name, c, s, f, e, n, lat in rows}

    def save(self, stats: dict[str, ExpertStats]) -> None:
        """Add every expert's increments since the previous save in one transaction (all of them or none)."""
        with self._lock:
            now = {name: _snapshot(s) for name, s in list(stats.items())}
            changed = {name: values for name, values in now.items() if values != self._saved.get(name, _NOTHING)}
            if not changed:
                return
            with self._transaction():
                self._db.executemany(_ADD, [_increments(name, values, self._saved.get(name, _NOTHING))
                                            for name, values in changed.items()])
            self._saved.update(changed)

    def changed(self, stats: dict[str, ExpertStats]) -> None:
        """Note, from the running event loop, that `stats` moved: they are saved `save_every_s` later on that loop,
        unless a save is already due (one whose loop has closed is not: it never ran)."""
        if self.save_every_s is None or (self._later is not None and not self._later[0].is_closed()):
            return
        loop = asyncio.get_running_loop()
        self._later = (loop, loop.call_later(self.save_every_s, self._save_later, stats))

    def _save_later(self, stats: dict[str, ExpertStats]) -> None:
        """The save `changed` set up; a failure is logged, and its increments wait for the next save."""
        self._later = None
        try:
            self.save(stats)
        except (MorError, sqlite3.Error) as e:
            log.warning("state file %s: periodic save failed (%s); trying again after the next call", self.path, e)

    def record_feedback(self, expert: str, success: bool, request: str | None) -> None:
        with self._transaction():
            self._db.execute("INSERT INTO feedback (time, expert, success, request) VALUES (?, ?, ?, ?)",
                             (time.time(), expert, int(success), request))

    def feedback(self) -> list[tuple[str, bool, str | None]]:
        """The feedback log, oldest first: (expert, success, request text)."""
        with self._lock:
            rows = self._db.execute("SELECT expert, success, request FROM feedback ORDER BY id").fetchall()
        return [(e, bool(s), r) for e, s, r in rows]

    def _transaction(self) -> "_Transaction":
        return _Transaction(self._db, self._lock, self.path)

    def close(self) -> None:
        """Drop a save still due (without a last save: `MoRSystem.aclose` saves) and close the file."""
        if self._later is not None:
            self._later[1].cancel()
            self._later = None
        self._db.close()


class _Transaction:
    """BEGIN … COMMIT, or ROLLBACK when the block raises; one writer at a time within the process."""

    def __init__(self, db: sqlite3.Connection, lock: threading.RLock, path: Path) -> None:
        self.db, self.lock, self.path = db, lock, path

    def __enter__(self) -> None:
        self.lock.acquire()
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            self.lock.release()
            raise MorError(f"state file {self.path}: cannot write ({e}); is another process holding it?") from e

    def __exit__(self, kind, value, tb) -> None:
        try:
            self.db.execute("COMMIT" if kind is None else "ROLLBACK")
        except sqlite3.Error as e:
            raise MorError(f"state file {self.path}: cannot commit ({e}); nothing of this write was kept") from e
        finally:
            self.lock.release()

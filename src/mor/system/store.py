"""State that must outlive the process — per-expert statistics and the feedback log — in SQLite (WAL, transactions)."""

import sqlite3
import threading
import time
from pathlib import Path

from mor.errors import MorError
from mor.system.stats import ExpertStats

_SCHEMA = """
CREATE TABLE IF NOT EXISTS expert_stats (
    name TEXT PRIMARY KEY, calls INTEGER NOT NULL, successes INTEGER NOT NULL, failures INTEGER NOT NULL,
    errors INTEGER NOT NULL, latency_ewma_s REAL NOT NULL);
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, expert TEXT NOT NULL, success INTEGER NOT NULL,
    request TEXT);
"""


class StateStore:
    """One SQLite file; every write is one transaction, so a crash leaves the last committed state intact."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            if str(path) != ":memory:":
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock = threading.Lock()
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as e:
            raise MorError(f"state file {path}: cannot open it as SQLite ({e}); point state.path to a writable "
                           "file or remove the damaged one") from e

    def load(self) -> dict[str, ExpertStats]:
        """Saved statistics by expert name (in-flight counts and cooldowns start fresh)."""
        rows = self._db.execute("SELECT name, calls, successes, failures, errors, latency_ewma_s FROM expert_stats")
        return {name: ExpertStats(calls=c, successes=s, failures=f, errors=e, latency_ewma_s=lat)
                for name, c, s, f, e, lat in rows}

    def save(self, stats: dict[str, ExpertStats]) -> None:
        """Write every expert's counters in one transaction."""
        with self._transaction():
            self._db.executemany(
                "INSERT INTO expert_stats VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET"
                " calls=excluded.calls, successes=excluded.successes, failures=excluded.failures,"
                " errors=excluded.errors, latency_ewma_s=excluded.latency_ewma_s",
                [(n, s.calls, s.successes, s.failures, s.errors, s.latency_ewma_s) for n, s in stats.items()])

    def record_feedback(self, expert: str, success: bool, request: str | None) -> None:
        with self._transaction():
            self._db.execute("INSERT INTO feedback (time, expert, success, request) VALUES (?, ?, ?, ?)",
                             (time.time(), expert, int(success), request))

    def feedback(self) -> list[tuple[str, bool, str | None]]:
        """The feedback log, oldest first: (expert, success, request text)."""
        rows = self._db.execute("SELECT expert, success, request FROM feedback ORDER BY id")
        return [(e, bool(s), r) for e, s, r in rows]

    def _transaction(self) -> "_Transaction":
        return _Transaction(self._db, self._lock, self.path)

    def close(self) -> None:
        self._db.close()


class _Transaction:
    """BEGIN … COMMIT, or ROLLBACK when the block raises; one writer at a time within the process."""

    def __init__(self, db: sqlite3.Connection, lock: threading.Lock, path: Path) -> None:
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

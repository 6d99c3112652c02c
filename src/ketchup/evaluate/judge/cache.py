"""A persistent SQLite cache of the judge's raw answers.

The key is a SHA-256 over (judge model, base_url, prompt-template version, decoding parameters,
the full request messages), so a rerun sends nothing already answered, a changed template or
prompt re-asks only what changed, and switching the judge never reuses another judge's answers.
Each answer is committed as it arrives (WAL journal), so an interrupted run loses no answered
judgment. Only answers are stored, with the prompt and model for inspection: never the API key.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    base_url TEXT,
    template_version TEXT NOT NULL,
    decoding TEXT NOT NULL,
    messages TEXT NOT NULL,
    answer TEXT NOT NULL,
    usage TEXT,
    created REAL NOT NULL
)
"""


def cache_key(
    *,
    model: str,
    base_url: str | None,
    template_version: str,
    decoding: dict[str, Any],
    messages: list[dict[str, str]],
) -> str:
    payload = {
        "model": model,
        "base_url": base_url,
        "template_version": template_version,
        "decoding": decoding,
        "messages": messages,
    }
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class JudgeCache:
    """key -> raw answer. Used from one thread (the runner's main thread)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(SCHEMA)
        self._db.commit()

    def get(self, key: str) -> str | None:
        row = self._db.execute("SELECT answer FROM answers WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def get_many(self, keys: list[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        keys = list(dict.fromkeys(keys))
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            marks = ",".join("?" * len(chunk))
            query = f"SELECT key, answer FROM answers WHERE key IN ({marks})"
            found.update(self._db.execute(query, chunk).fetchall())
        return found

    def put(
        self,
        key: str,
        answer: str,
        *,
        model: str,
        base_url: str | None,
        template_version: str,
        decoding: dict[str, Any],
        messages: list[dict[str, str]],
        usage: dict[str, Any] | None = None,
    ) -> None:
        """Store one answer and commit at once."""
        self._db.execute(
            "INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                key,
                model,
                base_url,
                template_version,
                json.dumps(decoding, sort_keys=True),
                json.dumps(messages, ensure_ascii=False),
                answer,
                None if usage is None else json.dumps(usage, sort_keys=True),
                time.time(),
            ),
        )
        self._db.commit()

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> JudgeCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def cached_keys(path: str | Path, keys: list[str]) -> set[str]:
    """Which of `keys` an existing cache file holds, without creating one (for dry runs)."""
    path = Path(path)
    if not path.is_file():
        return set()
    with JudgeCache(path) as cache:
        return set(cache.get_many(keys))

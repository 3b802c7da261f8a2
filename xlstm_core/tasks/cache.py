"""Resumable experiments: finished runs are appended to a JSON-lines file and skipped when the sweep restarts."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def fingerprint(config: Any) -> str:
    """A short stable hash of a JSON-serialisable config."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]


class ResultCache:
    """Records keyed by a dict of run identifiers; path=None keeps nothing (every run executes)."""

    def __init__(self, path: Path | str | None):
        self.path = None if path is None else Path(path)
        self._records: dict[str, Any] = {}
        if self.path is not None and self.path.exists():
            for line in self.path.read_text().splitlines():
                if line.strip():
                    entry = json.loads(line)
                    self._records[entry["key"]] = entry["record"]

    @staticmethod
    def _key(key: dict[str, Any]) -> str:
        return json.dumps(key, sort_keys=True, default=str)

    def get(self, key: dict[str, Any]) -> Any | None:
        return self._records.get(self._key(key))

    def put(self, key: dict[str, Any], record: Any) -> None:
        self._records[self._key(key)] = record
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            line = (json.dumps({"key": self._key(key), "record": record}) + "\n").encode()
            with self.path.open("ab", buffering=0) as f:  # one append-mode write: processes may share the file
                f.write(line)

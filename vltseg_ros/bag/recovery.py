"""Access to a bag's raw messages: rosbags' Reader for intact bags, and recovery of storage files it cannot open.

A recorder killed mid-write leaves an mcap file without its footer and index, or a db3 file cut short. Those are
read sequentially (the mcap library's stream reader; sqlite3 with its file-size check relaxed) up to the damage,
which then surfaces as BagError, so a reader keeps every frame before it.
"""
from __future__ import annotations

import logging
import sqlite3
import struct
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, Iterator

import apsw
import yaml
from mcap.exceptions import McapError
from mcap.records import Channel, DataEnd, Footer, Message, Schema
from mcap.stream_reader import StreamReader
from rosbags.image import ImageError
from rosbags.rosbag2 import Reader, ReaderError

from .topics import STORAGE_SUFFIXES, BagError

logger = logging.getLogger(__name__)

# What rosbags (apsw for sqlite3), sqlite3, the mcap and CDR decoders and the image decoders raise on damaged data (a
# short read surfaces as TypeError from ord(b"") or as struct.error; a garbled length as ValueError or IndexError).
STORAGE_DAMAGE = (ReaderError, apsw.Error, sqlite3.Error, McapError, OSError, EOFError, struct.error, ValueError,
                  IndexError, TypeError, KeyError, ImageError)


def read_metadata(path: Path) -> dict:
    """The bag's metadata.yaml contents ({} for a bare storage file or unreadable metadata)."""
    try:
        with open(path / "metadata.yaml", encoding="utf-8") as f:
            return (yaml.safe_load(f) or {}).get("rosbag2_bagfile_information") or {}
    except (OSError, yaml.YAMLError, AttributeError):
        return {}


def storage_files(path: Path) -> list[Path]:
    """The storage file itself, or those in a bag directory."""
    if path.is_file():
        return [path]
    return sorted(p for p in path.iterdir() if p.suffix in STORAGE_SUFFIXES)


def open_reader(path: Path) -> Reader:
    """An open rosbags Reader; a directory whose metadata.yaml is missing or broken (a killed recorder writes
    none) is read through its single storage file."""
    if not path.exists():
        raise BagError(f"bag not found: {path}")
    candidates = [path]
    if path.is_dir():
        files = storage_files(path)
        candidates += files if len(files) == 1 else []
    errors: list[str] = []
    for candidate in candidates:
        try:
            reader = Reader(candidate)
            reader.open()
        except STORAGE_DAMAGE as exc:
            message = str(exc).rstrip(".")
            errors += [message] if message not in errors else []
            continue
        if candidate is not path:
            logger.warning("%s: %s; reading %s directly", path, errors[0], candidate.name)
        return reader
    raise BagError(f"cannot open bag {path}: {'; '.join(errors)}")


class _ReaderSource:
    """Messages of an intact bag in bag-timestamp order, through rosbags."""

    def __init__(self, reader: Reader):
        self.reader = reader
        self.topics = {name: info.msgtype for name, info in reader.topics.items()}

    def messages(self, topics: set[str]) -> Iterator[tuple[str, int, bytes]]:
        """(topic, bag timestamp ns, CDR bytes) of ``topics``."""
        connections = [c for c in self.reader.connections if c.topic in topics]
        if connections:  # rosbags reads every topic when given none
            for connection, timestamp, raw in self.reader.messages(connections=connections):
                yield connection.topic, timestamp, raw

    def close(self) -> None:
        """Close the reader."""
        self.reader.close()


class _McapScanSource:
    """Messages of mcap files whose footer or index is unreadable, in file order, read record by record from the
    start with the mcap library's stream reader (chunks decompressed, CRCs checked); the walk ends with BagError at
    the damage (or after the data, naming why the index was unusable)."""

    def __init__(self, files: list[Path], reason: str):
        self.files = files
        self.reason = reason
        self.topics: dict[str, str] = {}
        # A pre-pass collects the channels (rosbags writes them lazily, inside chunks) so the camera is known up front.
        try:
            for _ in self._walk(self.topics.__setitem__):
                pass
        except (BagError, *STORAGE_DAMAGE) as exc:
            if not self.topics:
                raise BagError(f"{reason}; no readable channel records: {exc}") from exc
            # otherwise the message pass meets the same damage and reports it

    def _walk(self, on_channel) -> Iterator[tuple[str, int, bytes]]:
        """(topic, log time, data) of every message; ``on_channel(topic, schema name)`` per channel."""
        for path in self.files:
            with open(path, "rb") as f:
                schemas: dict[int, str] = {}
                channels: dict[int, str] = {}
                try:
                    for record in StreamReader(f, validate_crcs=True).records:
                        if isinstance(record, (DataEnd, Footer)):  # the summary after the data repeats, never adds
                            break
                        if isinstance(record, Schema):
                            schemas[record.id] = record.name
                        elif isinstance(record, Channel):
                            channels[record.id] = record.topic
                            on_channel(record.topic, schemas.get(record.schema_id, ""))
                        elif isinstance(record, Message):
                            yield channels.get(record.channel_id, ""), record.log_time, record.data
                    else:
                        raise BagError(f"{path.name} ends without an MCAP footer (truncated)")
                except McapError as exc:
                    raise BagError(f"{path.name}: {type(exc).__name__} {exc} (truncated or corrupt)") from exc

    def messages(self, topics: set[str]) -> Iterator[tuple[str, int, bytes]]:
        """(topic, log time ns, CDR bytes) of ``topics``; always ends with BagError, as the file is damaged."""
        for topic, timestamp, raw in self._walk(lambda *_: None):
            if topic in topics:
                yield topic, timestamp, raw
        raise BagError(f"index unreadable ({self.reason}); all records were recovered by a sequential scan")

    def close(self) -> None:
        """Nothing to release: files are closed as each walk ends."""


class _Sqlite3ScanSource:
    """Messages of db3 files that rosbags cannot open, in insertion order, through sqlite3 with its file-size check
    relaxed; the scan ends with BagError at the damage (or after the data, naming why rosbags failed)."""

    def __init__(self, files: list[Path], reason: str):
        self.files = files
        self.reason = reason
        self.topics: dict[str, str] = {}
        for path in files:
            with closing(self._connect(path)) as db:
                try:
                    self.topics.update(db.execute("SELECT name, type FROM topics").fetchall())
                except sqlite3.DatabaseError as exc:
                    raise BagError(f"{reason}; topics table of {path.name} unreadable: {exc}") from exc

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        # SQLite refuses a file shorter than the page count in its header unless the schema is writable (a flag
        # that changes nothing on a read-only connection); then the pages that are there can be read.
        db.execute("PRAGMA writable_schema=ON")
        return db

    def messages(self, topics: set[str]) -> Iterator[tuple[str, int, bytes]]:
        """(topic, bag timestamp ns, CDR bytes) of ``topics``; always ends with BagError, as the file is damaged."""
        for path in self.files:
            with closing(self._connect(path)) as db:
                try:
                    names = {i: name for i, name in db.execute("SELECT id, name FROM topics") if name in topics}
                    for topic_id, timestamp, data in db.execute(
                            "SELECT topic_id, timestamp, data FROM messages ORDER BY id"):
                        if topic_id in names:
                            yield names[topic_id], timestamp, data
                except sqlite3.DatabaseError as exc:
                    raise BagError(f"{path.name}: {exc}") from exc
        raise BagError(f"{self.reason}; all rows were recovered by a table scan")

    def close(self) -> None:
        """Nothing to release: connections are closed as each scan ends."""


_RECOVERY = {".mcap": _McapScanSource, ".db3": _Sqlite3ScanSource}


@contextmanager
def open_messages(path: Path) -> Iterator[Any]:
    """Context manager over a bag's raw messages (``.topics``; ``.messages(topics)`` yields (topic, bag time ns,
    CDR bytes) and ends with BagError on damage): rosbags' Reader, or a recovery scan of storage files that rosbags
    cannot open (a killed recorder's truncated .mcap/.db3)."""
    try:
        source: Any = _ReaderSource(open_reader(path))
    except BagError as exc:
        suffixes = {f.suffix for f in storage_files(path)} if path.exists() else set()
        if len(suffixes) != 1 or next(iter(suffixes)) not in _RECOVERY:
            raise
        logger.warning("%s; recovering what is readable", exc)
        source = _RECOVERY[suffixes.pop()](storage_files(path), str(exc))
    try:
        yield source
    finally:
        source.close()

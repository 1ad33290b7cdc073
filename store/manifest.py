"""The manifest of a store folder: ``manifest.json``, a derived cache of every segment's
video table (:class:`SegmentIndex`), keyed by the segment's size and mtime.

It is never the source of truth: :mod:`store.reader` rescans a segment the manifest does not
list or lists with another size or mtime, and ignores a manifest of another schema or whose
checksum does not match its content. :mod:`store.writer` rewrites it after each commit.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.files import atomic_write
from store.records import StoreMeta
from store.schema import SCHEMA_VERSION

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


@dataclass
class SegmentIndex:
    """A segment's video table: names, splits and, per table, (V, 2) int64 row ranges."""

    file: str
    size: int
    mtime_ns: int
    videos: list[str]
    splits: list[str]
    ranges: dict[str, np.ndarray] = field(default_factory=dict)
    compat: str = ""  # hash of the segment's StoreMeta.compatibility()

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "size": self.size, "mtime_ns": self.mtime_ns, "videos": self.videos,
                "splits": self.splits, "ranges": {t: r.tolist() for t, r in self.ranges.items()},
                "compat": self.compat}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "SegmentIndex":
        return cls(d["file"], d["size"], d["mtime_ns"], list(d["videos"]), list(d["splits"]),
                   {t: np.asarray(r, dtype=np.int64).reshape(-1, 2) for t, r in d["ranges"].items()},
                   d.get("compat", ""))


def compat_hash(meta: StoreMeta) -> str:
    return hashlib.sha256(json.dumps(meta.compatibility(), sort_keys=True).encode()).hexdigest()[:16]


def manifest_checksum(segments: list[dict[str, Any]]) -> int:
    """CRC-32C of the manifest's segment list (canonical JSON): an edit by hand that does not
    recompute it makes readers ignore the manifest."""
    import google_crc32c

    return int(google_crc32c.value(json.dumps(segments, sort_keys=True).encode()))


def read_manifest(folder: Path) -> dict[str, SegmentIndex]:
    """The manifest's entries by file; {} when it is absent, unreadable, of another schema, or
    edited (its checksum does not match): readers then scan the segments."""
    p = folder / MANIFEST
    try:
        d = json.loads(p.read_text())
        if d.get("schema_version") != SCHEMA_VERSION:
            return {}
        if d.get("checksum") != manifest_checksum(d["segments"]):
            log.warning("%s: its checksum does not match its content (edited?): ignored, the segments are scanned",
                        p)
            return {}
        return {s["file"]: SegmentIndex.from_json(s) for s in d["segments"]}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("%s: unreadable: ignored, the segments are scanned", p)
        return {}


def manifest_temp_name(tag: str = "") -> str:
    """The temporary name :func:`write_manifest` writes under, in this process."""
    return f"{MANIFEST}.{tag or 'w'}.tmp-{os.getpid()}"


def write_manifest(folder: Path, meta: StoreMeta, segments: Iterable[SegmentIndex], tag: str = "") -> None:
    """Write ``manifest.json`` whole or not at all (:func:`~common.files.atomic_write`, under
    :func:`manifest_temp_name`, which the writer's lock records)."""
    listed = [s.to_json() for s in segments]
    d = {"schema_version": SCHEMA_VERSION, "meta": meta.to_dict(), "segments": listed,
         "checksum": manifest_checksum(listed)}
    with atomic_write(folder / MANIFEST, "w", tmp=folder / manifest_temp_name(tag)) as fh:
        json.dump(d, fh)

"""Installed models: content-addressed slots and one atomic "active" pointer per channel.

Layout under ``<cache_dir>/models/<model>/``::

    slots/<sha256>/<file name>        a verified model file (name = target's last segment)
    slots/<sha256>/slot.json          what it is (version, variant, format, target)
    slots/.tmp-<uuid>/                an install in progress (removed on the next install)
    channels/<channel>.json           {"current": entry, "previous": entry | null, "etag"}
    channels/<channel>.checking.json  present only while a load check runs

Install = rename the staged file into a fresh slot (same file system, so atomic), load-
check it in place, then replace the pointer file atomically. The pointer never names a
model that failed its check, so "switch back to the previous model" is the state the
device is already in. If the process dies *during* the load check (a runtime crash on a
hostile or broken file), the marker survives and the next cycle treats that artifact as
failed instead of crashing again. The previous model's slot is kept as the fallback and
as the base for delta patches; slots that no channel points to are garbage-collected.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from ._download import file_sha256
from ._store import atomic_write_json, fsync_dir, read_json
from ._types import LocalModel
from .errors import LocalStorageError, ModelLoadError

__all__ = ["Installer"]

LoadCheck = Callable[[Path, str, str, str], None]  # (path, format, target, model name)


def _entry_to_model(name: str, channel: str, slot_file: Path,
                    entry: dict[str, Any]) -> LocalModel:
    return LocalModel(
        name=name, channel=channel, path=slot_file, version=int(entry["version"]),
        variant=str(entry["variant"]), format=str(entry["format"]),
        sha256=str(entry["sha256"]), size=int(entry["length"]),
        release_counter=int(entry["release_counter"]), arm=entry.get("arm"),
        experiment=entry.get("experiment"))


class Installer:
    """Owns ``<cache_dir>/models``; callers hold the per-model lock."""

    def __init__(self, models_dir: Path, load_check: LoadCheck) -> None:
        self._dir = models_dir
        self._load_check = load_check

    # -- reading -------------------------------------------------------------------

    def _model_dir(self, name: str) -> Path:
        return self._dir / name

    def _pointer_path(self, name: str, channel: str) -> Path:
        return self._model_dir(name) / "channels" / f"{channel}.json"

    def _marker_path(self, name: str, channel: str) -> Path:
        return self._model_dir(name) / "channels" / f"{channel}.checking.json"

    def pointer(self, name: str, channel: str) -> dict[str, Any]:
        data = read_json(self._pointer_path(name, channel))
        return data if isinstance(data, dict) else {}

    def slot_file(self, name: str, entry: dict[str, Any]) -> Path:
        return self._model_dir(name) / "slots" / entry["sha256"] / entry["file"]

    def current(self, name: str, channel: str) -> LocalModel | None:
        """The active model, if its file is present with the right size.

        Sizes are checked on every call (cheap); the hash was checked at install time.
        """
        entry = self.pointer(name, channel).get("current")
        if not isinstance(entry, dict):
            return None
        try:
            path = self.slot_file(name, entry)
            if path.stat().st_size != int(entry["length"]):
                return None
            return _entry_to_model(name, channel, path, entry)
        except (OSError, KeyError, TypeError, ValueError):
            return None

    def etag(self, name: str, channel: str) -> str | None:
        etag = self.pointer(name, channel).get("etag")
        return etag if isinstance(etag, str) else None

    def find_verified_slot(self, name: str, sha256: str) -> Path | None:
        """A slot file of ``name`` whose bytes hash to ``sha256`` (re-hashed now)."""
        slot = self._model_dir(name) / "slots" / sha256
        meta = read_json(slot / "slot.json")
        if not isinstance(meta, dict) or not isinstance(meta.get("file"), str):
            return None
        path = slot / meta["file"]
        try:
            return path if file_sha256(path) == sha256 else None
        except OSError:
            return None

    # -- crash recovery --------------------------------------------------------------

    def interrupted_check(self, name: str, channel: str) -> str | None:
        """sha256 of an artifact whose load check never finished, clearing the marker."""
        marker = self._marker_path(name, channel)
        data = read_json(marker)
        marker.unlink(missing_ok=True)
        if isinstance(data, dict) and isinstance(data.get("sha256"), str):
            self._drop_unreferenced(name)
            return data["sha256"]
        return None

    # -- writing -------------------------------------------------------------------

    def install(self, name: str, channel: str, source: Path, entry: dict[str, Any],
                etag: str | None, *, move: bool = True) -> LocalModel:
        """Put ``source`` (verified bytes) in its slot, load-check it, then activate it.

        Raises:
            ModelLoadError: the check failed; the previous model stays active.
            LocalStorageError: the cache is not writable.
        """
        try:
            slot_path = self._place(name, source, entry, move=move)
            marker = self._marker_path(name, channel)
            atomic_write_json(marker, {"sha256": entry["sha256"], "at": time.time()})
            try:
                self._load_check(slot_path, entry["format"], entry["target"], name)
            except ModelLoadError:
                marker.unlink(missing_ok=True)
                self._drop_unreferenced(name)
                raise
            self._activate(name, channel, entry, etag)
            marker.unlink(missing_ok=True)
            self._drop_unreferenced(name)
            return _entry_to_model(name, channel, slot_path, entry)
        except OSError as e:
            raise LocalStorageError(f"installing {name}: {e}") from e

    def refresh_current(self, name: str, channel: str, entry: dict[str, Any],
                        etag: str | None) -> LocalModel:
        """Same bytes, newer release (counter, arm...): rewrite the pointer only."""
        pointer = self.pointer(name, channel)
        pointer["current"] = entry
        pointer["etag"] = etag
        atomic_write_json(self._pointer_path(name, channel), pointer)
        return _entry_to_model(name, channel, self.slot_file(name, entry), entry)

    def _place(self, name: str, source: Path, entry: dict[str, Any], *, move: bool) -> Path:
        slots = self._model_dir(name) / "slots"
        slots.mkdir(parents=True, exist_ok=True)
        final = slots / entry["sha256"]
        if final.exists():
            existing = self.find_verified_slot(name, entry["sha256"])
            if existing is not None:
                if move and source != existing:
                    source.unlink(missing_ok=True)
                return existing
            shutil.rmtree(final)  # damaged slot: replace it whole
        tmp = slots / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        target_file = tmp / entry["file"]
        if move:
            os.replace(source, target_file)
        else:
            shutil.copyfile(source, target_file)
        with open(target_file, "rb+") as f:
            os.fsync(f.fileno())
        atomic_write_json(tmp / "slot.json", {k: entry[k] for k in (
            "sha256", "length", "file", "version", "variant", "format", "target")})
        fsync_dir(tmp)
        os.replace(tmp, final)
        fsync_dir(slots)
        return final / entry["file"]

    def _activate(self, name: str, channel: str, entry: dict[str, Any],
                  etag: str | None) -> None:
        pointer = self.pointer(name, channel)
        old = pointer.get("current")
        previous = pointer.get("previous")
        if isinstance(old, dict) and old.get("sha256") != entry["sha256"]:
            previous = old
        new_pointer = {"current": entry, "previous": previous, "etag": etag}
        atomic_write_json(self._pointer_path(name, channel), new_pointer)

    def _referenced(self, name: str) -> set[str]:
        refs: set[str] = set()
        channels = self._model_dir(name) / "channels"
        if channels.is_dir():
            for path in channels.iterdir():
                data = read_json(path) if path.suffix == ".json" else None
                if not isinstance(data, dict):
                    continue
                for key in ("current", "previous"):
                    entry = data.get(key)
                    if isinstance(entry, dict) and isinstance(entry.get("sha256"), str):
                        refs.add(entry["sha256"])
                if isinstance(data.get("sha256"), str):  # a load check in progress
                    refs.add(data["sha256"])
        return refs

    def _drop_unreferenced(self, name: str) -> None:
        slots = self._model_dir(name) / "slots"
        if not slots.is_dir():
            return
        keep = self._referenced(name)
        for path in slots.iterdir():
            if path.name not in keep:
                shutil.rmtree(path, ignore_errors=True)

"""Durability helpers shared by the on-disk stores (blobs, keys, TUF metadata)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["fsync_dir", "fsync_path"]


def fsync_path(path: Path) -> None:
    """Flush a file's contents to disk by path (the writer may already have closed it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Persist a directory entry (a rename or a new file) across a crash."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    try:
        fd = os.open(path, flags)
    except OSError:  # platforms that cannot open directories (Windows) have nothing to sync
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

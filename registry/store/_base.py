"""What every part of the store shares: sessions and the lookups by name.

Each part (catalog, auth, jobs, TUF metadata, telemetry, delivery, experiments) is a
``StoreBase`` subclass that needs nothing but this base, so ``Store`` can list them in any order.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from registry.errors import ModelNotFoundError, VersionNotFoundError
from registry.tables import ModelRow, VersionRow

# The transaction of an enclosing ``StoreBase.atomic()`` block, if any (per thread/context).
_AMBIENT: ContextVar[Session | None] = ContextVar("modeldrop_store_session", default=None)


class StoreBase:
    """Sessions, lookups by name, and the per-process cache of delivery reads, which every
    delivery write (``_invalidates_cache``) of any part resets."""

    _CACHE_LIMIT = 1024  # entries per cache; a full cache is cleared, not grown

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _delivery_changed(self) -> None:
        self._delivery_generation = getattr(self, "_delivery_generation", 0) + 1

    def _cached(self, cache_name: str, key: Any, max_age: float, load: Callable[[], Any]) -> Any:
        if max_age <= 0:
            return load()
        cache = self.__dict__.setdefault(cache_name, {})
        generation = getattr(self, "_delivery_generation", 0)
        hit = cache.get(key)
        now = time.monotonic()
        if hit is not None and hit[0] == generation and hit[1] > now:
            return hit[2]
        value = load()
        if len(cache) >= self._CACHE_LIMIT:
            cache.clear()
        cache[key] = (generation, now + max_age, value)
        return value

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction: committed on success, rolled back on any error. Inside an
        ``atomic()`` block it is that block's transaction, committed when the block ends."""
        ambient = _AMBIENT.get()
        if ambient is not None and ambient.bind is self.engine:
            yield ambient
            return
        with Session(self.engine, expire_on_commit=False) as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    @contextmanager
    def atomic(self) -> Iterator[None]:
        """Every store write inside the block (of any part of the store, and of code such as
        the TUF metadata store that calls the store) commits together at the end, or none
        does. Used where one operation makes several store calls, e.g. a key rotation and
        its audit row."""
        if _AMBIENT.get() is not None:
            yield
            return
        with self.session() as s:
            token = _AMBIENT.set(s)
            try:
                yield
            finally:
                _AMBIENT.reset(token)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def _model(self, s: Session, name: str) -> ModelRow:
        row = s.exec(select(ModelRow).where(ModelRow.name == name)).first()
        if row is None:
            raise ModelNotFoundError(f"model {name!r} does not exist", model=name)
        return row

    def _version(self, s: Session, name: str, number: int) -> tuple[ModelRow, VersionRow]:
        model = self._model(s, name)
        row = s.exec(select(VersionRow).where(VersionRow.model_id == model.id,
                                              VersionRow.number == number)).first()
        if row is None:
            raise VersionNotFoundError(f"model {name!r} has no version {number}",
                                       model=name, version=number)
        return model, row

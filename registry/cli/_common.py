"""Shared CLI plumbing: the API client from the context, error translation, tables."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from functools import wraps
from typing import Any

import click

from registry.api_client import ApiError, RegistryClient


def client(ctx: click.Context) -> RegistryClient:
    root = ctx.find_root().obj or {}
    return RegistryClient(root.get("url") or "http://127.0.0.1:8080", root.get("token"))


def pass_ctx(f: Callable) -> Callable:
    """Passes the click context and turns API errors into clean ``ClickException``s."""

    @click.pass_context
    @wraps(f)
    def wrapper(ctx: click.Context, *args: Any, **kwargs: Any) -> Any:
        try:
            return f(ctx, *args, **kwargs)
        except ApiError as e:
            hint = ""
            if e.code == "unauthenticated":
                hint = " (set MODELDROP_TOKEN or pass --token)"
            raise click.ClickException(f"{e.detail} [{e.code}]{hint}") from e

    return wrapper


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    rows = [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def human_size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)

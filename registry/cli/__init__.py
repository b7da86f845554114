"""`modeldrop`: a thin click layer over the HTTP API (``serve`` and ``worker`` run the server)."""

from __future__ import annotations

import click

from registry.cli import (
    _admin,
    _delivery,
    _device,
    _doctor,
    _example,
    _mirror,
    _registry,
    _reports,
    _serve,
)
from registry.cli._common import pass_ctx  # noqa: F401 - re-exported for command modules

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", envvar="MODELDROP_URL", default="http://127.0.0.1:8080", show_default=True,
              help="Registry base URL (env MODELDROP_URL).")
@click.option("--token", envvar="MODELDROP_TOKEN", default=None,
              help="API token (env MODELDROP_TOKEN).")
@click.pass_context
def main(ctx: click.Context, url: str, token: str | None) -> None:
    """ModelDrop: model registry and over-the-air model delivery."""
    ctx.obj = {"url": url, "token": token}


# _reports attaches `experiment report` to the group that _delivery registers, so it comes last.
for module in (_serve, _registry, _admin, _delivery, _reports, _example, _device, _doctor,
               _mirror):
    module.register(main)

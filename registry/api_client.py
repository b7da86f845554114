"""A small HTTP client for the registry API, used by the CLI (which never touches the database).

Errors come back as ``ApiError`` carrying the server's problem+json ``code``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry


class ApiError(Exception):
    def __init__(self, status: int, code: str, detail: str, body: dict | None = None) -> None:
        super().__init__(f"{detail} ({code}, HTTP {status})")
        self.status, self.code, self.detail, self.body = status, code, detail, body or {}


class StreamingMultipart:
    """A multipart/form-data body generated on the fly with a known length, so a large model
    is sent with Content-Length and never held in memory."""

    CHUNK = 1 << 20

    def __init__(self, fields: list[tuple[str, str]], files: list[tuple[str, Path]],
                 on_bytes: Callable[[int], None]) -> None:
        self.boundary = "modeldrop-" + os.urandom(12).hex()
        self._parts: list[tuple[bytes, Path | None]] = []
        for name, value in fields:
            head = (f"--{self.boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n"
                    f"Content-Type: application/json; charset=utf-8\r\n\r\n").encode()
            self._parts.append((head + value.encode("utf-8") + b"\r\n", None))
        for name, path in files:
            head = (f"--{self.boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; "
                    f"filename=\"{path.name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                    ).encode()
            self._parts.append((head, path))
        self._tail = f"--{self.boundary}--\r\n".encode()
        self._on_bytes = on_bytes
        self._length = sum(len(h) + ((p.stat().st_size + 2) if p else 0) for h, p in self._parts) \
            + len(self._tail)

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def __len__(self) -> int:
        return self._length

    def __iter__(self):
        for head, path in self._parts:
            yield head
            if path is not None:
                with open(path, "rb") as f:
                    while chunk := f.read(self.CHUNK):
                        self._on_bytes(len(chunk))
                        yield chunk
                yield b"\r\n"
        yield self._tail


class RegistryClient:
    def __init__(self, base_url: str, token: str | None = None, timeout: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()
        retry = Retry(total=3, backoff_factor=0.3, status_forcelist=(502, 503, 504),
                      allowed_methods=frozenset({"GET", "HEAD"}))
        self.session.mount("http://", HTTPAdapter(max_retries=retry))
        self.session.mount("https://", HTTPAdapter(max_retries=retry))
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        self.timeout = timeout

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", self.timeout)
        try:
            resp = self.session.request(method, self.base_url + path, **kwargs)
        except requests.ConnectionError as e:
            raise ApiError(0, "connection_failed", f"cannot reach {self.base_url}: {e}") from e
        if resp.status_code >= 400:
            try:
                body = resp.json()
            except ValueError:
                body = {"code": "http_error", "detail": resp.text[:200] or resp.reason}
            raise ApiError(resp.status_code, body.get("code", "http_error"),
                           body.get("detail", resp.reason), body)
        if resp.status_code == 204 or not resp.content:
            return None
        return resp.json()

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, json=body)

    def patch(self, path: str, body: Any) -> Any:
        return self.request("PATCH", path, json=body)

    def upload(self, name: str, model_path: Path, metadata: str | None, eval_path: Path | None,
               on_bytes: Callable[[int], None], version: int | None = None,
               artifacts: list[Path] | tuple[Path, ...] = ()) -> Any:
        """``artifacts``: the engineer's own converted files, attached as ``artifact`` parts."""
        fields: list[tuple[str, str]] = []
        if metadata is not None:
            fields.append(("metadata", metadata))
        if version is not None:
            fields.append(("version", str(version)))
        files = [("file", model_path)] + ([("eval", eval_path)] if eval_path else [])
        files += [("artifact", Path(p)) for p in artifacts]
        body = StreamingMultipart(fields, files, on_bytes)
        return self.request("POST", f"/v1/models/{name}/versions", data=body,
                            headers={"Content-Type": body.content_type}, timeout=None)

    def retry(self, name: str, number: int, metadata: str | None, eval_path: Path | None,
              reason: str = "") -> Any:
        """Re-run the failed conversion of a version, optionally with a new eval set/metadata."""
        fields: list[tuple[str, str]] = [("reason", reason)] if reason else []
        if metadata is not None:
            fields.append(("metadata", metadata))
        body = StreamingMultipart(fields, [("eval", eval_path)] if eval_path else [], lambda n: None)
        return self.request("POST", f"/v1/models/{name}/versions/{number}/retry", data=body,
                            headers={"Content-Type": body.content_type}, timeout=None)

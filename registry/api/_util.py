"""Small helpers shared by the views: services access, JSON bodies, serialisation.

Every JSON document a client sends (request bodies, the upload's ``metadata`` field,
telemetry batches) goes through :func:`loads_strict`: the size is checked before the bytes
are read, the nesting depth before they are parsed (Python's parser recurses, and a
document 900 deep that parses still breaks every later read of it), and the values while
they are parsed: ``NaN``/``Infinity`` (not JSON, silently stored as null before) and
numbers outside the 64-bit integer range (no column holds such an integer; one rule for
every number keeps the OpenAPI document simple and true) are a 400 naming the field.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from flask import current_app, g, jsonify, request, url_for
from pydantic import BaseModel

from registry.errors import BodyTooLargeError, ValidationError
from registry.services import current_services

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
# A JSON string (escapes included); what is left outside strings is structure and scalars.
_STRING = re.compile(r'"(?:[^"\\]++|\\.)*+"', re.DOTALL)
_OPENERS = re.compile(r"[\[{]")
_BRACKETS = re.compile(r"[\[\]{}]")


class _Refused:
    """Placed by the parser where a value may not stand; found afterwards to name its field."""

    def __init__(self, why: str) -> None:
        self.why = why


def _depth_ok(text: str, max_depth: int) -> bool:
    if len(_OPENERS.findall(text, 0)) <= max_depth:  # the usual case: cannot be too deep
        return True
    depth = 0
    for m in _BRACKETS.finditer(_STRING.sub("", text)):
        if m.group() in "[{":
            depth += 1
            if depth > max_depth:
                return False
        else:
            depth -= 1
    return True


def _find_refused(value: Any, path: list[str]) -> tuple[str, str] | None:
    stack = [(value, path)]
    while stack:
        v, p = stack.pop()
        if isinstance(v, _Refused):
            return ".".join(p), v.why
        if isinstance(v, dict):
            stack.extend((item, [*p, str(k)]) for k, item in v.items())
        elif isinstance(v, list):
            stack.extend((item, [*p, str(i)]) for i, item in enumerate(v))
    return None


def loads_strict(raw: bytes | str, *, field: str = "body", max_bytes: int | None = None,
                 max_depth: int | None = None,
                 error: type[ValidationError] = ValidationError) -> Any:
    """Parse a client's JSON document within the server's limits.

    Raises:
        BodyTooLargeError: more than ``max_bytes`` (default ``settings.max_json_bytes``).
        ValidationError (or ``error``): not UTF-8 JSON, nested deeper than ``max_depth``
            (default ``settings.max_json_depth``), or holding NaN/Infinity or an integer
            outside 64 bits; ``field`` is the dotted path of the offending value.
    """
    settings = current_services().settings
    max_bytes = settings.max_json_bytes if max_bytes is None else max_bytes
    max_depth = settings.max_json_depth if max_depth is None else max_depth
    if len(raw) > max_bytes:
        raise BodyTooLargeError(f"the {field} is larger than {max_bytes} bytes", limit=max_bytes)
    try:
        text = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw
    except UnicodeDecodeError as e:
        raise error(f"the {field} is not UTF-8", field=field) from e
    if not _depth_ok(text, max_depth):
        raise error(f"the {field} is nested deeper than {max_depth} levels", field=field,
                    max_depth=max_depth)
    refused = False

    def refuse(why: str) -> _Refused:
        nonlocal refused
        refused = True
        return _Refused(why)

    def parse_int(s: str) -> Any:
        if len(s) > 20:  # longer than any 64-bit integer; int() of 5,000 digits is refused too
            return refuse("is an integer outside the 64-bit range")
        value = int(s)
        return value if INT64_MIN <= value <= INT64_MAX else refuse("is an integer outside the 64-bit range")

    def parse_float(s: str) -> Any:
        value = float(s)
        if not math.isfinite(value) or not INT64_MIN <= value <= INT64_MAX:
            return refuse("is a number outside the 64-bit range")
        # 3.0 is the integer 3 in JSON (and JSON Schema): a version number may be sent so.
        return int(value) if value.is_integer() and abs(value) < 2**53 else value

    try:
        data = json.loads(text, parse_int=parse_int, parse_float=parse_float,
                          parse_constant=lambda c: refuse(f"is {c}, which JSON does not allow"))
    except (ValueError, RecursionError) as e:
        detail = f": {e.msg} at line {e.lineno} column {e.colno}" if isinstance(e, json.JSONDecodeError) else ""
        raise error(f"the {field} is not valid JSON{detail}", field=field) from e
    if refused:
        where, why = _find_refused(data, []) or (field, "is refused")
        raise error(f"{where or field} {why}", field=where or field)
    return data


def body_bytes() -> bytes:
    """The request body, refused unread when it declares (or turns out) larger than
    ``settings.max_json_bytes``; read once per request."""
    if "json_raw" not in g:
        limit = current_services().settings.max_json_bytes
        if request.content_length is not None and request.content_length > limit:
            raise BodyTooLargeError(f"the body is larger than {limit} bytes", limit=limit)
        raw = request.stream.read(limit + 1)
        if len(raw) > limit:
            raise BodyTooLargeError(f"the body is larger than {limit} bytes", limit=limit)
        g.json_raw = raw
    return g.json_raw


def json_body() -> dict[str, Any]:
    if not request.is_json:
        raise ValidationError("the request body must be a JSON object", field="body")
    data = loads_strict(body_bytes())
    if not isinstance(data, dict):
        raise ValidationError("the request body must be a JSON object", field="body")
    return data


def cursor_arg(name: str = "cursor") -> int | None:
    """A page cursor: the ``next_cursor`` a list gave, a non-negative 64-bit integer."""
    raw = request.args.get(name)
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 19 and int(raw) <= INT64_MAX):
        raise ValidationError(f"{name!r} must be the value of next_cursor", field=name)
    return int(raw)


def dump(obj: Any) -> Any:
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    if isinstance(obj, (list, tuple)):
        return [dump(o) for o in obj]
    if isinstance(obj, dict):
        return {k: dump(v) for k, v in obj.items()}
    return obj


def respond(obj: Any, status: int = 200, **headers: str):
    resp = jsonify(dump(obj))
    resp.status_code = status
    resp.headers.update(headers)
    return resp


def int_arg(name: str, default: int, lo: int, hi: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        if not raw.isascii() or len(raw) > 20:  # int() takes "²" and 5,000 digits badly
            raise ValueError(raw)
        value = int(raw)
    except ValueError as e:
        raise ValidationError(f"query parameter {name!r} must be an integer", field=name) from e
    if not lo <= value <= hi:
        raise ValidationError(f"query parameter {name!r} must be between {lo} and {hi}", field=name)
    return value


def bool_arg(name: str, default: bool) -> bool:
    raw = request.args.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value not in ("1", "true", "0", "false"):
        raise ValidationError(f"query parameter {name!r} must be true or false", field=name)
    return value in ("1", "true")


def artifact_url(sha256: str, public: bool = True) -> str:
    """Download URL of an artifact; a confidential one (``public`` false) never names the CDN:
    it needs the reader's token, which a shared cache must not see or answer for."""
    settings = current_services().settings
    base = (settings.cdn_base_url if public else None) or settings.public_base_url
    if base:
        return f"{base.rstrip('/')}/v1/artifacts/{sha256}"
    if not _HEX64.fullmatch(sha256):
        return url_for("artifacts.get_artifact", sha256=sha256, _external=True)
    # url_for costs ~0.03 ms a call on the manifest path; for a hex digest (nothing to quote)
    # its answer is a prefix that depends only on the request's scheme, host and script root
    key = (request.scheme, request.host, request.script_root,
           current_app.config.get("SERVER_NAME"), current_app.config.get("PREFERRED_URL_SCHEME"))
    prefix = _ARTIFACT_PREFIXES.get(key)
    if prefix is None:
        prefix = url_for("artifacts.get_artifact", sha256="0" * 64, _external=True)[:-64]
        if len(_ARTIFACT_PREFIXES) >= 64:  # the Host header is the client's: bounded
            _ARTIFACT_PREFIXES.clear()
        _ARTIFACT_PREFIXES[key] = prefix
    return prefix + sha256


_HEX64 = re.compile(r"[0-9a-f]{64}")
_ARTIFACT_PREFIXES: dict[tuple, str] = {}

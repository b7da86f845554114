"""The OpenAPI document describes every route the app serves."""

from __future__ import annotations

import re


def test_every_route_is_in_openapi(app, anon_api):
    doc = anon_api.get("/openapi.json").get_json()
    assert doc["openapi"].startswith("3.")
    paths = doc["paths"]
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        assert path in paths, f"{path} missing from /openapi.json"
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            op = paths[path][method.lower()]
            assert op["summary"], f"{method} {path} has no summary"
            assert "default" in op["responses"]


def test_every_route_has_a_written_description(app):
    from registry.api.meta import DESCRIPTIONS

    missing = sorted({r.endpoint for r in app.url_map.iter_rules()
                      if r.endpoint != "static" and not r.endpoint.startswith("web.")}
                     - set(DESCRIPTIONS))
    assert not missing, f"add these endpoints to registry.api.meta.DESCRIPTIONS: {missing}"


def test_every_route_is_in_the_http_api_doc(app):
    """docs/http-api.md names each route as `METHOD /path` (or `GET|HEAD /path`); parameter
    names may differ from the URL map's ({n} for <int:number>), so only their places count."""
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "http-api.md").read_text()
    documented = {(method, re.sub(r"\{\w+\}", "{}", path))
                  for methods, path in re.findall(r"`((?:GET|HEAD|POST|PUT|PATCH|DELETE)"
                                                  r"(?:\|(?:GET|HEAD|POST|PUT|PATCH|DELETE))*) "
                                                  r"(/[^`\s?]*)`", text)
                  for method in methods.split("|")}
    missing = sorted(f"{method} {rule.rule}" for rule in app.url_map.iter_rules()
                     if rule.endpoint != "static"
                     for method in rule.methods - {"HEAD", "OPTIONS"}
                     if (method, re.sub(r"<(?:\w+:)?\w+>", "{}", rule.rule)) not in documented)
    assert not missing, f"add these routes to docs/http-api.md: {missing}"


def test_schemas_are_resolvable(anon_api):
    doc = anon_api.get("/openapi.json").get_json()
    text = str(doc)
    for ref in set(re.findall(r"#/components/schemas/(\w+)", text)):
        assert ref in doc["components"]["schemas"], ref
    assert doc["paths"]["/v1/models/{name}/versions"]["post"]["x-required-role"] == "publisher"

"""Tests of the HTTP API's OpenAPI 3 schema (``/api/schema/``) and its Swagger UI
(``/api/docs/``): the schema is valid OpenAPI, describes every ``/api/`` URL the server
routes (and nothing else), generates without a warning, and the UI needs no CDN."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.core.management import call_command
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from drf_spectacular.validation import validate_schema

pytestmark = pytest.mark.django_db


@pytest.fixture
def schema(client: Client) -> dict[str, Any]:
    """The schema as ``SpectacularAPIView`` serves it, without a credential."""
    response = client.get("/api/schema/?format=json")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/vnd.oai.openapi+json")
    body: dict[str, Any] = response.json()
    return body


def api_routes(patterns: list[URLPattern | URLResolver] | None = None, prefix: str = "") -> Iterator[str]:
    """Every URL pattern of ``config/urls.py`` under ``/api/``, written as OpenAPI paths
    (``<int:group_id>`` → ``{group_id}``)."""
    for pattern in get_resolver().url_patterns if patterns is None else patterns:
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            yield from api_routes(pattern.url_patterns, route)
        elif route.startswith("api/"):
            assert not route.startswith("^"), f"a regex pattern under /api/: {route}"
            yield "/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route)


def test_the_schema_is_valid_openapi_3(schema: dict[str, Any]) -> None:
    assert schema["openapi"].startswith("3.")
    validate_schema(schema)


def test_the_yaml_schema_is_the_same_schema(client: Client, schema: dict[str, Any]) -> None:
    response = client.get("/api/schema/")
    assert response["Content-Type"].startswith("application/vnd.oai.openapi")
    assert yaml.safe_load(response.content) == schema


def test_the_schema_describes_every_api_url_and_no_other(schema: dict[str, Any]) -> None:
    routes = set(api_routes())
    assert {"/api/calls/", "/api/calls/live/", "/api/calls/{session_id}/", "/api/schema/", "/api/docs/"} <= routes
    assert set(schema["paths"]) == routes
    for path, operations in schema["paths"].items():
        assert operations, path
        for method, operation in operations.items():
            assert operation["responses"], (path, method)
            assert operation.get("description"), (path, method)


def test_the_schema_generates_without_warnings(tmp_path: Path) -> None:
    out = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))
    assert yaml.safe_load(out.read_text())["paths"]


def test_the_schema_links_to_the_asyncapi_document(client: Client, schema: dict[str, Any]) -> None:
    assert "(/api/asyncapi.json)" in schema["info"]["description"]
    assert schema["externalDocs"]["url"] == "/api/asyncapi.json"
    assert client.get("/api/asyncapi.json").json()["asyncapi"].startswith("3.")


def test_the_calls_api_is_described(schema: dict[str, Any]) -> None:
    paths, components = schema["paths"], schema["components"]["schemas"]
    live = paths["/api/calls/live/"]["get"]
    assert live["responses"]["200"]["content"]["application/json"]["schema"]["items"]["$ref"].endswith("/LiveCall")
    assert set(components["LiveCall"]["properties"]) >= {
        "callRoomId",
        "groupId",
        "callType",
        "startedAt",
        "locked",
        "participants",
    }
    assert set(components["LiveParticipant"]["properties"]) == {
        "socketId",
        "userId",
        "username",
        "displayName",
        "joinedAt",
        "media",
    }
    history = paths["/api/calls/"]["get"]
    assert {p["name"] for p in history["parameters"]} == {"page", "group", "since", "until"}
    assert history["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/PaginatedCallSummaryList"
    )
    detail = paths["/api/calls/{session_id}/"]["get"]
    assert set(detail["responses"]) == {"200", "401", "404"}
    assert {"participants", "rings", "offersRelayed"} <= set(components["CallDetail"]["properties"])
    for operation in (live, history, detail):
        assert {next(iter(s)) for s in operation["security"]} == {"jwtAuth", "cookieAuth"}
    assert paths["/api/asyncapi.json"]["get"]["security"] == []  # public


def test_swagger_ui_is_served_with_its_own_assets(client: Client) -> None:
    response = client.get("/api/docs/")
    assert response.status_code == 200
    page = response.content.decode()
    assert "cdn." not in page and "https://" not in page  # nothing from the internet
    assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', page)
    assert any(asset.endswith("swagger-ui-bundle.js") for asset in assets)
    assert any(asset.endswith("swagger-ui.css") for asset in assets)
    for asset in assets:
        assert client.get(asset).status_code == 200, asset
    script = re.search(r'<script src="(/api/docs/\?[^"]+)"', page)
    init = client.get(script.group(1).replace("&amp;", "&")).content.decode() if script else page
    assert "/api/schema/" in init

"""Tests that the call page and its scripts are served (by WhiteNoise, also with DEBUG off)."""

from __future__ import annotations

import pytest
from django.test import Client


@pytest.fixture
def client() -> Client:
    return Client()


def test_the_call_page_is_served_at_the_root_without_a_session(client: Client) -> None:
    response = client.get("/")
    assert response.status_code == 200
    page = response.content.decode()
    assert '<script type="module" src="/static/calls/call-page.js">' in page
    assert 'id="sign-in-form"' in page


@pytest.mark.parametrize("name", ["signaling.js", "call-page.js", "call-page.css"])
def test_the_page_files_are_served_as_static_files(client: Client, name: str) -> None:
    response = client.get(f"/static/calls/{name}")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/css" if name.endswith(".css") else "text/javascript")
    assert b"".join(response.streaming_content)  # read to the end, which closes the file


def test_signaling_js_is_a_module_exporting_the_client_and_the_mesh(client: Client) -> None:
    response = client.get("/static/calls/signaling.js")
    source = b"".join(response.streaming_content).decode()
    assert "export class SignalingClient" in source
    assert "export class CallMesh" in source
    assert "import " not in source.split("*/", 1)[1], "signaling.js has no dependencies"

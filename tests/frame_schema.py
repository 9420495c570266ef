"""Every server frame a test receives is checked against the protocol's AsyncAPI
document (calls/asyncapi.py): an undeclared event, a missing field or an undeclared one
fails the test. One Draft 2020-12 validator per event, built once per test session."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from calls.asyncapi import CHANNEL, document_json

DOCUMENT_URI = "urn:webrtc-signaling:asyncapi"


class FrameSchemaError(AssertionError):
    """A frame the server sent does not match the schema the document declares for it."""


def server_validators(document: dict[str, Any]) -> dict[str, Draft202012Validator]:
    """A validator of the native frame of each server → client event of ``document``,
    resolving its ``#/components/schemas/…`` references within the document."""
    registry: Registry[Any] = Registry().with_resource(
        DOCUMENT_URI, Resource.from_contents(document, default_specification=DRAFT202012)
    )
    validators: dict[str, Draft202012Validator] = {}
    for key, message in document["channels"][CHANNEL]["messages"].items():
        if not key.startswith("server."):
            continue
        schema = {"$ref": f"{DOCUMENT_URI}#/channels/{CHANNEL}/messages/{key}/payload"}
        validators[message["payload"]["properties"]["event"]["const"]] = Draft202012Validator(schema, registry=registry)
    return validators


@cache
def _validators() -> dict[str, Draft202012Validator]:
    return server_validators(json.loads(document_json()))


def check_frame(frame: Any, validators: dict[str, Draft202012Validator] | None = None) -> None:
    """Raise ``FrameSchemaError`` unless ``frame`` (a decoded native frame) is a server
    event that the document declares, with exactly the declared fields."""
    if validators is None:
        validators = _validators()
    event = frame.get("event") if isinstance(frame, dict) else None
    if not isinstance(event, str):
        raise FrameSchemaError(f"the server sent a frame without a string event: {frame!r}")
    validator = validators.get(event)
    if validator is None:
        raise FrameSchemaError(f"the server sent {event!r}, which the AsyncAPI document does not declare: {frame!r}")
    error = best_match(validator.iter_errors(frame))
    if error is not None:
        raise FrameSchemaError(
            f"the server's {event} frame does not match its declared schema: {error.message}"
            f" at {error.json_path}; frame: {frame!r}"
        )

"""The service's OpenAPI document: FastAPI's, plus the InferRequest schema (the infer route reads its body
itself), ErrorResponse for 422, and the security schemes when an API key is on."""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from . import schemas as S
from .state import is_open_path


def install_openapi(app: FastAPI, api_key: bool) -> None:
    """Make ``app.openapi()`` build (once) the document described above."""

    def custom_openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, summary=app.summary, description=app.description, routes=app.routes
        )
        comps = schema.setdefault("components", {}).setdefault("schemas", {})
        infer_schema = S.InferRequest.model_json_schema(ref_template="#/components/schemas/{model}")
        for key, value in infer_schema.pop("$defs", {}).items():
            comps.setdefault(key, value)
        comps["InferRequest"] = infer_schema
        # FastAPI documents its own 422 body; this service answers 422 with ErrorResponse like every error.
        for ops in schema.get("paths", {}).values():
            for op in ops.values():
                resp = op.get("responses", {}).get("422")
                if resp and "HTTPValidationError" in json.dumps(resp):
                    op["responses"]["422"] = {
                        "description": "Invalid query or path parameter.",
                        "content": {"application/json": {
                            "schema": {"$ref": "#/components/schemas/ErrorResponse"},
                            "example": {"error": "invalid_request", "detail": "query.anomaly_threshold: Input should be a valid number"},
                        }},
                    }  # fmt: skip
        if "HTTPValidationError" not in json.dumps(schema.get("paths", {})):
            comps.pop("HTTPValidationError", None)
            comps.pop("ValidationError", None)
        if api_key:
            schema["components"]["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <key>"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            }
            for path, ops in schema.get("paths", {}).items():
                concrete = path.replace("{name}", "x")
                if not is_open_path(concrete):
                    for op in ops.values():
                        op["security"] = [{"bearer": []}, {"apiKey": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = custom_openapi  # type: ignore[method-assign]

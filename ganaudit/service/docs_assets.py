"""Interactive API docs (`/docs`, `/redoc`) that work without internet access.

FastAPI's defaults load Swagger UI and ReDoc from a CDN, so the pages are blank inside a closed network. The
JavaScript and CSS are served from the installed ``fastapi-offline`` package instead (part of the serve
extra; only its static files are used). Without it, the CDN pages are served as before.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

ASSETS_PATH = "/docs/assets"
_FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png")


def assets_dir() -> Path | None:
    """The folder holding the Swagger UI and ReDoc files, or None when fastapi-offline is not installed."""
    try:
        folder = Path(str(resources.files("fastapi_offline") / "static"))
    except (ModuleNotFoundError, TypeError):
        return None
    return folder if all((folder / f).is_file() for f in _FILES) else None


def add_docs_routes(app: FastAPI, title: str) -> bool:
    """Add ``/docs``, ``/docs/oauth2-redirect`` and ``/redoc`` (create the app with docs_url=None, redoc_url=None).
    Returns True when the pages use local assets, False when they fall back to the CDN."""
    folder = assets_dir()
    local = folder is not None
    if local:
        app.mount(ASSETS_PATH, StaticFiles(directory=str(folder)), name="docs-assets")
    urls = (
        {"swagger_js_url": f"{ASSETS_PATH}/swagger-ui-bundle.js", "swagger_css_url": f"{ASSETS_PATH}/swagger-ui.css",
         "swagger_favicon_url": f"{ASSETS_PATH}/favicon.png"}
        if local else {}
    )  # fmt: skip
    redoc = {"redoc_js_url": f"{ASSETS_PATH}/redoc.standalone.js", "redoc_favicon_url": f"{ASSETS_PATH}/favicon.png"}

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json", title=f"{title} - Swagger UI", oauth2_redirect_url="/docs/oauth2-redirect",
            **urls,
        )  # fmt: skip

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc_ui() -> HTMLResponse:
        return get_redoc_html(openapi_url="/openapi.json", title=f"{title} - ReDoc", **(redoc if local else {}))

    return local

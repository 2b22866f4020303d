"""``/docs`` with the Swagger UI files shipped in the package, not loaded from a CDN.

FastAPI's default page pulls Swagger UI from cdn.jsdelivr.net and its favicon from
fastapi.tiangolo.com: it breaks on an offline or firewalled install and lets a third party serve
script into our origin. This is FastAPI's documented "custom docs UI static assets" recipe
(``docs_url=None``, then our own route with ``get_swagger_ui_html`` pointing at local files), with
the files vendored from npm's ``swagger-ui-dist`` under ``vr3ai/web/static/swagger-ui``.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

SWAGGER_DIR = Path(__file__).resolve().parent.parent / "web" / "static" / "swagger-ui"
SWAGGER_PREFIX = "/static/swagger-ui"


def install_docs(app: FastAPI, docs_url: str = "/docs") -> None:
    """Serve Swagger UI at ``docs_url`` from local files; the app must be made with ``docs_url=None``."""
    app.mount(SWAGGER_PREFIX, StaticFiles(directory=SWAGGER_DIR), name="swagger-ui")
    oauth2_redirect_url = docs_url + "/oauth2-redirect"

    @app.get(docs_url, include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=app.title + " - Swagger UI",
            oauth2_redirect_url=oauth2_redirect_url,
            swagger_js_url=f"{SWAGGER_PREFIX}/swagger-ui-bundle.js",
            swagger_css_url=f"{SWAGGER_PREFIX}/swagger-ui.css",
            swagger_favicon_url=f"{SWAGGER_PREFIX}/favicon-32x32.png",
            # The default validator badge would fetch from validator.swagger.io.
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get(oauth2_redirect_url, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

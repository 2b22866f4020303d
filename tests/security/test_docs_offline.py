"""Item 9 (Low): ``/docs`` loads every asset from this server (it works offline; no CDN)."""

from __future__ import annotations

import re
from pathlib import Path

from tests.web.platform import start_platform

URL_RE = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|url:\s*['"]([^'"]+)['"]""")


async def test_docs_assets_are_local(tmp_path: Path) -> None:
    async with start_platform(tmp_path) as p, p.client() as http:
        page = await http.get("/docs")
        assert page.status_code == 200
        urls = [a or b for a, b in URL_RE.findall(page.text)]
        assert any(u.endswith(".js") for u in urls) and any(u.endswith(".css") for u in urls)
        for url in urls:
            assert url.startswith("/") and not url.startswith("//"), f"/docs loads {url} from elsewhere"
            r = await http.get(url)
            assert r.status_code == 200 and r.content, url
        assert "https://" not in page.text and "http://" not in page.text
        bundle = await http.get(next(u for u in urls if u.endswith(".js")))
        assert "SwaggerUIBundle" in bundle.text and "javascript" in bundle.headers["content-type"]
        # Swagger UI 5+ renders the OpenAPI 3.1 document FastAPI writes (4.x cannot).
        assert (await http.get("/openapi.json")).json()["openapi"].startswith("3.1")
        assert re.search(r'"version":"5\.|version:"5\.|swagger-ui-dist@5|5\.\d+\.\d+', bundle.text)
        assert (await http.get("/docs/oauth2-redirect")).status_code == 200

"""The product page: an HTML shell whose scripts and styles are static files under /static/app/."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Final

from litestar import MediaType, Response, get
from litestar.di import NamedDependency

from entrypoints.service.http.config import HttpConfig

INDEX_HTML: Final = Path(__file__).resolve().parent.parent / "static" / "app" / "index.html"
# The page asks the service whether demo sign-in exists unless told here.
DEV_LOGIN_META: Final = '<meta name="cc-dev-login" content="auto">'


@cache
def _shell() -> str:
    return INDEX_HTML.read_text(encoding="utf-8")


def render_index(*, dev_login_enabled: bool) -> str:
    """The page, telling its script whether `POST /api/dev/login` is there."""
    state = "enabled" if dev_login_enabled else "disabled"
    return _shell().replace(DEV_LOGIN_META, f'<meta name="cc-dev-login" content="{state}">', 1)


@get("/", operation_id="productPage", media_type=MediaType.HTML, include_in_schema=False)
async def index_page(http_config: NamedDependency[HttpConfig]) -> Response[str]:
    """The app: sign-in, Settings → Calendar and Meetings, all in one page with hash routes."""
    return Response(
        render_index(dev_login_enabled=http_config.dev_login_enabled),
        media_type=MediaType.HTML,
        # Always the current shell: it names the scripts of this deployment.
        headers={"Cache-Control": "no-store"},
    )

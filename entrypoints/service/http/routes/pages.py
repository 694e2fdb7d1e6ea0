"""The product page: an HTML shell whose scripts and styles are static files under /static/app/."""

from __future__ import annotations

from functools import cache
from html import escape
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


# The shell names its files from the root; under ROOT_PATH they carry the prefix.
_ROOTED: Final = ('href="/static/', 'src="/static/')
BASE_PATH_META: Final = '<meta name="cc-base-path" content="">'
SANDBOX_META: Final = '<meta name="cc-sandbox-url" content="">'


def render_index(
    *, dev_login_enabled: bool, root_path: str = "", sandbox_url: str | None = None
) -> str:
    """The page, telling its script whether `POST /api/dev/login` is there, its prefix, and
    the local Calendly sandbox (to link its booking page), if any."""
    state = "enabled" if dev_login_enabled else "disabled"
    page = _shell().replace(DEV_LOGIN_META, f'<meta name="cc-dev-login" content="{state}">', 1)
    # root_path is checked at startup (HttpConfig: slashes and URL-safe characters only).
    page = page.replace(BASE_PATH_META, f'<meta name="cc-base-path" content="{root_path}">', 1)
    if sandbox_url:
        shown = escape(sandbox_url, quote=True)
        page = page.replace(SANDBOX_META, f'<meta name="cc-sandbox-url" content="{shown}">', 1)
    for attribute in _ROOTED:
        page = page.replace(attribute, attribute.replace("/static/", root_path + "/static/"))
    return page


@get("/", operation_id="productPage", media_type=MediaType.HTML, include_in_schema=False)
async def index_page(http_config: NamedDependency[HttpConfig]) -> Response[str]:
    """The app: sign-in, Settings → Calendar and Meetings, all in one page with hash routes."""
    return Response(
        render_index(
            dev_login_enabled=http_config.dev_login_enabled,
            root_path=http_config.root_path,
            sandbox_url=http_config.sandbox_url,
        ),
        media_type=MediaType.HTML,
        # Always the current shell: it names the scripts of this deployment.
        headers={"Cache-Control": "no-store"},
    )

"""The product page: served with the CSP, no inline code, and every file it loads is there."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Final

import pytest
from litestar.testing import AsyncTestClient

from entrypoints.service.http.app import STATIC_DIR, create_app
from entrypoints.service.http.middleware import CONTENT_SECURITY_POLICY
from tests.support.http_app import BASE_URL, Api, make_config, services_of

APP_DIR: Final = STATIC_DIR / "app"
# The one import from outside static/app: the JS client the service serves at /client/v1/
# (relative, so that it resolves under any ROOT_PATH).
CLIENT_IMPORT: Final = "../../client/v1/calendly-connect.js"
CLIENT_URL: Final = "/client/v1/calendly-connect.js"
JAVASCRIPT_TYPES: Final = ("text/javascript", "application/javascript")
# `import ... from "./x.js"`, `import "./x.js"`, `export ... from "./x.js"`, `import("./x.js")`.
_IMPORT = re.compile(
    r"""(?:\bimport\s*(?:[\w*{}\s,]+\s*from\s*)?|\bexport\s*[\w*{}\s,]+\s*from\s*|\bimport\s*\(\s*)
        ["']([^"']+)["']""",
    re.VERBOSE,
)


class PageParser(HTMLParser):
    """Every element with its attributes, and the text inside each <script>."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[tuple[dict[str, str | None], str]] = []
        self._script: dict[str, str | None] | None = None
        self._script_text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.elements.append((tag, attributes))
        if tag == "script":
            self._script = attributes
            self._script_text = []

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        if self._script is not None:
            self._script_text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "script" and self._script is not None:
            self.scripts.append((self._script, "".join(self._script_text)))
            self._script = None


def parse(html: str) -> PageParser:
    parser = PageParser()
    parser.feed(html)
    parser.close()
    return parser


def local_resources(page: PageParser) -> list[str]:
    """The files the page loads itself: script sources, stylesheets and icons."""
    found = [attrs["src"] for tag, attrs in page.elements if tag == "script" and attrs.get("src")]
    found += [
        attrs["href"]
        for tag, attrs in page.elements
        if tag == "link" and attrs.get("href") and attrs.get("rel") in ("stylesheet", "icon")
    ]
    return [path for path in found if path is not None]


def module_graph(entry: Path) -> tuple[set[Path], set[str]]:
    """Every JS module of static/app reachable from `entry` through relative imports, and the
    modules imported from outside it (only the served client may be)."""
    seen: set[Path] = set()
    outside: set[str] = set()
    pending = [entry]
    while pending:
        module = pending.pop()
        if module in seen:
            continue
        assert module.is_file(), f"{module.name} is imported but does not exist"
        seen.add(module)
        for specifier in _IMPORT.findall(module.read_text(encoding="utf-8")):
            if specifier == CLIENT_IMPORT and module.parent == APP_DIR.resolve():
                outside.add(specifier)
                continue
            assert specifier.startswith("./"), f"{module.name} imports {specifier!r}"
            pending.append((module.parent / specifier).resolve())
    return seen, outside


async def test_the_page_is_served_at_the_root_with_the_csp_and_no_cache(api: Api) -> None:
    response = await api.client.get("/")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "script-src 'self';" in response.headers["content-security-policy"]
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "<main" in response.text


@pytest.mark.parametrize(("enabled", "state"), [(False, "disabled"), (True, "enabled")])
async def test_the_page_says_whether_demo_sign_in_exists(
    api: Api, enabled: bool, state: str
) -> None:
    app = create_app(services_of(api.core, api.readiness), make_config(dev_login_enabled=enabled))
    async with AsyncTestClient(app=app, base_url=BASE_URL) as client:
        page = parse((await client.get("/")).text)

    [meta] = [attrs for tag, attrs in page.elements if attrs.get("name") == "cc-dev-login"]
    assert meta["content"] == state


async def test_the_page_has_no_inline_code_for_the_csp_to_block(api: Api) -> None:
    page = parse((await api.client.get("/")).text)

    assert page.scripts, "the page loads its script"
    for attrs, body in page.scripts:
        assert attrs.get("src"), "every script is a file"
        assert body.strip() == "", "no inline script"
        assert attrs.get("type") == "module"
    for tag, attrs in page.elements:
        handlers = [name for name in attrs if name.lower().startswith("on")]
        assert not handlers, f"<{tag}> has inline event handlers {handlers}"
        assert "style" not in attrs, f"<{tag}> has an inline style, which the CSP blocks"
        for name in ("href", "src", "action"):
            value = (attrs.get(name) or "").strip().lower()
            assert not value.startswith("javascript:"), f"<{tag} {name}> runs code"
    assert not [tag for tag, _ in page.elements if tag == "style"], "styles come from files"


async def test_the_page_loads_only_its_own_files_under_static_app(api: Api) -> None:
    page = parse((await api.client.get("/")).text)

    resources = local_resources(page)
    assert any(path.endswith(".js") for path in resources)
    assert any(path.endswith(".css") for path in resources)
    for path in resources:
        assert path.startswith("/static/app/"), f"{path} is not one of the app's files"
    for tag, attrs in page.elements:
        for name in ("href", "src"):
            value = attrs.get(name) or ""
            assert not re.match(r"^(?:[a-z]+:)?//", value, re.I), f"<{tag}> loads {value}"


@pytest.mark.parametrize(
    ("path", "types"),
    [
        ("/static/app/app.js", JAVASCRIPT_TYPES),
        ("/static/app/app.css", ("text/css",)),
        ("/static/app/icon.svg", ("image/svg+xml",)),
    ],
)
async def test_the_static_files_are_served_with_their_content_types(
    api: Api, path: str, types: tuple[str, ...]
) -> None:
    response = await api.client.get(path)

    assert response.status_code == 200
    assert response.headers["content-type"].split(";")[0].strip() in types
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_every_module_the_page_imports_exists_and_is_served_as_javascript(
    api: Api,
) -> None:
    page = parse((await api.client.get("/")).text)
    [entry] = [path for path in local_resources(page) if path.endswith(".js")]

    modules, outside = module_graph((STATIC_DIR / entry.removeprefix("/static/")).resolve())

    assert len(modules) > 1, "the entry module imports the others"
    # The page uses the client the service serves to host apps (static/app/ + ../../ = the root).
    assert outside == {CLIENT_IMPORT}
    response = await api.client.get(CLIENT_URL)
    assert response.status_code == 200
    assert response.headers["content-type"].split(";")[0].strip() in JAVASCRIPT_TYPES
    for module in sorted(modules):
        assert module.is_relative_to(APP_DIR.resolve())
        url = "/static/" + module.relative_to(STATIC_DIR.resolve()).as_posix()
        response = await api.client.get(url)
        assert response.status_code == 200, url
        assert response.headers["content-type"].split(";")[0].strip() in JAVASCRIPT_TYPES


def test_the_scripts_and_styles_load_nothing_from_elsewhere() -> None:
    for path in APP_DIR.iterdir():
        if path.suffix not in (".js", ".css", ".html"):
            continue
        text = path.read_text(encoding="utf-8")
        assert "@import" not in text, path.name
        assert not re.search(r"url\(\s*['\"]?(?:[a-z]+:)?//", text, re.I), path.name
        assert not re.search(r"""fetch\(\s*["'`](?:[a-z]+:)?//""", text, re.I), path.name
        for risky in ("innerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert risky not in text, f"{path.name} uses {risky}"

"""The page the OAuth popup lands on: no inline script, everything escaped."""

from __future__ import annotations

from html import escape
from typing import Final

import msgspec

from .schemas import PopupMessage, PopupSettings

POPUP_SCRIPT: Final = "/static/oauth-popup.js"

_PAGE: Final = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>{title}</title>
<script type="application/json" id="outcome">{outcome}</script>
<script type="application/json" id="popup-settings">{settings}</script>
<script src="{script}" defer></script>
</head>
<body>
<main>
<h1>{title}</h1>
<p>{message}</p>
<p id="back" hidden><a href="{return_url}">Back to the app</a></p>
<noscript><p><a href="{return_url}">Back to the app</a></p></noscript>
</main>
</body>
</html>
"""


def json_for_script(value: object) -> str:
    """JSON that cannot end its `<script>` element or start markup, whatever the strings hold."""
    text = msgspec.json.encode(value).decode("utf-8")
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_popup_page(
    message: PopupMessage,
    *,
    target_origins: tuple[str, ...],
    return_url: str,
    script: str = POPUP_SCRIPT,
) -> str:
    if message.ok and message.stage == "authorized":
        title = "Finishing in the app"
        text = "Calendly approved. The app finishes connecting; this window closes itself."
    elif message.ok:
        title = "Calendly connected"
        who = message.connection.email if message.connection else None
        text = (
            f"Connected as {who}. You can close this window."
            if who
            else "You can close this window."
        )
    else:
        title = message.error.title if message.error else "Calendly was not connected"
        text = message.error.detail if message.error else "Start connecting again."
    return _PAGE.format(
        title=escape(title),
        message=escape(text),
        outcome=json_for_script(message),
        settings=json_for_script(PopupSettings(target_origins=target_origins)),
        script=escape(script),
        return_url=escape(return_url),
    )

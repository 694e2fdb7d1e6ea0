"""`calendly-connect host-webhooks status` prints an endpoint's URL without what may be a
credential in it (entrypoints/operator/host_webhooks.py `shown_url`)."""

from __future__ import annotations

import pytest

from entrypoints.operator.host_webhooks import shown_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://crm.example/hooks/calendly", "https://crm.example/hooks/calendly"),
        ("https://crm.example/h?token=s3cr3t&v=2", "https://crm.example/h?token=***&v=***"),
        ("https://crm.example/h?s3cr3t&a=1", "https://crm.example/h?***&a=***"),
        ("https://bot:s3cr3t@crm.example:8443/h", "https://***@crm.example:8443/h"),
        ("https://s3cr3t@crm.example/h#s3cr3t", "https://***@crm.example/h"),
        ("http://127.0.0.1:9000/hook", "http://127.0.0.1:9000/hook"),
        (
            "https://hooks.slack.example/services/T0000/B0000/XXXXXXXXXXXXXXXXXXXXXXXX",
            "https://hooks.slack.example/services/T0000/B0000/***",
        ),
        (
            "https://app.example/hooks/calendly-connect-webhooks",
            "https://app.example/hooks/calendly-connect-webhooks",
        ),
    ],
)
def test_the_url_is_shown_without_its_credentials(url: str, shown: str) -> None:
    assert shown_url(url) == shown

"""Read a text/event-stream response event by event (as a browser's parser would)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import aiohttp


@dataclass
class Event:
    event: str
    data: str
    id: str | None

    def json(self) -> Any:
        return json.loads(self.data)


class EventReader:
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def next(self, seconds: float = 10.0, *, skip: tuple[str, ...] = ()) -> Event:
        """The next event (comments skipped); events named in `skip` are passed over too."""
        while True:
            event = await asyncio.wait_for(self._one(), seconds)
            if event.event not in skip:
                return event

    async def until(self, name: str, seconds: float = 10.0) -> Event:
        async def wait() -> Event:
            while True:
                event = await self._one()
                if event.event == name:
                    return event

        return await asyncio.wait_for(wait(), seconds)

    async def _one(self) -> Event:
        fields: dict[str, list[str]] = {}
        while True:
            raw = await self._response.content.readline()
            if not raw:
                raise EOFError("the stream ended")
            line = raw.decode("utf-8").rstrip("\r\n")
            if not line:
                if fields:
                    return Event(
                        event=(fields.get("event") or ["message"])[-1],
                        data="\n".join(fields.get("data", [])),
                        id=fields["id"][-1] if "id" in fields else None,
                    )
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            fields.setdefault(name, []).append(value[1:] if value.startswith(" ") else value)

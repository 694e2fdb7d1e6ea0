"""Calendly's OAuth server and REST API over aiohttp."""

from .api import AiohttpCalendlyApi

__all__ = ["AiohttpCalendlyApi"]

"""What the API and the pages share: the context, the sessions, the templates and
the time zone in which they show days and hours."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from msgtrack.context import Context
from msgtrack.reports import catalog, indicators
from msgtrack.web.auth import Sessions, SignInThrottle

HERE = Path(__file__).parent


@dataclass
class WebState:
    ctx: Context
    sessions: Sessions
    throttle: SignInThrottle
    templates: Environment
    zone: ZoneInfo
    secure_cookies: bool

    @classmethod
    def create(cls, ctx: Context) -> WebState:
        zone = ZoneInfo(ctx.settings.timezone)
        env = Environment(
            loader=FileSystemLoader(HERE / "templates"),
            autoescape=True,  # everything a visitor sent renders as text
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )

        def localtime(value: str | datetime | None) -> str:
            if value is None or value == "":
                return ""
            when = datetime.fromisoformat(value) if isinstance(value, str) else value
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            return when.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S")

        env.filters["localtime"] = localtime
        env.globals["timezone"] = zone.key
        env.globals["reports"] = catalog.available()  # the tabs
        env.globals["indicator_rows"] = indicators.ROWS
        sessions = Sessions(ctx.engine, ctx.reader)
        return cls(ctx, sessions, SignInThrottle(), env, zone, ctx.settings.is_https)

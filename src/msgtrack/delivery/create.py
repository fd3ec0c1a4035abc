"""Creating a delivery: content checked and rewritten once, tracked URLs registered.

Everything that would fail every message later is refused here with a clear message: a
link personalized in its scheme or host, a template syntax error in the subject or a
part, a From header that is not one line, a delivery with neither part.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from jinja2 import TemplateSyntaxError

from msgtrack.delivery.message import HeaderError, header
from msgtrack.delivery.render import template_environments
from msgtrack.links.addresses import MIRROR_ORDINAL, OPEN_ORDINAL, OPT_OUT_ORDINAL
from msgtrack.links.params import ParamRule, apply_rules
from msgtrack.links.personalize import PersonalizationError
from msgtrack.links.rewrite import prepare_content
from msgtrack.storage import deliveries as store
from msgtrack.storage.types import utcnow

if TYPE_CHECKING:
    from msgtrack.context import Context

# The tracked URLs every delivery has besides the links of its content.
SPECIAL_URLS = (
    {"ordinal": OPEN_ORDINAL, "type": "open", "label": "Open"},
    {"ordinal": OPT_OUT_ORDINAL, "type": "opt-out", "label": "Opt-out"},
    {"ordinal": MIRROR_ORDINAL, "type": "mirror", "label": "Mirror page"},
)


class DeliveryError(ValueError):
    """The delivery cannot be created as given; the message says why."""


def _check_syntax(env: Any, source: str, what: str) -> None:
    try:
        env.parse(source)
    except TemplateSyntaxError as exc:
        where = f" line {exc.lineno}" if exc.lineno else ""
        raise DeliveryError(f"template syntax error in the {what},{where}: {exc.message}") from exc


def create_delivery(
    ctx: Context,
    *,
    name: str,
    subject: str,
    html: str | None,
    text: str | None,
    from_addr: str | None = None,
    exclude: Sequence[str] = (),
    param_rules: Sequence[ParamRule] = (),
    validity: float | None = None,
) -> int:
    """Store a draft delivery with its rewritten content and tracked URLs; its id.

    ``exclude``: shell-style URL patterns not to track, besides ``settings.exclude_urls``.
    ``param_rules``: parameters (UTM…) appended to the destinations they match.
    ``validity``: seconds after the send starts during which soft failures are retried
    (default ``settings.delivery_validity``).
    Raises ``DeliveryError``.
    """
    settings = ctx.settings
    if html is None and text is None:
        raise DeliveryError("a delivery needs an HTML part, a text part, or both")
    if not name.strip():
        raise DeliveryError("a delivery needs a name")
    validity_seconds = round(settings.delivery_validity if validity is None else validity)
    if validity_seconds < 1:
        raise DeliveryError("the validity period must be at least one second")
    sender = from_addr or settings.default_from
    try:
        header("From", sender)
        header("Subject", subject)
    except HeaderError as exc:
        raise DeliveryError(str(exc)) from exc
    if "@" not in sender:
        raise DeliveryError(f"the From address {sender!r} has no '@'")

    html_env, text_env = template_environments(settings)
    # The content as written first: its line numbers are the author's.
    _check_syntax(text_env, subject, "subject")
    if html is not None:
        _check_syntax(html_env, html, "HTML part")
    if text is not None:
        _check_syntax(text_env, text, "text part")
    try:
        content = prepare_content(html, text, exclude=(*exclude, *settings.exclude_urls))
    except PersonalizationError as exc:
        raise DeliveryError(str(exc)) from exc
    # The rewritten templates are what is rendered: they must compile too.
    if content.html_template is not None:
        _check_syntax(html_env, content.html_template, "HTML part (with its links rewritten)")
    if content.text_template is not None:
        _check_syntax(text_env, content.text_template, "text part (with its links rewritten)")

    urls: list[dict[str, Any]] = [
        {
            "ordinal": link.ordinal,
            "url": apply_rules(link.url, param_rules),
            "label": link.label,
            "category": link.category,
            "type": "click",
            "tracked": getattr(link, "tracked", True),
        }
        for link in content.links
    ]
    urls += [{**special, "url": "", "category": "", "tracked": True} for special in SPECIAL_URLS]
    with ctx.engine.begin() as conn:
        delivery_id = store.insert_delivery(
            conn,
            {
                "name": name,
                "subject": subject,
                "from_addr": sender,
                "html": html,
                "text": text,
                "html_template": content.html_template,
                "text_template": content.text_template,
                "state": "draft",
                "created_at": utcnow(),
                "validity_seconds": validity_seconds,
            },
        )
        store.insert_tracked_urls(conn, delivery_id, urls)
        store.create_indicators(conn, delivery_id)
    return delivery_id

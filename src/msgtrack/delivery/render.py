"""Personalization: each message of a delivery rendered from the delivery's templates.

A :class:`MessageRenderer` loads a delivery and its tracked URLs once and compiles its
templates once; :meth:`MessageRenderer.render_batch` then turns a batch of messages into
RFC 5322 bytes with one query for their recipients and no other database access. Each
tracked link becomes a signed ``/c/TOKEN`` link naming the delivery, the message and the
tracked URL's *database* id, with the link's personalization values inside the token.
A message that cannot be rendered (template error, size or time cap, a line break in a
header) fails alone with a one-line reason; the others of the batch still render.

Template globals per message: ``recipient`` (id, email, first_name, last_name,
email_format and every extra field of the profile; a missing field renders empty),
``unsubscribe_url``, ``mirror_url``, and the helpers the link rewriter writes into the
templates, ``_msgtrack_link(ordinal, values)`` and ``_msgtrack_beacon()``.

A text-only recipient gets the text part alone; when the delivery has no text part, a
plain-text version is derived from their rendered HTML (see :func:`html_to_text`).
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jinja2 import Template, TemplateError

from msgtrack.delivery.message import (
    CRLF,
    HeaderError,
    build_message,
    date_header,
    feedback_id,
    header,
    list_header,
    list_unsubscribe,
    message_id_header,
    text_header,
)
from msgtrack.delivery.plaintext import html_to_text
from msgtrack.delivery.sandbox import Budget, CappedSandbox, RenderLimit
from msgtrack.links.addresses import MIRROR_ORDINAL, OPEN_ORDINAL, OPT_OUT_ORDINAL, tracking_link
from msgtrack.links.personalize import UrlTemplate, parse_url_template
from msgtrack.links.rewrite import BEACON
from msgtrack.links.sign import MAX_TOKEN_CHARS, LinkToken
from msgtrack.storage.deliveries import get_delivery, message_for_mirror, tracked_urls
from msgtrack.storage.recipients import recipients_by_ids

if TYPE_CHECKING:
    from msgtrack.config import Settings
    from msgtrack.context import Context

MAX_REASON_CHARS = 500
# What the beacon helper gives in the mirror page should a beacon survive elsewhere:
# a blank image that loads nothing.
BLANK_GIF = "data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7"


class RenderError(Exception):
    """A message that cannot be rendered; ``reason`` is kept as its failure reason."""

    def __init__(self, reason: str) -> None:
        reason = " ".join(reason.split())[:MAX_REASON_CHARS]
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class _Link:
    id: int
    tracked: bool
    template: UrlTemplate


class RecipientView:
    """A recipient as templates see it: ``recipient.first_name`` or
    ``recipient['a column']``; a field the profile lacks is undefined (renders empty)."""

    __slots__ = ("_fields",)

    def __init__(self, fields: Mapping[str, Any]) -> None:
        self._fields = fields

    def __getattr__(self, name: str) -> Any:
        try:
            return self._fields[name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, name: str) -> Any:
        return self._fields[name]

    def __contains__(self, name: object) -> bool:
        return name in self._fields

    def __str__(self) -> str:
        return str(self._fields.get("email", ""))


def template_environments(
    settings: Settings, budget: Budget | None = None
) -> tuple[CappedSandbox, CappedSandbox]:
    """(HTML environment, autoescaped; text environment for the text part and the
    subject), sharing one budget."""
    budget = budget or Budget(settings.max_message_bytes, settings.max_render_seconds)
    return CappedSandbox(budget, autoescape=True), CappedSandbox(budget, autoescape=False)


def recipient_fields(row: Mapping[Any, Any] | None, email: str) -> dict[str, Any]:
    """Every field of a profile (extra columns first, the profile columns win)."""
    if row is None:  # the recipient was deleted since the analysis
        return {
            "id": None,
            "email": email,
            "first_name": "",
            "last_name": "",
            "email_format": "html",
        }
    try:
        extra = json.loads(row.get("fields") or "{}")
    except ValueError:
        extra = {}
    out: dict[str, Any] = extra if isinstance(extra, dict) else {}
    out["id"] = row["id"]
    out["email"] = row["email"]
    out["first_name"] = row.get("first_name") or ""
    out["last_name"] = row.get("last_name") or ""
    out["email_format"] = row.get("email_format") or "html"
    return out


class MessageRenderer:
    """Renders the messages of one delivery, one message at a time (a lock makes it safe
    to share between threads, e.g. the tracking server's mirror pages)."""

    def __init__(self, ctx: Context, delivery_id: int) -> None:
        self.ctx = ctx
        self.delivery_id = int(delivery_id)
        settings = ctx.settings
        self.settings = settings
        self.keyring = ctx.keyring
        with ctx.reader.connect() as conn:
            delivery = get_delivery(conn, self.delivery_id)
            if delivery is None:
                raise LookupError(f"no delivery {delivery_id}")
            urls = tracked_urls(conn, self.delivery_id)
        self.budget = Budget(settings.max_message_bytes, settings.max_render_seconds)
        html_env, text_env = template_environments(settings, self.budget)
        html_source = delivery["html_template"]
        text_source = delivery["text_template"]
        self.subject: Template = text_env.from_string(delivery["subject"])
        self.html: Template | None = (
            html_env.from_string(html_source) if html_source is not None else None
        )
        self.mirror: Template | None = (
            html_env.from_string(html_source.replace(BEACON, "", 1))
            if html_source is not None
            else None
        )
        self.text: Template | None = (
            text_env.from_string(text_source) if text_source is not None else None
        )

        self.links: dict[int, _Link] = {}
        special: dict[int, int] = {}
        for row in urls:
            if row["type"] == "click":
                self.links[int(row["ordinal"])] = _Link(
                    int(row["id"]), bool(row["tracked"]), parse_url_template(row["url"])
                )
            else:
                special[int(row["ordinal"])] = int(row["id"])
        missing = {OPEN_ORDINAL, OPT_OUT_ORDINAL, MIRROR_ORDINAL} - set(special)
        if missing:
            raise LookupError(
                f"delivery {delivery_id} lacks its open, opt-out or mirror tracked URL"
            )
        self.open_id = special[OPEN_ORDINAL]
        self.opt_out_id = special[OPT_OUT_ORDINAL]
        self.mirror_id = special[MIRROR_ORDINAL]
        base = settings.tracking_url
        self.click_prefix = tracking_link(base, "click", "")
        self.open_prefix = tracking_link(base, "open", "")
        self.opt_out_prefix = tracking_link(base, "opt-out", "")
        self.mirror_prefix = tracking_link(base, "mirror", "")

        # Headers the same for every message, folded once.
        self.header_error: str | None = None
        self.fixed_headers = ""
        try:
            self.fixed_headers = header("From", delivery["from_addr"])
        except HeaderError as exc:
            self.header_error = str(exc)
        self.feedback = header(
            "Feedback-ID", feedback_id(settings, self.delivery_id, delivery["typology"])
        )
        # A random part per renderer, so the boundary cannot be guessed by content.
        self.boundary_prefix = f"=_msgtrack_{secrets.token_hex(8)}_"

        # The helpers templates call, with the state of the message being rendered. Kept
        # as attributes: the sandbox calls them directly (see ``CappedSandbox.call``).
        self._message_id = 0
        self._mirror = False
        self._memo: dict[Any, str] = {}
        self._link_helper = self._link
        self._beacon_helper = self._beacon
        for env in (html_env, text_env):
            env.add_direct_call(self._link_helper)
            env.add_direct_call(self._beacon_helper)
        self._lock = threading.Lock()

    # -- per message -------------------------------------------------------------------

    def _begin(
        self, message_id: int, fields: Mapping[str, Any], *, mirror: bool = False
    ) -> dict[str, Any]:
        """Start rendering one message: its budget, its helpers' state, its variables."""
        self.budget.start()
        self._message_id = message_id
        self._mirror = mirror
        self._memo.clear()
        sign, d = self.keyring.sign_link, self.delivery_id
        return {
            "recipient": RecipientView(fields),
            "unsubscribe_url": self.opt_out_prefix
            + sign(LinkToken(d, message_id, self.opt_out_id)),
            "mirror_url": self.mirror_prefix + sign(LinkToken(d, message_id, self.mirror_id)),
            "_msgtrack_link": self._link_helper,
            "_msgtrack_beacon": self._beacon_helper,
        }

    def _link(self, ordinal: int, values: Sequence[Any] = ()) -> str:
        """``_msgtrack_link``: the tracked link of a URL for the current message, or the
        destination itself when its tracking is off. Memoized per message, since the
        HTML and the text part usually hold the same links."""
        key = (ordinal, tuple(values)) if values else ordinal
        try:
            return self._memo[key]
        except (KeyError, TypeError):  # TypeError: an unhashable value
            pass
        target = self.links.get(ordinal)
        if target is None:
            raise RenderLimit(f"the content names link {ordinal}, which the delivery does not have")
        texts = tuple("" if v is None else str(v) for v in values) if values else ()
        if target.tracked:
            token = self.keyring.sign_link(
                LinkToken(self.delivery_id, self._message_id, target.id, texts)
            )
            if len(token) > MAX_TOKEN_CHARS:
                raise RenderLimit(
                    f"the personalized values of link {ordinal} are too long for a tracked link"
                )
            result = self.click_prefix + token
        else:
            result = target.template.resolve(texts)
        try:
            self._memo[key] = result
        except TypeError:
            pass
        return result

    def _beacon(self) -> str:
        """``_msgtrack_beacon``: the open link of the current message."""
        if self._mirror:
            return BLANK_GIF
        return self.open_prefix + self.keyring.sign_link(
            LinkToken(self.delivery_id, self._message_id, self.open_id)
        )

    def _run(self, template: Template, variables: Mapping[str, Any]) -> str:
        """Render, streaming: the size and the deadline are checked chunk by chunk."""
        spend = self.budget.spend
        parts: list[str] = []
        append = parts.append
        for chunk in template.generate(variables):
            spend(len(chunk))
            append(chunk)
        return "".join(parts)

    def _render_one(self, message: Mapping[str, Any], profile: Mapping[Any, Any] | None) -> bytes:
        if self.header_error:
            raise RenderError(self.header_error)
        message_id = int(message["id"])
        email = message["email"]
        variables = self._begin(message_id, recipient_fields(profile, email))
        subject = self._run(self.subject, variables)
        subject_header = text_header("Subject", subject)  # refuses CR/LF before any body work
        to_header = header("To", email)
        text_only = bool(message["text_only"]) or self.html is None
        html = None if text_only or self.html is None else self._run(self.html, variables)
        text: str | None = None
        if self.text is not None:
            text = self._run(self.text, variables)
        elif text_only and self.html is not None:
            text = html_to_text(self._run(self.html, variables))
        mailbox = self.settings.unsubscribe_mailbox
        verp = self.keyring.sign_verp(message_id) if mailbox else None
        headers = "".join(
            (
                self.fixed_headers,
                to_header,
                subject_header,
                "Date: ",
                date_header(),
                CRLF,
                "Message-ID: ",
                message_id_header(self.settings, self.delivery_id, message_id),
                CRLF,
                self.feedback,
                list_header(
                    "List-Unsubscribe",
                    list_unsubscribe(variables["unsubscribe_url"], mailbox, verp),
                ),
                "List-Unsubscribe-Post: List-Unsubscribe=One-Click",
                CRLF,
                f"X-Msgtrack-Message: {self.delivery_id}.{message_id}",
                CRLF,
            )
        )
        data = build_message(
            headers, text=text, html=html, boundary=f"{self.boundary_prefix}{message_id}"
        )
        if len(data) > self.budget.max_bytes:
            raise RenderLimit(
                f"the message is over the size limit of {self.budget.max_bytes} bytes"
            )
        return data

    def render_one(self, message: Mapping[str, Any], profile: Mapping[Any, Any] | None) -> bytes:
        """One message's bytes; raises ``RenderError``."""
        with self._lock:
            return _guarded(lambda: self._render_one(message, profile))

    def render_batch(self, messages: Sequence[Mapping[str, Any]]) -> list[bytes | RenderError]:
        """The bytes of each message, or the ``RenderError`` that message failed with.

        ``messages`` are rows of ``messages`` (``id``, ``recipient_id``, ``email``,
        ``text_only``); their recipients are loaded in one query.
        """
        ids = [m["recipient_id"] for m in messages if m["recipient_id"] is not None]
        with self.ctx.reader.connect() as conn:
            profiles = recipients_by_ids(conn, ids)
        out: list[bytes | RenderError] = []
        for message in messages:
            rid = message["recipient_id"]
            try:
                out.append(self.render_one(message, profiles.get(rid) if rid is not None else None))
            except RenderError as exc:
                out.append(exc)
        return out

    def render_mirror(self, message_id: int) -> str | None:
        """The HTML as that recipient saw it, without the beacon (links still tracked);
        None for an unknown message, a message of another delivery, or no HTML part.
        Raises ``RenderError`` when it cannot be rendered."""
        if self.mirror is None:
            return None
        with self.ctx.reader.connect() as conn:
            row = message_for_mirror(conn, int(message_id))
        if row is None or int(row["delivery_id"]) != self.delivery_id:
            return None
        mirror = self.mirror
        profile = None
        if row["recipient_id"] is not None and row["recipient_email"] is not None:
            profile = {
                "id": row["recipient_id"],
                "email": row["recipient_email"],
                "first_name": row["first_name"],
                "last_name": row["last_name"],
                "email_format": row["email_format"],
                "fields": row["fields"],
            }

        def run() -> str:
            variables = self._begin(
                int(row["id"]), recipient_fields(profile, row["email"]), mirror=True
            )
            return self._run(mirror, variables)

        with self._lock:
            return _guarded(run)


def _guarded(work: Callable[[], Any]) -> Any:
    """Run ``work``, turning whatever a template can raise into a ``RenderError``."""
    try:
        return work()
    except RenderError:
        raise
    except RenderLimit as exc:
        raise RenderError(exc.reason) from exc
    except HeaderError as exc:
        raise RenderError(str(exc)) from exc
    except TemplateError as exc:
        raise RenderError(f"template error: {exc}") from exc
    except RecursionError as exc:
        raise RenderError("template error: too deeply nested (recursion)") from exc
    except MemoryError as exc:
        raise RenderError("template error: out of memory") from exc
    except Exception as exc:  # noqa: BLE001 - any error of a template fails its message only
        raise RenderError(f"template error: {type(exc).__name__}: {exc}") from exc

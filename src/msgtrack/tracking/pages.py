"""The few tiny pages the tracking server shows a person.

Plain, self-contained HTML (no assets, nothing that loads from elsewhere), built once
at import where nothing varies, so answering costs no templating.
"""

from __future__ import annotations

from html import escape

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem;"
    "color:#222;line-height:1.5}button{font-size:1rem;padding:.5rem 1.2rem;cursor:pointer}"
)


def page(title: str, body_html: str) -> bytes:
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="robots" content="noindex, nofollow">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><h1>{escape(title)}</h1>{body_html}</body></html>\n"
    ).encode()


NOT_FOUND = page("Not found", "<p>This link is not valid.</p>")
BAD_REQUEST = page("Bad request", "<p>The request could not be understood.</p>")
METHOD_NOT_ALLOWED = page("Method not allowed", "<p>This address does not accept that method.</p>")
TOO_LARGE = page("Request too large", "<p>The request is too large.</p>")
HEADERS_TOO_LARGE = page("Request headers too large", "<p>The request headers are too large.</p>")
SERVER_ERROR = page("Error", "<p>Something went wrong. Please try again later.</p>")
UNAVAILABLE = page(
    "Temporarily unavailable",
    "<p>Your request could not be recorded right now. Please try again in a few minutes.</p>",
)
UNSUBSCRIBED = page("You are unsubscribed", "<p>You will not receive these messages any more.</p>")
NOTHING_TO_CONFIRM = page(
    "Nothing to confirm", "<p>Use the button on the previous page to unsubscribe.</p>"
)
ONE_CLICK_DONE = b"Unsubscribed.\n"


def opt_out_confirmation(action: str) -> bytes:
    """The opt-out page: a GET never unsubscribes (scanners follow links), this form's
    POST does."""
    return page(
        "Unsubscribe",
        "<p>Do you want to stop receiving these messages?</p>"
        f'<form method="post" action="{escape(action)}">'
        '<input type="hidden" name="confirm" value="yes">'
        '<button type="submit">Unsubscribe</button></form>',
    )

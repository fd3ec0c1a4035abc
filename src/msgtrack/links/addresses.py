"""Addresses of the tracking server's public endpoints, one place for writer and reader."""

from __future__ import annotations

# URL type -> path prefix on the tracking server; the token follows the prefix.
PATHS: dict[str, str] = {"click": "/c/", "open": "/o/", "opt-out": "/u/", "mirror": "/m/"}
TYPES_BY_PATH: dict[str, str] = {v: k for k, v in PATHS.items()}

# Ordinals of the per-delivery tracked URLs that are not links of the content.
OPEN_ORDINAL = -1
OPT_OUT_ORDINAL = -2
MIRROR_ORDINAL = -3

VISITOR_COOKIE = "mt_v"
SESSION_COOKIE = "mt_s"


def tracking_link(base_url: str, url_type: str, token: str) -> str:
    """``http://track.example/c/TOKEN`` for a URL of type ``url_type``."""
    return f"{base_url.rstrip('/')}{PATHS[url_type]}{token}"

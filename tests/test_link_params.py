"""Parameters appended to destinations by rule (UTM tags)."""

from __future__ import annotations

import pytest

from msgtrack.context import Context
from msgtrack.delivery.create import create_delivery
from msgtrack.links.params import ParamRule, ParamRuleError, append_params, apply_rules
from msgtrack.storage.deliveries import tracked_urls


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://a.example/", "https://a.example/?utm_source=n&utm_medium=e"),
        ("https://a.example/p?x=1", "https://a.example/p?x=1&utm_source=n&utm_medium=e"),
        ("https://a.example/p?x=1#top", "https://a.example/p?x=1&utm_source=n&utm_medium=e#top"),
        ("https://a.example/p?utm_source=own", "https://a.example/p?utm_source=own&utm_medium=e"),
        (
            "https://a.example/p?utm_source=o&utm_medium=m",
            "https://a.example/p?utm_source=o&utm_medium=m",
        ),
        (
            "https://a.example/{{ recipient.id }}",
            "https://a.example/{{ recipient.id }}?utm_source=n&utm_medium=e",
        ),
    ],
)
def test_append_params(url: str, expected: str) -> None:
    assert append_params(url, "utm_source=n&utm_medium=e") == expected


def test_rules_apply_by_pattern() -> None:
    rules = [ParamRule("https://shop.example/*", "utm_source=news")]
    assert apply_rules("https://shop.example/a", rules) == "https://shop.example/a?utm_source=news"
    assert apply_rules("https://other.example/a", rules) == "https://other.example/a"


@pytest.mark.parametrize("query", ["a={{ x }}", "a=1#b", "a=1\r\nX: y", "a b"])
def test_unsafe_rules_are_refused(query: str) -> None:
    with pytest.raises(ParamRuleError):
        ParamRule("*", query)


def test_rules_reach_the_registered_destinations(ctx: Context) -> None:
    html = '<a href="https://shop.example/a">A</a> <a href="https://blog.example/b">B</a>'
    delivery_id = create_delivery(
        ctx,
        name="utm",
        subject="s",
        html=html,
        text=None,
        param_rules=[ParamRule("https://shop.example/*", "utm_source=news&utm_medium=email")],
    )
    with ctx.engine.connect() as conn:
        urls = sorted(u["url"] for u in tracked_urls(conn, delivery_id) if u["type"] == "click")
    assert urls == [
        "https://blog.example/b",
        "https://shop.example/a?utm_source=news&utm_medium=email",
    ]

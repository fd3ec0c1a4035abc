"""Property tests of the link rewriter: byte identity outside tracked links.

Documents are generated as segments whose meaning the test knows: plain source text,
tracked link values, and the place of the beacon. The expected template and the
expected rendering are built from those segments, independently of the rewriter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import jinja2
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from msgtrack.links.addresses import tracking_link
from msgtrack.links.personalize import PersonalizationError
from msgtrack.links.rewrite import BEACON, prepare_content
from msgtrack.links.sign import KeyRing, LinkToken

MARK = "[[BEACON]]"
EXCLUDE = ["*://excluded.example*"]
RECIPIENT = {"id": "ID7", "first_name": "Zoé"}
EXPRESSION_VALUES = {"recipient.id": "ID7", "recipient.first_name": "Zoé"}
# Template syntax the generator writes on purpose; any other is an accident to avoid.
KNOWN_SYNTAX = re.compile(
    r"\{\{ (unsubscribe_url|mirror_url|recipient\.id|recipient\.first_name) \}\}"
)

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass(frozen=True)
class Link:
    """A tracked link in a generated document: its source text and what it means."""

    source: str  # as written, quotes included for HTML
    quote: str  # quote of the rewritten HTML value ("" in text)
    url: str  # the URL the rewriter must register
    expressions: tuple[str, ...] = ()

    @property
    def values(self) -> tuple[str, ...]:
        return tuple(EXPRESSION_VALUES[e] for e in self.expressions)


class Beacon:
    pass


Segment = str | Link | Beacon


def source_of(segments: list[Segment]) -> str:
    return "".join(
        s if isinstance(s, str) else s.source if isinstance(s, Link) else "" for s in segments
    )


def ordinals_of(segments: list[Segment], start: dict[str, int] | None = None) -> dict[str, int]:
    ordinals = dict(start or {})
    for s in segments:
        if isinstance(s, Link):
            ordinals.setdefault(s.url, len(ordinals) + 1)
    return ordinals


def call(n: int, expressions: tuple[str, ...]) -> str:
    if not expressions:
        return f"{{{{ _msgtrack_link({n}) }}}}"
    values = ", ".join(f"({e})" for e in expressions)
    return f"{{{{ _msgtrack_link({n}, ({values},)) }}}}"


def click_url(n: int, values: tuple[str, ...]) -> str:
    return f"https://t.example/c/TOKEN{n}" + "".join(f"/{v}" for v in values)


def expected(segments: list[Segment], ordinals: dict[str, int], *, template: bool) -> str:
    out = []
    for s in segments:
        if isinstance(s, str):
            if not template:  # untracked personalized links render their values in place
                for expression, value in EXPRESSION_VALUES.items():
                    s = s.replace(f"{{{{ {expression} }}}}", value)
            out.append(s)
        elif isinstance(s, Beacon):
            out.append(BEACON if template else MARK)
        else:
            n = ordinals[s.url]
            new = call(n, s.expressions) if template else click_url(n, s.values)
            out.append(f"{s.quote}{new}{s.quote}")
    return "".join(out)


def render(template: str, link: Any = None) -> str:
    env = jinja2.Environment(keep_trailing_newline=True, autoescape=False)  # noqa: S701
    return env.from_string(template).render(
        _msgtrack_link=link or (lambda n, v=(): click_url(n, tuple(v))),
        _msgtrack_beacon=lambda: "BEACON-URL",
        recipient=RECIPIENT,
        # rendering these helpers to themselves keeps their text in the expected output
        unsubscribe_url="{{ unsubscribe_url }}",
        mirror_url="{{ mirror_url }}",
    )


def rendered_beacon(text: str) -> str:
    return text.replace(BEACON.replace("{{ _msgtrack_beacon() }}", "BEACON-URL"), MARK)


def no_accidental_syntax(source: str) -> bool:
    rest = KNOWN_SYNTAX.sub("", source)
    return not any(marker in rest for marker in ("{{", "{%", "{#"))


def same_newlines(text: str) -> str:
    """Jinja writes every newline as '\\n' (its ``newline_sequence``)."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


# -- HTML generation -------------------------------------------------------------------

text_chars = st.sampled_from(list("abcxyzABC019 \n\t.,;:!?'\"=/-_()[]{}%#>éß—€\u00a0\r"))
texts = st.text(alphabet=text_chars, max_size=12)
entities = st.sampled_from(
    ["&amp;", "&lt;", "&gt;", "&copy;", "&#169;", "&#x27;", "&nbsp;", "& ", "&copy", "&amp"]
)
spaces = st.sampled_from([" ", "  ", "\n", "\t", " \n  ", "\r\n"])
value_chars = " abc019#:;.-_/é&>=%?"


@st.composite
def attributes(draw: st.DrawFn) -> str:
    name = draw(
        st.sampled_from(
            [
                "class",
                "id",
                "style",
                "title",
                "width",
                "align",
                "data-x",
                "alt",
                "target",
                "lang",
                "BGCOLOR",
            ]
        )
    )
    form = draw(st.sampled_from(["double", "single", "bare", "boolean", "spaced"]))
    space = draw(spaces)
    if form == "boolean":
        return f"{space}{name}"
    if form == "bare":
        value = draw(st.text(alphabet="abc019#:;.-_%", min_size=1, max_size=8))
        return f"{space}{name}={value}"
    value = draw(st.text(alphabet=value_chars + ("'" if form != "single" else '"'), max_size=10))
    quote = "'" if form == "single" else '"'
    eq = " = " if form == "spaced" else "="
    return f"{space}{name}{eq}{quote}{value}{quote}"


TAGS = [
    "p",
    "div",
    "span",
    "td",
    "table",
    "img",
    "br",
    "b",
    "font",
    "center",
    "P",
    "DIV",
    "Td",
    "tbody",
    "o:p",
]


@st.composite
def start_tags(draw: st.DrawFn) -> str:
    tag = draw(st.sampled_from(TAGS))
    attrs = "".join(draw(st.lists(attributes(), max_size=3)))
    end = draw(st.sampled_from([">", " >", "\n>", "/>", " />"]))
    if end.endswith("/>") and attrs and not attrs.endswith(("'", '"')) and end == "/>":
        end = " />"  # an unquoted value would take the slash
    return f"<{tag}{attrs}{end}"


end_tags = st.sampled_from(TAGS).map(lambda t: f"</{t}>")

FAKE_LINK = '<a href="https://hidden.example/">hidden</a>'
RAW_PIECES = [
    "<!DOCTYPE html>",
    '<?xml version="1.0"?>',
    "<!--[if mso]><table><tr><td><![endif]-->",
    "<![if !mso]><div><![endif]>",
    "<![CDATA[ x < y && z ]]>",
    f"<script>var s = '{FAKE_LINK}'; if (a < b && c > d) {{ s = \"<body>\"; }}</script>",
    "<SCRIPT type=text/javascript>document.write(\"<a href='https://hidden.example/'>\")</SCRIPT>",
    "<style>a[href^='https://hidden.example/'] { color: red }"
    " @media (max-width:600px){p{margin:0}}</style>",
    f"<textarea>{FAKE_LINK}</textarea>",
    f"<title>{FAKE_LINK}</title>",
    f"<input value='{FAKE_LINK}'>",
    '<link rel=stylesheet href="https://hidden.example/s.css">',
    '<img src="https://hidden.example/logo.png" alt="logo">',
    " < ",
    "<3",
    "a <= b",
    "<!---->",
    "<!-- -- -->",
]


@st.composite
def comments(draw: st.DrawFn) -> str:
    inner = st.text(alphabet="abc \n<=/\"'!", max_size=8)
    hidden = draw(
        st.sampled_from(["", FAKE_LINK, "<body>", '<area href="https://hidden.example/">'])
    )
    close = draw(st.sampled_from(["-->", "--!>"]))
    return f"<!--{draw(inner)}{hidden}{draw(inner)}{close}"


HTTP_SCHEMES = ["http", "https", "HTTP", "Https", "hTtPs"]
HOSTS = ["a.example", "b.example", "shop.example.org", "c.example:8080", "excluded.example"]
NOT_HTTP = [
    "mailto:ann@example.com",
    "MAILTO:bob@example.com?subject=hi",
    "tel:+33123456789",
    "#top",
    "#",
    "javascript:void(0)",
    "JavaScript:alert(1)",
    "data:text/plain,hi",
    "/relative/path",
    "page.html",
    "?q=1",
    "ftp://files.example/x",
    "//cdn.example/x",
    "sms:+331",
    "https:relative",
    "{{ unsubscribe_url }}",
    "{{ mirror_url }}",
]


@st.composite
def http_values(draw: st.DrawFn, quote: str) -> tuple[str, str, tuple[str, ...]]:
    """(raw value, the URL it means, personalization expressions) of an http(s) href."""
    raw = url = f"{draw(st.sampled_from(HTTP_SCHEMES))}://{draw(st.sampled_from(HOSTS))}"
    expressions: list[str] = []
    if draw(st.booleans()):
        path = "/" + draw(st.text(alphabet="abc019-_./~%+", max_size=8))
        raw, url = raw + path, url + path
    if draw(st.booleans()):
        expression = draw(st.sampled_from(["recipient.id", "recipient.first_name"]))
        expressions.append(expression)
        raw, url = raw + f"/p/{{{{ {expression} }}}}", url + f"/p/{{{{ {expression} }}}}"
    for _ in range(draw(st.integers(0, 2))):
        key = draw(st.sampled_from(["x", "utm_source", "region", "copy", "n"]))
        value = draw(st.text(alphabet="abc019-", max_size=4))
        sep = "?" if "?" not in url else draw(st.sampled_from(["&", "&amp;", "&#38;"]))
        raw, url = (
            raw + sep + f"{key}={value}",
            url + ("?" if sep == "?" else "&") + f"{key}={value}",
        )
        if draw(st.booleans()) and "/" in url.split("://", 1)[1]:  # after the path's first /
            expression = "recipient.first_name"
            expressions.append(expression)
            raw, url = raw + f"&amp;f={{{{ {expression} }}}}", url + f"&f={{{{ {expression} }}}}"
    if quote and draw(st.booleans()):  # surrounding whitespace, only where it can be written
        raw = (
            draw(st.sampled_from([" ", "\n", "\t ", "  "]))
            + raw
            + draw(st.sampled_from(["", " ", "\n"]))
        )
    return raw, url, tuple(expressions)


@st.composite
def anchors(draw: st.DrawFn) -> list[Segment]:
    tag = draw(st.sampled_from(["a", "A", "area", "AREA"]))
    quote = draw(st.sampled_from(['"', "'", ""]))
    off_attr = draw(
        st.sampled_from(
            [
                "",
                "",
                "",
                "",
                "",
                "",
                ' data-msgtrack="off"',
                " data-msgtrack=off",
                " DATA-MSGTRACK='Off'",
                ' data-msgtrack="on"',
            ]
        )
    )
    if draw(st.integers(0, 3)) == 0:
        raw = draw(st.sampled_from(NOT_HTTP))
        if not quote and " " in raw:
            quote = '"'
        url, expressions, tracked = raw, (), False
    else:
        raw, url, expressions = draw(http_values(quote))
        tracked = "off" not in off_attr.lower() and "excluded.example" not in url
    before = "".join(draw(st.lists(attributes(), max_size=2)))
    after = "".join(draw(st.lists(attributes(), max_size=2)))
    off_first = draw(st.booleans())
    label = draw(
        st.sampled_from(
            [
                "",
                ' title="A title"',
                " data-msgtrack-label='Label'",
                ' data-msgtrack-category="cat"',
            ]
        )
    )
    name = draw(st.sampled_from(["href", "HREF", "Href"]))
    equals = draw(st.sampled_from(["=", " = ", "=  ", "\n="]))
    head = f"<{tag}{off_attr if off_first else ''}{label}{before} {name}{equals}"
    tail = f"{after}{'' if off_first else off_attr}"
    if tag.lower() == "a":
        inner = "".join(
            draw(
                st.lists(
                    st.one_of(
                        texts,
                        entities,
                        st.just('<img src="x.png" alt="Logo">'),
                        st.just("<b>bold</b>"),
                    ),
                    max_size=3,
                )
            )
        )
        tail += f">{inner}</{tag}>"
    else:
        tail += draw(st.sampled_from([">", " />"]))
    source = f"{quote}{raw}{quote}"
    if tracked:
        return [head, Link(source, quote or '"', url, expressions), tail]
    return [head + source + tail]


bodies = st.sampled_from(
    ["<body>", "<BODY bgcolor='#ffffff'>", '<body\nclass=x style="margin:0">', "<Body/>"]
)

html_pieces = st.one_of(
    texts,
    entities,
    start_tags(),
    end_tags,
    comments(),
    st.sampled_from(RAW_PIECES),
    anchors(),
    anchors(),
    anchors(),
    anchors(),
).map(lambda p: p if isinstance(p, list) else [p])


@st.composite
def html_documents(draw: st.DrawFn) -> list[Segment]:
    pieces: list[list[Segment]] = draw(st.lists(html_pieces, max_size=14))
    for _ in range(draw(st.sampled_from([0, 1, 1, 2]))):
        pieces.insert(draw(st.integers(0, len(pieces))), [draw(bodies), Beacon()])
    segments: list[Segment] = [s for piece in pieces for s in piece]
    beacons = [i for i, s in enumerate(segments) if isinstance(s, Beacon)]
    segments = (
        [s for i, s in enumerate(segments) if not isinstance(s, Beacon) or i == beacons[0]]
        if beacons
        else [Beacon(), *segments]
    )
    assume(no_accidental_syntax(source_of(segments)))
    return segments


def check_html(segments: list[Segment]) -> None:
    source = source_of(segments)
    prepared = prepare_content(source, None, exclude=EXCLUDE)
    ordinals = ordinals_of(segments)
    assert [link.url for link in prepared.links] == list(ordinals)
    assert [link.ordinal for link in prepared.links] == list(range(1, len(ordinals) + 1))
    assert prepared.html_template == expected(segments, ordinals, template=True)
    rendered = rendered_beacon(render(prepared.html_template or ""))
    assert rendered == same_newlines(expected(segments, ordinals, template=False))


@PROPERTY
@given(html_documents())
@example(
    [
        Beacon(),
        "<a href=",
        Link(
            "https://a.example/{{ recipient.id }}",
            '"',
            "https://a.example/{{ recipient.id }}",
            ("recipient.id",),
        ),
        ">x</a>",
    ]
)
@example(
    [
        "<body>",
        Beacon(),
        "<a href=",
        Link("' https://a.example/?a=1&amp;region=fr '", "'", "https://a.example/?a=1&region=fr"),
        ">",
    ]
)
def test_html_only_tracked_values_change(segments: list[Segment]) -> None:
    check_html(segments)


# -- text generation -------------------------------------------------------------------

URL_CHARS = "abcXYZ019-._~%+=&$@!*,;:"
CONTEXTS = [
    ("", ""),
    ("(", ")"),
    ("[", "]"),
    ("{", "}"),
    ("<", ">"),
    ('"', '"'),
    ("'", "'"),
    ("**", "**"),
    ("", "."),
    ("", ","),
    ("", ";"),
    ("", ":"),
    ("", "!"),
    ("", "?"),
    ("(", ")."),
    ("[", "];"),
    ("", "..."),
    ("", "?!"),
    ("", ")"),
    ("", "]"),
    ("", "}"),
]


@st.composite
def text_urls(draw: st.DrawFn, quotes: bool) -> tuple[str, tuple[str, ...]]:
    url = f"{draw(st.sampled_from(HTTP_SCHEMES))}://{draw(st.sampled_from(HOSTS))}"
    expressions: list[str] = []
    chars = URL_CHARS + ("'" if quotes else "")
    for _ in range(draw(st.integers(0, 4))):
        part = draw(
            st.one_of(
                st.text(alphabet=chars, min_size=1, max_size=6),
                st.sampled_from(["(x)", "[1]", "{k}", "_(bar)", "?q=a,b", "#frag"]),
                st.sampled_from(["recipient.id", "recipient.first_name"]),
            )
        )
        if part.startswith("recipient."):
            expressions.append(part)
            part = f"{{{{ {part} }}}}"
        url += "/" + part
    if url[-1] in ".,;:!?*'" or (url.endswith(")") and url.count(")") > url.count("(")):
        url += "z"
    return url, tuple(expressions)


@st.composite
def text_pieces(draw: st.DrawFn) -> list[Segment]:
    kind = draw(st.integers(0, 9))
    if kind < 4:
        return [draw(st.text(alphabet="abcXYZ019-'éß", min_size=1, max_size=8))]
    if kind == 4:
        return [
            draw(
                st.sampled_from(
                    [
                        ".",
                        ",",
                        "(",
                        ")",
                        "[",
                        "]",
                        "}",
                        "—",
                        "...",
                        "<",
                        ">",
                        "{ }",
                        "http",
                        "https:",
                    ]
                )
            )
        ]
    if kind == 5:
        return [
            draw(
                st.sampled_from(
                    [
                        "mailto:ann@example.com",
                        "tel:+331",
                        "ftp://files.example/x",
                        "www.example.com",
                        "{{ unsubscribe_url }}",
                        "{{ mirror_url }}",
                        "example.com/x",
                        "http:/broken",
                        "https://",
                        "https:///x",
                        "xhttps://a.example/",
                        "git+https://a.example/",
                        "(https://excluded.example/x).",
                        "https://excluded.example",
                    ]
                )
            )
        ]
    opener, closer = draw(st.sampled_from(CONTEXTS))
    url, expressions = draw(text_urls(quotes=opener != "'"))
    if "excluded.example" in url:
        return [opener + url + closer]
    return [opener, Link(url, "", url, expressions), closer]


@st.composite
def text_documents(draw: st.DrawFn) -> list[Segment]:
    pieces = draw(st.lists(text_pieces(), max_size=12))
    segments: list[Segment] = []
    for piece in pieces:
        segments += piece
        segments.append(draw(st.sampled_from([" ", "\n", "  ", "\t", " \n", "\r\n"])))
    assume(no_accidental_syntax(source_of(segments)))
    return segments


def check_text(
    segments: list[Segment], start: dict[str, int] | None = None, html: str | None = None
) -> None:
    source = source_of(segments)
    prepared = prepare_content(html, source, exclude=EXCLUDE)
    ordinals = ordinals_of(segments, start)
    assert [link.url for link in prepared.links] == list(ordinals)
    assert render(prepared.text_template or "") == same_newlines(
        expected(segments, ordinals, template=False)
    )


@PROPERTY
@given(text_documents())
@example(
    [
        "{",
        Link(
            "https://a.example/{{ recipient.id }}",
            "",
            "https://a.example/{{ recipient.id }}",
            ("recipient.id",),
        ),
        "}",
        " ",
    ]
)
def test_text_only_urls_change(segments: list[Segment]) -> None:
    check_text(segments)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(html_documents(), text_documents())
def test_html_and_text_share_ordinals(
    html_segments: list[Segment], text_segments: list[Segment]
) -> None:
    html = source_of(html_segments)
    check_text(text_segments, ordinals_of(html_segments), html)
    prepared = prepare_content(html, source_of(text_segments), exclude=EXCLUDE)
    assert prepared.html_template == expected(
        html_segments, ordinals_of(html_segments), template=True
    )


# -- tokens of the rewritten links round-trip -------------------------------------------

RING = KeyRing.generate()
BASE = "http://127.0.0.1:8080"
TRACKED = re.compile(re.escape(BASE) + r"/c/([A-Za-z0-9_-]+)")
ids = st.integers(min_value=1, max_value=2**62)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    html_documents(),
    text_documents(),
    ids,
    ids,
    st.lists(ids, min_size=60, max_size=60, unique=True),
)
def test_rewritten_links_carry_tokens_that_round_trip(
    html_segments: list[Segment],
    text_segments: list[Segment],
    delivery_id: int,
    message_id: int,
    url_ids: list[int],
) -> None:
    prepared = prepare_content(source_of(html_segments), source_of(text_segments), exclude=EXCLUDE)
    assume(len(prepared.links) <= len(url_ids))
    url_id = {link.ordinal: url_ids[link.ordinal - 1] for link in prepared.links}

    def link(n: int, values: tuple[Any, ...] = ()) -> str:
        token = LinkToken(delivery_id, message_id, url_id[n], tuple(str(v) for v in values))
        return tracking_link(BASE, "click", RING.sign_link(token))

    ordinals = ordinals_of(html_segments)
    ordinals = ordinals_of(text_segments, ordinals)
    for template, segments in (
        (prepared.html_template, html_segments),
        (prepared.text_template, text_segments),
    ):
        tokens = TRACKED.findall(render(template or "", link))
        links = [s for s in segments if isinstance(s, Link)]
        assert [RING.verify_link(t) for t in tokens] == [
            LinkToken(delivery_id, message_id, url_id[ordinals[s.url]], s.values) for s in links
        ]


# -- anything at all -----------------------------------------------------------------------

soup = st.lists(
    st.one_of(
        st.text(alphabet="<>/!-=\"' \n\rabhrefAHREFbody[]CDATA?&;#{}%x", max_size=10),
        st.sampled_from(
            [
                '<a href="https://a.example/">',
                "<a href=https://b.example/x ",
                "<area href='http://c.example'",
                "<body>",
                "<BODY",
                "<!--",
                "-->",
                "<script>",
                "</script>",
                "<![CDATA[",
                "]]>",
                "<![if",
                "</a>",
                "<textarea>",
                "&amp;",
                "https://d.example/(x)",
                "{{ x }}",
                "{%",
                "%}",
                "{#",
                "#}",
                "{% raw %}",
                "{% endraw %}",
                "<!DOCTYPE",
                "<?",
                "<a data-msgtrack=off href=https://e.example/>",
            ]
        ),
    ),
    max_size=25,
).map("".join)


CALL = re.compile(r"([\"']?)\{\{ _msgtrack_link\(\d+(?:, \(\(.*?\),\))?\) \}\}\1")


def chunks_in_order(chunks: list[str], source: str) -> bool:
    position = 0
    for chunk in chunks:
        found = source.find(chunk, position)
        if found < 0:
            return False
        position = found + len(chunk)
    return True


@settings(max_examples=300, deadline=None)
@given(soup)
def test_any_input_is_rewritten_in_place_or_refused_clearly(source: str) -> None:
    try:
        prepared = prepare_content(source, source)
    except PersonalizationError:
        return
    html_template, text_template = prepared.html_template or "", prepared.text_template or ""
    assert html_template.count(BEACON) == 1
    # Outside the rewritten values and the beacon, every byte is the input's, in order.
    html_chunks = [c for part in CALL.split(html_template)[::2] for c in part.split(BEACON)]
    assert chunks_in_order(html_chunks, source)
    text_template = re.sub(r'\{\{ "\{" \}\}(?=\{\{ _msgtrack_link\()', "{", text_template)
    assert chunks_in_order(CALL.split(text_template)[::2], source)
    if "http" not in source.lower():
        assert prepared.links == []
        assert html_template.replace(BEACON, "", 1) == source
        assert text_template == source

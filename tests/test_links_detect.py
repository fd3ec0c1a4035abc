"""Which links of a content are tracked, with which label and category (SPEC §2)."""

from __future__ import annotations

from typing import Any

import jinja2
import pytest

from msgtrack.links.detect import find_text_links, scan_html, unescape_attribute
from msgtrack.links.personalize import PersonalizationError
from msgtrack.links.rewrite import BEACON, DetectedLink, prepare_content

RENDERED_BEACON = BEACON.replace("{{ _msgtrack_beacon() }}", "BEACON")


def render(template: str, **context: Any) -> str:
    env = jinja2.Environment(keep_trailing_newline=True, autoescape=False)  # noqa: S701

    def link(n: int, values: tuple[Any, ...] = ()) -> str:
        return f"https://t.example/c/T{n}" + "".join(f"/{v}" for v in values)

    return env.from_string(template).render(
        _msgtrack_link=link, _msgtrack_beacon=lambda: "BEACON", **context
    )


def html_urls(html: str, **kwargs: Any) -> list[str]:
    return [link.url for link in prepare_content(html, None, **kwargs).links]


def text_urls(text: str, **kwargs: Any) -> list[str]:
    return [link.url for link in prepare_content(None, text, **kwargs).links]


# -- what is tracked in HTML ---------------------------------------------------------

NOT_TRACKED = [
    '<a href="mailto:ann@example.com">m</a>',
    '<a href="MAILTO:ann@example.com">m</a>',
    '<a href="tel:+33123456789">t</a>',
    '<a href="#top">f</a>',
    '<a href="#">f</a>',
    '<a href="javascript:void(0)">j</a>',
    '<a href=" JavaScript:alert(1)">j</a>',
    '<a href="data:text/html,hi">d</a>',
    '<a href="/relative/page">r</a>',
    '<a href="page.html">r</a>',
    '<a href="?q=1">r</a>',
    '<a href="//cdn.example/x">r</a>',
    '<a href="ftp://files.example/x">o</a>',
    '<a href="sms:+331">o</a>',
    '<a href="https:relative">o</a>',
    '<a href="">e</a>',
    "<a href>e</a>",
    "<a name=x>no href</a>",
    '<a href="{{ unsubscribe_url }}">unsubscribe</a>',
    '<a href="{{ mirror_url }}">web version</a>',
    '<a href="{{unsubscribe_url}}">unsubscribe</a>',
    '<a href="https://a.example/" data-msgtrack="off">off</a>',
    "<a DATA-MSGTRACK='OFF' href=https://a.example/>off</a>",
    '<a data-msgtrack=" off " href="https://a.example/">off</a>',
    '<area href="https://a.example/" data-msgtrack="off">',
    '<link href="https://a.example/style.css" rel=stylesheet>',
    '<img src="https://a.example/logo.png">',
    '<base href="https://a.example/">',
    '<!-- <a href="https://a.example/">x</a> -->',
    "<script>var a = '<a href=\"https://a.example/\">';</script>",
    "<style>a[href='https://a.example/'] {color: red}</style>",
    '<textarea><a href="https://a.example/">x</a></textarea>',
    '<title><a href="https://a.example/">x</a></title>',
    '{# <a href="https://a.example/">x</a> #}',
    '{% raw %}<a href="https://a.example/">x</a>{% endraw %}',
    "{{ '<a href=\"https://a.example/\">x</a>' }}",
    "<p>see https://a.example/ in HTML text</p>",
    '<a href="{{ base_url }}/page">template origin</a>',
]


@pytest.mark.parametrize("html", NOT_TRACKED)
def test_links_left_alone(html: str) -> None:
    prepared = prepare_content(html, None)
    assert prepared.links == []
    assert prepared.html_template == BEACON + html


TRACKED = [
    ('<a href="https://a.example/">x</a>', "https://a.example/"),
    ('<a href="http://a.example/x?y=1">x</a>', "http://a.example/x?y=1"),
    ('<a href="HTTPS://A.example/X">x</a>', "HTTPS://A.example/X"),
    ('<a href="hTTp://a.example">x</a>', "hTTp://a.example"),
    ('<a href="  https://a.example/x\n ">x</a>', "https://a.example/x"),
    ("<a href=https://a.example/x>x</a>", "https://a.example/x"),
    ("<a href='https://a.example/x'>x</a>", "https://a.example/x"),
    ('<a href = "https://a.example/x">x</a>', "https://a.example/x"),
    ('<A HREF="https://a.example/x">x</A>', "https://a.example/x"),
    ('<area shape=rect coords="0,0,9,9" href="https://a.example/map">', "https://a.example/map"),
    ('<a href="https://a.example/?a=1&amp;b=2">x</a>', "https://a.example/?a=1&b=2"),
    (
        '<a href="https://a.example/?a=1&region=fr&copy=2">x</a>',
        "https://a.example/?a=1&region=fr&copy=2",
    ),
    ('<a href="https://a.example/&copy;&#47;&#x41;">x</a>', "https://a.example/©/A"),
    ('<a href="https://a.example/" data-msgtrack="on">x</a>', "https://a.example/"),
    ('<a href="https://a.example/" href="https://b.example/">first wins</a>', "https://a.example/"),
    ('<a href="https://a.example/"/>self-closing', "https://a.example/"),
]


@pytest.mark.parametrize(("html", "url"), TRACKED)
def test_links_tracked(html: str, url: str) -> None:
    assert html_urls(html) == [url]


def test_only_the_href_value_changes_and_quotes_are_kept() -> None:
    html = (
        "<a class=x href='https://a.example/1' id=y>1</a>"
        '<a href="https://a.example/2">2</a>'
        "<a href=https://a.example/3 title=t>3</a>"
        "<a href = 'https://a.example/4' >4</a>"
    )
    assert prepare_content(html, None).html_template == BEACON + (
        "<a class=x href='{{ _msgtrack_link(1) }}' id=y>1</a>"
        '<a href="{{ _msgtrack_link(2) }}">2</a>'
        '<a href="{{ _msgtrack_link(3) }}" title=t>3</a>'
        "<a href = '{{ _msgtrack_link(4) }}' >4</a>"
    )


def test_exclusion_patterns_are_shell_globs_on_the_whole_url() -> None:
    html = (
        '<a href="https://a.example/private/x">1</a>'
        '<a href="https://a.example/public">2</a>'
        '<a href="https://shop.example.org/p">3</a>'
        '<a href="https://A.EXAMPLE/private/y">4</a>'
    )
    text = "https://a.example/private/z https://b.example/ https://x.example.org/q\n"
    exclude = ["https://a.example/private/*", "*.example.org/*"]
    prepared = prepare_content(html, text, exclude=exclude)
    assert [link.url for link in prepared.links] == [
        "https://a.example/public",
        "https://A.EXAMPLE/private/y",  # case-sensitive, like the URL
        "https://b.example/",
    ]
    assert 'href="https://a.example/private/x"' in (prepared.html_template or "")
    assert prepared.text_template == (
        "https://a.example/private/z {{ _msgtrack_link(3) }} https://x.example.org/q\n"
    )
    assert html_urls('<a href="https://a.example/">x</a>', exclude=["a.example"]) == [
        "https://a.example/"
    ]  # not a substring match


# -- labels and categories -------------------------------------------------------------


@pytest.mark.parametrize(
    ("html", "label"),
    [
        ('<a href="https://a.example/" data-msgtrack-label="Promo" title="T">text</a>', "Promo"),
        ('<a href="https://a.example/" title=" Our  shop ">text</a>', "Our shop"),
        ('<a href="https://a.example/">  Buy <b>now</b>,\n  <i>today</i>  </a>', "Buy now, today"),
        ('<a href="https://a.example/">Fish &amp; chips&nbsp;!</a>', "Fish & chips !"),
        ('<a href="https://a.example/"><!-- c -->Go</a>', "Go"),
        ('<a href="https://a.example/"><img src="x.png" alt="Logo"></a>', "Logo"),
        ('<a href="https://a.example/"><img src="x.png" alt=""><img alt="Second"></a>', "Second"),
        ('<a href="https://a.example/"><img src="x.png"></a>', "https://a.example/"),
        ('<a href="https://a.example/" title="">  </a>', "https://a.example/"),
        ('<a href="https://a.example/" data-msgtrack-label="A &amp; B">x</a>', "A & B"),
        (
            '<a href="https://a.example/">Hi {{ recipient.first_name }}</a>',
            "Hi {{ recipient.first_name }}",
        ),
        ('<map><area href="https://a.example/" alt="Region"></map>', "Region"),
        ('<area href="https://a.example/" title="T" alt="Region">', "T"),
        ('<a href="https://a.example/">one<a href="https://b.example/">two</a>', "one"),
        ('<a href="https://a.example/">unclosed to the end', "unclosed to the end"),
    ],
)
def test_labels(html: str, label: str) -> None:
    assert prepare_content(html, None).links[0].label == label


def test_label_and_category_come_from_the_first_anchor_that_has_one() -> None:
    html = (
        '<a href="https://a.example/"><img src="x.png"></a>'
        '<a href="https://a.example/" data-msgtrack-category="social:facebook">Share</a>'
        '<a href="https://a.example/" data-msgtrack-category="other">Later</a>'
        '<a href="https://b.example/" data-msgtrack-category=" product ">B</a>'
    )
    text = "https://a.example/ https://c.example/\n"
    assert prepare_content(html, text).links == [
        DetectedLink(1, "https://a.example/", "Share", "social:facebook"),
        DetectedLink(2, "https://b.example/", "B", "product"),
        DetectedLink(3, "https://c.example/", "https://c.example/", ""),
    ]


def test_one_ordinal_per_distinct_url_across_both_parts() -> None:
    html = (
        '<a href="https://a.example/?x=1&amp;y=2">A</a>'
        '<a href="https://b.example/">B</a>'
        "<a href='https://a.example/?x=1&y=2'>A again</a>"
        '<a href="https://a.example/?x=1&amp;y=2" data-msgtrack="off">off</a>'
    )
    text = "https://c.example/ then https://a.example/?x=1&y=2 and https://b.example/\n"
    prepared = prepare_content(html, text)
    assert [(link.ordinal, link.url) for link in prepared.links] == [
        (1, "https://a.example/?x=1&y=2"),
        (2, "https://b.example/"),
        (3, "https://c.example/"),
    ]
    assert prepared.text_template == (
        "{{ _msgtrack_link(3) }} then {{ _msgtrack_link(1) }} and {{ _msgtrack_link(2) }}\n"
    )


# -- the beacon ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("html", "expected"),
    [
        ("<html><body><p>x</p></body></html>", "<html><body>{B}<p>x</p></body></html>"),
        ("<BODY class=\"a\" style='b'\n>x", "<BODY class=\"a\" style='b'\n>{B}x"),
        ("<p>fragment</p>", "{B}<p>fragment</p>"),
        ("", "{B}"),
        ("<!DOCTYPE html>\n<p>x</p>\n", "{B}<!DOCTYPE html>\n<p>x</p>\n"),
        ("<!-- <body> --><body>x", "<!-- <body> --><body>{B}x"),
        ("<script>'<body>'</script><body>x", "<script>'<body>'</script><body>{B}x"),
        ("<body>a<body>b", "<body>{B}a<body>b"),
        ("<tbody><tr><td>x</td></tr></tbody>", "{B}<tbody><tr><td>x</td></tr></tbody>"),
    ],
)
def test_one_beacon_right_after_body(html: str, expected: str) -> None:
    assert prepare_content(html, None).html_template == expected.replace("{B}", BEACON)


def test_beacon_renders_as_a_one_pixel_image() -> None:
    template = prepare_content("<body>x</body>", None).html_template or ""
    assert render(template) == (
        '<body><img src="BEACON" width="1" height="1" alt=""'
        ' style="display:block;width:1px;height:1px;border:0">x</body>'
    )


# -- byte identity on awkward documents ------------------------------------------------

AWKWARD = """<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN" "x.dtd">
<html xmlns:v="urn:schemas-microsoft-com:vml"><head>
<meta http-equiv=Content-Type content="text/html; charset=utf-8" />
<!--[if mso]><xml><o:OfficeDocumentSettings></o:OfficeDocumentSettings></xml><![endif]-->
<style type="text/css">@media (max-width:600px){.x{width:100%!important}}
a[href^="tel"]{color:inherit}</style>
<title>News &amp; more</title></head>
<body bgcolor="#ffffff" style="margin:0"><![if !mso]><div><![endif]>
<table role=presentation><tr><td align=center>&nbsp;&copy; 2024 &#8212; caf&eacute;
<a href='https://a.example/?utm_source=news&amp;utm_medium=email' target=_blank
   style="color:#000">Shop &gt; now</a> <a href=https://b.example/x/ >b</a>
<!----><!---><a href="https://c.example/">after abrupt comments</a><!-- x --!>
<![CDATA[ not > a link ]]> <? pi ?> <a href="https://d.example/" <b>odd</b>
<a href="https://e.example/">e</a> <input value="<a href='https://no.example/'>">
<svg><a href="https://f.example/"><title>svg title</title></a></svg>
</td></tr></table></body></html>
"""


def test_awkward_document_only_changes_tracked_values() -> None:
    prepared = prepare_content(AWKWARD, None)
    assert [link.url for link in prepared.links] == [
        "https://a.example/?utm_source=news&utm_medium=email",
        "https://b.example/x/",
        "https://c.example/",
        "https://d.example/",
        "https://e.example/",
        "https://f.example/",
    ]
    expected = (
        AWKWARD.replace("'https://a.example/?utm_source=news&amp;utm_medium=email'", "'T1'")
        .replace("href=https://b.example/x/ >", 'href="T2" >')
        .replace('"https://c.example/"', '"T3"')
        .replace('"https://d.example/"', '"T4"')
        .replace('"https://e.example/"', '"T5"')
        .replace('"https://f.example/"', '"T6"')
        .replace('style="margin:0">', 'style="margin:0">' + RENDERED_BEACON, 1)
    )
    rendered = render(prepared.html_template or "")
    for n in range(1, 7):
        rendered = rendered.replace(f"https://t.example/c/T{n}", f"T{n}")
    assert rendered == expected


# -- template syntax in HTML -------------------------------------------------------------


def test_personalized_links() -> None:
    url = "https://a.example/p/{{ recipient.id }}?n={{ recipient.first_name }}"
    for html in (f'<a href="{url}">x</a>', f"<a href={url}>x</a>"):
        prepared = prepare_content(html, f"Go: {url}\n")
        assert prepared.links == [DetectedLink(1, url, "x", "")]
        call = "{{ _msgtrack_link(1, ((recipient.id), (recipient.first_name),)) }}"
        assert prepared.html_template == f'{BEACON}<a href="{call}">x</a>'
        assert prepared.text_template == f"Go: {call}\n"
        recipient = {"id": 42, "first_name": "Zoé"}
        assert render(prepared.text_template or "", recipient=recipient) == (
            "Go: https://t.example/c/T1/42/Zoé\n"
        )


def test_personalized_link_with_whitespace_control_and_filters() -> None:
    html = "<a href=\"https://a.example/{{- recipient.id -}}/{{ recipient['x'] | upper }}\">x</a>"
    template = prepare_content(html, None).html_template or ""
    assert "_msgtrack_link(1, ((recipient.id), (recipient['x'] | upper),))" in template
    assert render(template, recipient={"id": 1, "x": "q"}).endswith(
        '<a href="https://t.example/c/T1/1/Q">x</a>'
    )


@pytest.mark.parametrize(
    "url",
    [
        "https://{{ h }}.example/",
        "https://a.example:{{ p }}/",
        "{{ scheme }}://a.example/x",
        "https://a.example{{ path }}",
        "https://user@{{ h }}/x",
        "https://a.example/{% if x %}a{% endif %}",
    ],
)
def test_personalization_outside_path_and_query_is_refused(url: str) -> None:
    if url.startswith("https"):
        with pytest.raises(PersonalizationError, match="host|expressions"):
            prepare_content(f'<a href="{url}">x</a>', None)
    else:  # not an http(s) URL as written: an author's template, left alone
        assert prepare_content(f'<a href="{url}">x</a>', None).links == []


@pytest.mark.parametrize("url", ["https://{{ h }}.example/", "https://a.example:{{ p }}/"])
def test_personalized_host_or_port_is_refused_in_text_too(url: str) -> None:
    with pytest.raises(PersonalizationError, match="scheme, host or port"):
        prepare_content(None, f"see {url}\n")


def test_template_statements_around_links() -> None:
    html = (
        '{% if recipient.vip %}<a href="https://vip.example/">VIP</a>{% endif %}'
        '<a {% if x %}class="y"{% endif %} href="https://a.example/">a</a>'
        '<a href="https://b.example/" {{ extra }}>b</a>'
        "<p>{{ a > b }} <a href=https://c.example/{{recipient.id}}>c</a></p>"
    )
    prepared = prepare_content(html, None)
    assert [link.url for link in prepared.links] == [
        "https://vip.example/",
        "https://a.example/",
        "https://b.example/",
        "https://c.example/{{recipient.id}}",
    ]
    assert render(
        prepared.html_template or "", recipient={"vip": True, "id": 9}, x=1, extra="", a=1, b=0
    ) == (
        RENDERED_BEACON + '<a href="https://t.example/c/T1">VIP</a>'
        '<a class="y" href="https://t.example/c/T2">a</a>'
        '<a href="https://t.example/c/T3" >b</a>'
        '<p>True <a href="https://t.example/c/T4/9">c</a></p>'
    )


def test_attribute_unescaping_follows_browsers() -> None:
    assert unescape_attribute("a=1&amp;b=2&lt;&gt;") == "a=1&b=2<>"
    assert unescape_attribute("?a=1&region=fr&not=2&copy") == "?a=1&region=fr&not=2©"
    assert unescape_attribute("&copy;&copy &notit;&#x27;&#39;&unknown;") == "©© &notit;''&unknown;"


def test_scan_reports_exact_spans() -> None:
    html = "<p>x</p>\n<a  title='t'\n  href =\t'https://a.example/'>y</a><body>"
    scan = scan_html(html)
    (link,) = scan.links
    assert html[link.start : link.end] == "'https://a.example/'"
    assert link.quote == "'"
    assert scan.body_end == len(html)


# -- the text part ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "urls"),
    [
        ("(https://a.example/x).", ["https://a.example/x"]),
        ("[https://a.example/y];", ["https://a.example/y"]),
        ("<https://a.example/z>", ["https://a.example/z"]),
        ("{https://a.example/w}", ["https://a.example/w"]),
        ('"https://a.example/q"', ["https://a.example/q"]),
        ("'https://a.example/q'", ["https://a.example/q"]),
        ("«https://a.example/q»", ["https://a.example/q"]),
        (
            "See https://a.example/x, https://a.example/y; https://a.example/z!",
            [
                "https://a.example/x",
                "https://a.example/y",
                "https://a.example/z",
            ],
        ),
        (
            "Really https://a.example/x?! Or https://a.example/y: no.",
            [
                "https://a.example/x",
                "https://a.example/y",
            ],
        ),
        (
            "https://en.example/wiki/Foo_(bar) and (https://en.example/wiki/Foo_(bar))",
            [
                "https://en.example/wiki/Foo_(bar)",
                "https://en.example/wiki/Foo_(bar)",
            ],
        ),
        ("[link](https://a.example/x)", ["https://a.example/x"]),
        ("https://a.example/?q=a,b&r=1.", ["https://a.example/?q=a,b&r=1"]),
        ("https://a.example/it's ok", ["https://a.example/it's"]),
        ("**https://a.example/b**", ["https://a.example/b"]),
        ("HTTP://A.EXAMPLE/X.", ["HTTP://A.EXAMPLE/X"]),
        ("https://a.example:8080/x", ["https://a.example:8080/x"]),
        ("line https://a.example/x\nnext", ["https://a.example/x"]),
        (
            "https://a.example/{{ recipient.id }}/{{ recipient.first_name }}.",
            [
                "https://a.example/{{ recipient.id }}/{{ recipient.first_name }}",
            ],
        ),
        ("{https://a.example/{{ x }}}", ["https://a.example/{{ x }}"]),
        ("https://a.example/{% if x %}a{% endif %}", ["https://a.example/"]),
        ("mailto:a@b.example tel:+33 ftp://a.example/ www.a.example //a.example", []),
        ("xhttps://a.example/ git+https://a.example/ https:// https:///x", []),
        ("{{ unsubscribe_url }} {{ 'https://a.example/' }} {# https://a.example/ #}", []),
        ("{% raw %}https://a.example/{% endraw %}", []),
    ],
)
def test_text_links(text: str, urls: list[str]) -> None:
    assert [link.url for link in find_text_links(text)] == urls
    assert text_urls(text) == list(dict.fromkeys(urls))


def test_text_rewriting_renders_back_around_the_links() -> None:
    text = (
        "Hello {{ recipient.first_name }},\n"
        "(https://a.example/x). [https://a.example/y]; <https://a.example/z>\n"
        "{https://a.example/w} {https://a.example/w}}\n"
        "Unsubscribe: {{ unsubscribe_url }}\n"
    )
    prepared = prepare_content(None, text)
    assert render(
        prepared.text_template or "", recipient={"first_name": "Ann"}, unsubscribe_url="U"
    ) == (
        "Hello Ann,\n"
        "(https://t.example/c/T1). [https://t.example/c/T2]; <https://t.example/c/T3>\n"
        "{https://t.example/c/T4} {https://t.example/c/T4}}\n"
        "Unsubscribe: U\n"
    )


def test_no_parts() -> None:
    assert prepare_content(None, None).links == []
    assert prepare_content(None, "").text_template == ""

"""Rendering and sending to the outbox: messages per second for a realistic newsletter.

    python benchmarks/bench_render.py --recipients 100000 [--backend sqlite|postgresql]

A ~10 KB HTML newsletter with 30 tracked links (two personalized), a text part, 5 % text-only
recipients; the whole send run is timed (analysis, rendering, signing every link, MIME
building, one .eml per message, status updates).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import Timer, bench_context, write_recipients_csv  # noqa: E402

from msgtrack.delivery.create import create_delivery  # noqa: E402
from msgtrack.delivery.send import send_delivery  # noqa: E402
from msgtrack.delivery.transports import OutboxTransport  # noqa: E402
from msgtrack.storage.recipients import import_recipients_csv  # noqa: E402

ARTICLE = """
<tr><td style="padding:16px;font-family:Helvetica,Arial,sans-serif;font-size:15px;color:#333">
  <h2 style="margin:0 0 8px">{title}</h2>
  <p style="margin:0 0 12px">Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod
  tempor incididunt ut labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud
  exercitation ullamco laboris nisi ut aliquip ex ea commodo consequat.</p>
  <a href="https://shop.example/article/{n}?utm_source=news&amp;utm_medium=email" title="{title}">
    <img src="https://cdn.example/img/{n}.jpg" width="560" alt="{title}"></a>
  <p><a href="https://shop.example/buy/{n}" style="background:#c00;color:#fff;padding:8px 16px">Buy now</a></p>
</td></tr>"""


def newsletter() -> tuple[str, str]:
    articles = "".join(ARTICLE.format(n=n, title=f"Article number {n}") for n in range(13))
    html = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>News</title>
<style>body{{margin:0;background:#eee}} .wrap{{max-width:600px;margin:auto;background:#fff}}</style></head>
<body>
<table class="wrap" role="presentation" width="100%">
<tr><td><p>Hello {{{{ recipient.first_name }}}} {{{{ recipient.last_name }}}}, here is the news from {{{{ recipient.city }}}}.</p>
<p><a href="https://shop.example/account/{{{{ recipient.customer_id }}}}">Your account</a> ·
<a href="https://shop.example/offers?c={{{{ recipient.customer_id }}}}&amp;city={{{{ recipient.city }}}}">Your offers</a></p></td></tr>
{articles}
<tr><td style="font-size:12px;color:#777">
<a href="https://facebook.example/shop">Facebook</a> · <a href="https://x.example/shop">X</a> ·
<a href="mailto:help@shop.example">help@shop.example</a><br>
<a href="{{{{ mirror_url }}}}">View in your browser</a> · <a href="{{{{ unsubscribe_url }}}}">Unsubscribe</a>
</td></tr></table>
</body></html>
"""
    text = (
        "Hello {{ recipient.first_name }},\n\n"
        + "".join(
            f"Article {n}: https://shop.example/article/{n}?utm_source=news&utm_medium=email\n"
            for n in range(13)
        )
        + "\nUnsubscribe: {{ unsubscribe_url }}\n"
    )
    return html, text


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipients", type=int, default=100_000)
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    args = parser.parse_args()
    html, text = newsletter()
    with bench_context(args.backend) as ctx:
        csv_path = ctx.settings.home / "people.csv"
        write_recipients_csv(csv_path, args.recipients)
        with Timer() as t_import:
            import_recipients_csv(ctx, csv_path)
        delivery_id = create_delivery(
            ctx, name="bench", subject="News for {{ recipient.first_name }}", html=html, text=text
        )
        outbox = ctx.settings.home / "outbox"
        with Timer() as t_send:
            report = send_delivery(ctx, delivery_id, OutboxTransport(outbox))
        total_bytes = sum(p.stat().st_size for p in outbox.iterdir())
    print(f"backend={args.backend} recipients={args.recipients} html_bytes={len(html)}")
    print(f"import: {t_import.seconds:.1f} s ({args.recipients / t_import.seconds:,.0f} rows/s)")
    print(
        f"send to outbox: {t_send.seconds:.1f} s, {report.sent / t_send.seconds:,.0f} messages/s, "
        f"{total_bytes / report.sent / 1024:.1f} KiB per message, sent={report.sent}"
    )


if __name__ == "__main__":
    main()

"""Tables, as SQLAlchemy Core metadata. Migrations (Alembic) are generated from this.

Times are UTC (``UTCDateTime``). Counters that reports read live in aggregate tables
kept current at ingestion (see DESIGN.md, "Aggregates"), so reports never scan
``tracking_logs``.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from msgtrack.storage.types import UTCDateTime

# BIGINT on PostgreSQL, INTEGER on SQLite (only INTEGER PRIMARY KEY is the rowid).
Id = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# -- recipients store --------------------------------------------------------------

recipients = Table(
    "recipients",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("email", String(320), nullable=False),
    # Lower-cased address: emails are compared case-insensitively.
    Column("email_key", String(320), nullable=False, unique=True),
    Column("first_name", String(200)),
    Column("last_name", String(200)),
    Column("email_format", String(10), nullable=False, server_default="html"),
    Column("fields", Text, nullable=False, server_default="{}"),  # JSON object
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

# Addresses that must not be targeted: kind 'quarantine' or 'denylist'.
quarantines = Table(
    "quarantines",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("address", String(320), nullable=False, unique=True),  # lower-cased
    Column("kind", String(20), nullable=False),
    Column("reason", String(40), nullable=False),
    Column("failure_type", String(10)),
    Column("error_count", Integer, nullable=False, server_default="1"),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime),
    Column("released_at", UTCDateTime),
)

# Every quarantine change: counted errors, quarantines, denylistings, clears, releases.
quarantine_history = Table(
    "quarantine_history",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("address", String(320), nullable=False),
    Column("action", String(20), nullable=False),  # error, quarantine, denylist, clear, release
    Column("kind", String(20)),
    Column("reason", String(40)),
    Column("failure_type", String(10)),
    Column("error_count", Integer),
    Column("message_id", Id),
    Column("note", Text),
    Column("at", UTCDateTime, nullable=False),
    Index("ix_quarantine_history_address_at", "address", "at"),
)

# Global opt-out, one row per recipient who unsubscribed.
opt_outs = Table(
    "opt_outs",
    metadata,
    Column("recipient_id", Id, ForeignKey("recipients.id", ondelete="CASCADE"), primary_key=True),
    Column("delivery_id", Id),
    Column("message_id", Id),
    Column("source", String(20), nullable=False),  # form | one-click | mailto | import
    Column("created_at", UTCDateTime, nullable=False),
)

# -- deliveries store --------------------------------------------------------------

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", String(400), nullable=False),
    Column("subject", Text, nullable=False),
    Column("from_addr", String(400), nullable=False),
    Column("html", Text),  # content as written by the author
    Column("text", Text),
    Column("html_template", Text),  # content with tracked links rewritten
    Column("text_template", Text),
    Column("channel", String(20), nullable=False, server_default="email"),
    Column("typology", String(20), nullable=False, server_default="normal"),
    # draft, prepared, sending, sent, stopped, failed
    Column("state", String(20), nullable=False, server_default="draft"),
    Column("created_at", UTCDateTime, nullable=False),
    Column("prepared_at", UTCDateTime),
    Column("started_at", UTCDateTime),
    Column("sent_at", UTCDateTime),
    # Analysis: initial population and exclusions by cause.
    Column("initial_population", Integer, nullable=False, server_default="0"),
    Column("rejected_quarantined", Integer, nullable=False, server_default="0"),
    Column("rejected_denylisted", Integer, nullable=False, server_default="0"),
    Column("rejected_opted_out", Integer, nullable=False, server_default="0"),
    Column("rejected_invalid", Integer, nullable=False, server_default="0"),
    Column("rejected_duplicate", Integer, nullable=False, server_default="0"),
    Column("to_deliver", Integer, nullable=False, server_default="0"),
    # Compare-and-set ownership of a send run, with a lease so a crashed run is resumable.
    Column("send_run", String(40)),
    Column("send_lease_until", UTCDateTime),
    Column("last_error", Text),
    # Soft failures are retried until started_at + validity_seconds, then given up.
    Column("validity_seconds", Integer, nullable=False, server_default="432000"),
)

tracked_urls = Table(
    "tracked_urls",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("delivery_id", Id, ForeignKey("deliveries.id", ondelete="CASCADE"), nullable=False),
    Column("ordinal", Integer, nullable=False),  # position of the link in the content
    Column("url", Text, nullable=False),  # as written, personalization included
    Column("label", Text, nullable=False, server_default=""),
    Column("category", String(200), nullable=False, server_default=""),
    # click, open, opt-out, mirror, web, transaction
    Column("type", String(20), nullable=False, server_default="click"),
    Column("tracked", Boolean, nullable=False, server_default="1"),
    UniqueConstraint("delivery_id", "ordinal", name="uq_tracked_urls_delivery_ordinal"),
)

messages = Table(
    "messages",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("delivery_id", Id, ForeignKey("deliveries.id", ondelete="CASCADE"), nullable=False),
    Column("recipient_id", Id, ForeignKey("recipients.id", ondelete="SET NULL")),
    Column("email", String(320), nullable=False),
    Column("domain", String(255), nullable=False),
    # pending, in_flight, sent, failed, ignored, unknown
    Column("status", String(20), nullable=False, server_default="pending"),
    Column("failure_type", String(10)),  # hard, soft, ignored
    Column("failure_reason", Text),
    # The qualified reason (user_unknown, mailbox_full, …) of the failure text above.
    Column("failure_code", String(20)),
    Column("text_only", Boolean, nullable=False, server_default="0"),
    Column("seed", Boolean, nullable=False, server_default="0"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", UTCDateTime),
    Column("sent_at", UTCDateTime),
    Column("size_bytes", Integer),
    # When the message got its final status (sent or failed): its throughput bucket.
    Column("done_at", UTCDateTime),
    # Aggregates kept at ingestion.
    Column("first_event_at", UTCDateTime),
    Column("first_click_at", UTCDateTime),
    Column("open_count", Integer, nullable=False, server_default="0"),
    Column("click_count", Integer, nullable=False, server_default="0"),
    UniqueConstraint("delivery_id", "recipient_id", name="uq_messages_delivery_recipient"),
    Index("ix_messages_delivery_status", "delivery_id", "status"),
    # a recipient's page: their newest messages
    Index("ix_messages_recipient", "recipient_id", "id"),
)

# -- tracking store ----------------------------------------------------------------

visitors = Table(
    "visitors",
    metadata,
    Column("id", String(40), primary_key=True),  # the random visitor cookie
    Column("recipient_id", Id),  # set once a click identifies the browser
    Column("first_seen_at", UTCDateTime, nullable=False),
    Column("last_seen_at", UTCDateTime, nullable=False),
    Column("user_agent", Text),
)

tracking_logs = Table(
    "tracking_logs",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    # Identity of the event in the event log: a replay can never insert it twice.
    Column("segment", String(120), nullable=False),
    Column("offset", BigInteger, nullable=False),
    Column("delivery_id", Id, nullable=False),
    Column("message_id", Id),
    Column("recipient_id", Id),
    Column("tracked_url_id", Id),
    Column("type", String(20), nullable=False),  # click, open, opt-out, mirror, web, transaction
    Column("visitor_id", String(40)),
    Column("at", UTCDateTime, nullable=False),
    Column("ip", String(64)),
    Column("user_agent", Text),
    # The destination the person was sent to, when personalization made it differ
    # from the tracked URL as registered.
    Column("url", Text),
    Column("amount", Float),
    Column("articles", Integer),
    UniqueConstraint("segment", "offset", name="uq_tracking_logs_segment_offset"),
    Index("ix_tracking_logs_delivery_at", "delivery_id", "at"),
    Index("ix_tracking_logs_recipient_at", "recipient_id", "at"),
)

# Confirmed unsubscriptions (form POST or RFC 8058 one-click POST): never events.
unsubscriptions = Table(
    "unsubscriptions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("segment", String(120), nullable=False),
    Column("offset", BigInteger, nullable=False),
    Column("delivery_id", Id, nullable=False),
    Column("message_id", Id),
    Column("recipient_id", Id),
    Column("source", String(20), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("ip", String(64)),
    Column("user_agent", Text),
    UniqueConstraint("segment", "offset", name="uq_unsubscriptions_segment_offset"),
    Index("ix_unsubscriptions_delivery_recipient", "delivery_id", "recipient_id"),
)

# Persons: one row per (delivery, visitor) on the visitor's first click.
delivery_persons = Table(
    "delivery_persons",
    metadata,
    Column("delivery_id", Id, primary_key=True),
    Column("visitor_id", String(40), primary_key=True),
    Column("first_click_at", UTCDateTime, nullable=False),
)

# Per-delivery counters, kept incrementally at send and ingestion time.
delivery_indicators = Table(
    "delivery_indicators",
    metadata,
    Column("delivery_id", Id, ForeignKey("deliveries.id", ondelete="CASCADE"), primary_key=True),
    Column("success", Integer, nullable=False, server_default="0"),
    Column("errors", Integer, nullable=False, server_default="0"),
    Column("text_only", Integer, nullable=False, server_default="0"),
    Column("recipient_opens", Integer, nullable=False, server_default="0"),
    Column("total_opens", Integer, nullable=False, server_default="0"),
    Column("recipient_clicks", Integer, nullable=False, server_default="0"),
    Column("person_clicks", Integer, nullable=False, server_default="0"),
    Column("total_clicks", Integer, nullable=False, server_default="0"),
    Column("opt_outs", Integer, nullable=False, server_default="0"),
    Column("unsubscriptions", Integer, nullable=False, server_default="0"),
    Column("mirror_views", Integer, nullable=False, server_default="0"),
    Column("visited_pages", Integer, nullable=False, server_default="0"),
    Column("transactions", Integer, nullable=False, server_default="0"),
    Column("amount", Float, nullable=False, server_default="0"),
    Column("articles", Integer, nullable=False, server_default="0"),
    Column("hard_bounces", Integer, nullable=False, server_default="0"),
    Column("soft_bounces", Integer, nullable=False, server_default="0"),
    Column("complaints", Integer, nullable=False, server_default="0"),
    Column("new_quarantines", Integer, nullable=False, server_default="0"),
)

# Messages read back from the bounce mailbox, one row per failed recipient: the
# (source_key, ordinal) key makes reading the same message again harmless.
bounces = Table(
    "bounces",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("source_key", String(64), nullable=False),  # sha256 of the raw message
    Column("ordinal", Integer, nullable=False, server_default="0"),
    # dsn, text, complaint, autoreply, delivered, unknown, unsubscribe
    Column("kind", String(20), nullable=False),
    Column("delivery_id", Id),
    Column("message_id", Id),
    Column("recipient", String(320)),
    Column("status", String(16)),
    Column("reply_code", String(3)),
    Column("reason", String(20), nullable=False),
    Column("failure_type", String(10), nullable=False),
    Column("diagnostic", Text),
    Column("matched", Boolean, nullable=False, server_default="0"),
    # How it was matched (verp, message-id) or why not (bad signature, no reference…).
    Column("match", String(60), nullable=False, server_default=""),
    Column("received_at", UTCDateTime, nullable=False),
    UniqueConstraint("source_key", "ordinal", name="uq_bounces_source_key_ordinal"),
    Index("ix_bounces_message_id", "message_id"),
    Index("ix_bounces_delivery_id", "delivery_id"),
)

# Per (delivery, internet domain): sends and distinct opening / clicking messages.
domain_stats = Table(
    "domain_stats",
    metadata,
    Column("delivery_id", Id, primary_key=True),
    Column("domain", String(255), primary_key=True),
    Column("sent", Integer, nullable=False, server_default="0"),
    Column("complaints", Integer, nullable=False, server_default="0"),
    Column("opens", Integer, nullable=False, server_default="0"),
    Column("clicks", Integer, nullable=False, server_default="0"),
)

# -- send-side aggregates (storage/send_stats.py) -----------------------------------
# Kept at send time and by bounce processing, rebuilt from the messages by recompute:
# the delivery reports read these, never a delivery's messages. success = sent and not
# a seed; errors = failed (as in delivery_indicators).

# Per (delivery, 15-minute UTC bucket of messages.done_at): throughput.
send_buckets = Table(
    "send_buckets",
    metadata,
    Column("delivery_id", Id, primary_key=True),
    Column("bucket", UTCDateTime, primary_key=True),
    Column("success", BigInteger, nullable=False, server_default="0"),
    Column("errors", BigInteger, nullable=False, server_default="0"),
    Column("success_bytes", BigInteger, nullable=False, server_default="0"),
    Column("error_bytes", BigInteger, nullable=False, server_default="0"),
    Index("ix_send_buckets_bucket", "bucket"),
)

# Per (delivery, domain): messages to deliver (at analysis), delivered, errors, hard and
# soft failures (a soft one may be a bounce of a delivered message), unsubscriptions.
domain_sends = Table(
    "domain_sends",
    metadata,
    Column("delivery_id", Id, primary_key=True),
    Column("domain", String(255), primary_key=True),
    Column("processed", BigInteger, nullable=False, server_default="0"),
    Column("delivered", BigInteger, nullable=False, server_default="0"),
    Column("errors", BigInteger, nullable=False, server_default="0"),
    Column("hard", BigInteger, nullable=False, server_default="0"),
    Column("soft", BigInteger, nullable=False, server_default="0"),
    Column("unsubscriptions", BigInteger, nullable=False, server_default="0"),
)

# Per (delivery, domain, qualified reason, failure type): failed messages, and delivered
# ones that bounced soft.
failure_stats = Table(
    "failure_stats",
    metadata,
    Column("delivery_id", Id, primary_key=True),
    Column("domain", String(255), primary_key=True),
    Column("reason", String(20), primary_key=True),
    Column("failure_type", String(10), primary_key=True),
    Column("messages", BigInteger, nullable=False, server_default="0"),
)

# Time-bucketed counters (SPEC §5): reports over time read these, never the tracking logs.
# One row per (delivery, metric, 15-minute UTC bucket, tracked URL; 0 when none).
# Metrics: the event types (click, open, opt-out, mirror, web, transaction) count events;
# recipient_open, recipient_click and person_click count firsts (a message's first event,
# its first click, a visitor's first click in the delivery) in the bucket they fell in, so
# cumulative sums give the distinct counts at any time.
BUCKET_MINUTES = 15
event_buckets = Table(
    "event_buckets",
    metadata,
    Column("delivery_id", Id, primary_key=True),
    Column("metric", String(20), primary_key=True),
    Column("bucket", UTCDateTime, primary_key=True),
    Column("tracked_url_id", Id, primary_key=True),
    Column("events", BigInteger, nullable=False, server_default="0"),
    Column("amount", Float, nullable=False, server_default="0"),
    Column("articles", BigInteger, nullable=False, server_default="0"),
    # Global reports read a date range across deliveries.
    Index("ix_event_buckets_metric_bucket", "metric", "bucket"),
)

# Distinct visitors per delivery (the first time each browser showed up in it), with what
# its user agent was parsed into: browsers and operating systems count visitors from here.
# visitor_id is the visitor cookie, or for cookieless events (a mail client loading the
# beacon) "m<message id>:<hash of the user agent>". The agent columns are those of the
# first event, so an earlier event arriving late can move the visitor to its own agent.
delivery_visitors = Table(
    "delivery_visitors",
    metadata,
    Column("delivery_id", Id, primary_key=True),
    Column("visitor_id", String(40), primary_key=True),
    Column("first_at", UTCDateTime, nullable=False),
    Column("browser", String(100), nullable=False, server_default=""),
    Column("browser_version", String(40), nullable=False, server_default=""),
    Column("os", String(100), nullable=False, server_default=""),
    Column("os_version", String(40), nullable=False, server_default=""),
    Column("device_class", String(10), nullable=False, server_default=""),
)

# User agents parsed at ingestion, per (delivery, hour, browser/OS, version, device class):
# events (pages), opens, clicks, and new visitors. dimension is 'browser' or 'os' (every
# event adds to one row of each; device classes are read from the browser rows);
# device_class is desktop, mobile, tablet, bot or other.
agent_buckets = Table(
    "agent_buckets",
    metadata,
    Column("delivery_id", Id, primary_key=True),
    Column("bucket", UTCDateTime, primary_key=True),  # 1-hour UTC bucket
    Column("dimension", String(10), primary_key=True),
    Column("name", String(100), primary_key=True),
    Column("version", String(40), primary_key=True),
    Column("device_class", String(10), primary_key=True),
    Column("events", BigInteger, nullable=False, server_default="0"),
    Column("opens", BigInteger, nullable=False, server_default="0"),
    Column("clicks", BigInteger, nullable=False, server_default="0"),
    Column("visitors", BigInteger, nullable=False, server_default="0"),
    Index("ix_agent_buckets_bucket", "bucket"),
)

# gmail.com <- googlemail.com: reports group aliases under one domain.
domain_aliases = Table(
    "domain_aliases",
    metadata,
    Column("alias", String(255), primary_key=True),
    Column("domain", String(255), nullable=False),
)

# Ingestion progress, one row per event log segment, committed with the rows it loaded.
ingest_checkpoints = Table(
    "ingest_checkpoints",
    metadata,
    Column("segment", String(120), primary_key=True),
    Column("offset", BigInteger, nullable=False),
    Column("done", Boolean, nullable=False, server_default="0"),
    Column("updated_at", UTCDateTime, nullable=False),
)

ingest_rejects = Table(
    "ingest_rejects",
    metadata,
    Column("segment", String(120), primary_key=True),
    Column("offset", BigInteger, primary_key=True),
    Column("reason", Text, nullable=False),
    Column("at", UTCDateTime, nullable=False),
)

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("token_hash", String(64), nullable=False, unique=True),  # sha256 hex
    Column("name", String(200), nullable=False, server_default="default"),
    Column("created_at", UTCDateTime, nullable=False),
)

# People who sign in to the web UI; only an argon2 hash of the password is kept.
users = Table(
    "users",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("password_hash", String(200), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)

# Signed-in sessions of the web UI: the cookie holds a random token, the table its hash,
# so signing out (or removing the user, or changing the password) ends it for good.
web_sessions = Table(
    "web_sessions",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("user_id", Id, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("csrf", String(64), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Index("ix_web_sessions_user", "user_id"),
)

"""Bounces, complaints and auto-replies read back from a mailbox: parsed (``parse``),
qualified by an ordered rule table (``rules``, ``qualify``), read from a maildir or
IMAP (``mailbox``) and recorded with their quarantines (``process``)."""

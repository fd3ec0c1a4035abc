"""Deliveries: create (content rewritten, tracked URLs registered), analyse (one message
per targeted recipient), render (personalized RFC 5322 messages) and send."""

"""The admin side: JSON API (and, later, the web UI). Not on the tracking hot path."""

"""msgtrack: self-hosted message tracking for email deliveries."""

__version__ = "0.1.0"

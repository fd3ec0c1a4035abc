"""The public tracking server and its local event log."""

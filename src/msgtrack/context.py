"""What a command or a server needs at hand: settings, the database, the signing keys."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from sqlalchemy.engine import Engine

from msgtrack.config import Settings, load_settings
from msgtrack.links.sign import KeyRing, load_keyring
from msgtrack.storage.db import make_engine, read_only


@dataclass
class Context:
    settings: Settings = field(default_factory=load_settings)

    @cached_property
    def engine(self) -> Engine:
        return make_engine(self.settings.db_url)

    @cached_property
    def reader(self) -> Engine:
        """The engine for read-only work (no write lock on SQLite)."""
        return read_only(self.engine)

    @cached_property
    def keyring(self) -> KeyRing:
        return load_keyring(self.settings.keys_file)

    def reload_keyring(self) -> KeyRing:
        self.__dict__.pop("keyring", None)
        return self.keyring

    def close(self) -> None:
        if "engine" in self.__dict__:
            self.engine.dispose()

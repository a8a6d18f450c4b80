"""htouch: record, check and learn from robot demonstrations with contact microphones."""

__version__ = "0.1.0"

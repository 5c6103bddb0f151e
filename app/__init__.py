"""Potluck desktop app (PySide6). Talks to the local node only through its HTTP API."""

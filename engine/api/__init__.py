"""The node's OpenAI-compatible HTTP API (local only, token auth)."""

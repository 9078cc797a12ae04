"""Identities: consumers, API keys, OAuth2 server, JWT verification."""

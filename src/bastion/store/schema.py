"""Table definitions. Changing them means adding an Alembic revision in ``migrations/versions``;
``tests/integration/test_identity_store.py`` checks that the migrations produce exactly these tables."""

from __future__ import annotations

from sqlalchemy import Column, Float, ForeignKey, Index, Integer, MetaData, String, Table, Text

__all__ = [
    "admin_accounts_table",
    "admin_recovery_codes_table",
    "admin_sessions_table",
    "admin_sign_in_codes_table",
    "api_keys_table",
    "consumers_table",
    "events_table",
    "identity_state_table",
    "inventory_observed_table",
    "metadata",
    "oauth_clients_table",
    "public_keys_table",
    "revoked_tokens_table",
    "route_traffic_table",
    "signing_keys_table",
]

metadata = MetaData()

events_table = Table(
    "events",
    metadata,
    Column("id", String(26), primary_key=True),  # ULID: sorts by time, used as the page cursor
    Column("time", Float, nullable=False),
    Column("type", String(64), nullable=False),
    Column("severity", String(16), nullable=False),
    Column("request_id", String(128)),
    Column("route", String(256)),
    Column("method", String(16)),
    Column("path", String(2048)),
    Column("source_ip", String(64)),
    Column("actor", String(256)),
    Column("reason", String(64)),
    Column("data", Text, nullable=False),  # JSON, already redacted
    Column("resource", String(256)),
    # The hash chain (events/chain.py): rows numbered per writer, each with its predecessor's hash.
    Column("chain", String(26)),
    Column("seq", Integer),
    Column("prev_hash", String(64)),
    Column("hash", String(64)),
    Index("ix_events_time", "time"),
    Index("ix_events_type", "type"),
    Index("ix_events_source_ip", "source_ip"),
    Index("ix_events_actor", "actor"),
    Index("ix_events_resource", "resource"),
    Index("ix_events_chain_seq", "chain", "seq", unique=True),
)

# -- identities (lists and maps are JSON text: portable between SQLite and PostgreSQL) --------------

consumers_table = Table(
    "consumers",
    metadata,
    Column("id", String(26), primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("status", String(16), nullable=False),  # active | disabled
    Column("scopes", Text, nullable=False),
    Column("ip_allow", Text, nullable=False),
    Column("meta", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("created_by", String(256), nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("quota", String(32)),  # e.g. "100000/month"; NULL: consumers_defaults.quota
)

api_keys_table = Table(
    "api_keys",
    metadata,
    Column("id", String(16), primary_key=True),  # the public id inside the key
    Column("consumer_id", String(26), ForeignKey("consumers.id"), nullable=False),
    Column("digest", String(64), nullable=False),  # hex HMAC-SHA-256(pepper, key); never the key
    Column("name", String(128), nullable=False),
    Column("scopes", Text, nullable=False),
    Column("permissions", Text, nullable=False),
    Column("ip_allow", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("created_by", String(256), nullable=False),
    Column("expires_at", Float),
    Column("last_used_at", Float),
    Column("revoked_at", Float),
    Column("revoked_by", String(256)),
    Column("rotated_from", String(16)),
    Column("rotated_to", String(16)),
    Index("ix_api_keys_consumer", "consumer_id"),
)

oauth_clients_table = Table(
    "oauth_clients",
    metadata,
    Column("client_id", String(64), primary_key=True),
    Column("consumer_id", String(26), ForeignKey("consumers.id"), nullable=False),
    Column("auth_method", String(32), nullable=False),  # client_secret_basic | private_key_jwt
    Column("secret_digest", String(64)),
    Column("jwks", Text),
    Column("scopes", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("created_by", String(256), nullable=False),
    Column("revoked_at", Float),
    Column("revoked_by", String(256)),
    Index("ix_oauth_clients_consumer", "consumer_id"),
)

# Public Key Client Validation (PKCV): RSA public keys registered by consumers, named by id (``CR…``).
public_keys_table = Table(
    "public_keys",
    metadata,
    Column("id", String(34), primary_key=True),
    Column("consumer_id", String(26), ForeignKey("consumers.id"), nullable=False),
    Column("name", String(128), nullable=False),
    Column("public_key", Text, nullable=False),  # PEM (SubjectPublicKeyInfo)
    Column("fingerprint", String(64), nullable=False),  # hex SHA-256 of the DER
    Column("created_at", Float, nullable=False),
    Column("created_by", String(256), nullable=False),
    Column("revoked_at", Float),
    Column("revoked_by", String(256)),
    Index("ix_public_keys_consumer", "consumer_id"),
)

signing_keys_table = Table(
    "signing_keys",
    metadata,
    Column("kid", String(64), primary_key=True),
    Column("alg", String(16), nullable=False),
    Column("private_key", Text, nullable=False),  # encrypted (Fernet, key derived from the pepper)
    Column("public_jwk", Text, nullable=False),
    Column("created_at", Float, nullable=False),
)

revoked_tokens_table = Table(
    "revoked_tokens",
    metadata,
    Column("jti", String(64), primary_key=True),
    Column("expires_at", Float, nullable=False),
    Column("revoked_at", Float, nullable=False),
)

# One row: bumped by every identity change, so running gateways know to reload their snapshot.
identity_state_table = Table(
    "identity_state",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("revision", Integer, nullable=False),
    # HMAC of a fixed label under the pepper-derived key: tells a changed pepper from bad credentials.
    Column("pepper_check", String(64)),
)


# -- the API inventory -------------------------------------------------------------------------------

inventory_observed_table = Table(  # requests that matched no route, by templated path
    "inventory_observed",
    metadata,
    Column("method", String(16), primary_key=True),
    Column("template", String(1200), primary_key=True),
    Column("count", Integer, nullable=False),
    Column("first_seen", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
)

route_traffic_table = Table(  # declared routes: when they last had traffic
    "route_traffic",
    metadata,
    Column("route_id", String(512), primary_key=True),
    Column("count", Integer, nullable=False),
    Column("first_seen", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
)


# -- admin accounts (P12): people who use the admin API and console ---------------------------------

admin_accounts_table = Table(
    "admin_accounts",
    metadata,
    Column("id", String(26), primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("email", String(254), nullable=False, unique=True),  # lower-cased
    Column("role", String(16), nullable=False),  # viewer | operator | admin
    Column("status", String(16), nullable=False),  # active | disabled
    Column("password_hash", Text),  # argon2id (PHC string); NULL: passwordless sign-in only
    Column("totp_secret", Text),  # encrypted (Fernet, key derived from the pepper); NULL: no TOTP
    Column("totp_pending", Text),  # an enrolment not yet confirmed by a first code, encrypted
    Column("totp_last_step", Integer),  # the last accepted TOTP time step: a code is never accepted twice
    Column("failures", Integer, nullable=False),  # failed sign-in steps since the window began
    Column("failures_since", Float),
    Column("locked_until", Float),
    Column("created_at", Float, nullable=False),
    Column("created_by", String(256), nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("last_sign_in_at", Float),
)

admin_recovery_codes_table = Table(
    "admin_recovery_codes",
    metadata,
    Column("digest", String(64), primary_key=True),  # hex HMAC-SHA-256 under a pepper-derived key
    Column("admin_id", String(26), ForeignKey("admin_accounts.id"), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("used_at", Float),
    Index("ix_admin_recovery_codes_admin", "admin_id"),
)

admin_sessions_table = Table(
    "admin_sessions",
    metadata,
    Column("digest", String(64), primary_key=True),  # hex HMAC-SHA-256 of the session id; never the id
    Column("admin_id", String(26), ForeignKey("admin_accounts.id"), nullable=False),
    Column("stage", String(16), nullable=False),  # mfa | enrol | full
    Column("created_at", Float, nullable=False),
    Column("last_seen_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),  # the absolute limit
    Column("mfa_at", Float),  # the last second factor: step-up for sensitive actions
    Column("source_ip", String(64)),
    Index("ix_admin_sessions_admin", "admin_id"),
)

admin_sign_in_codes_table = Table(  # passwordless sign-in: one-time codes sent by email
    "admin_sign_in_codes",
    metadata,
    Column("id", String(26), primary_key=True),
    Column("address_digest", String(64), nullable=False),  # keyed digest of the address asked for
    Column("admin_id", String(26)),  # NULL: no such account (recorded all the same, for the send limits)
    Column("code_digest", String(64)),
    Column("source_ip", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("used_at", Float),
    Index("ix_admin_sign_in_codes_address", "address_digest"),
    Index("ix_admin_sign_in_codes_source_ip", "source_ip"),
)

"""``bastion scan``: find leaked credentials in a tree and, with ``--git``, in a repository's history.

What it recognises, and why there are no false positives on random text:

- **Bastion API keys** by their exact shape *and* their CRC-32 checksum (``core.identity``): a random
  56-character ``bst_…`` string passes the checksum once in 62**6 (~5.7e10); a key with one character
  changed does not pass at all (CRC-32 catches every single-character change).
- **Twilio credentials** by their known shapes: an Account SID (``AC`` + 32 lowercase hex), an API key SID
  (``SK`` + 32 hex) only when a 32-character secret stands next to it (same line or the two after), and an
  Auth Token (32 hex) only when assigned to a Twilio-looking name (``TWILIO_AUTH_TOKEN=…``, ``twilioToken:``).
- **Private keys** in PEM: a ``-----BEGIN … PRIVATE KEY-----`` line followed by base64 (so a document that
  merely names the header is not a finding).

A finding carries where it is (path, line, commit) and the public part only: a Bastion key's public id, a
Twilio SID, or for an Auth Token a four-character prefix. The secret itself never leaves this module.

The working tree is read file by file (``.git`` skipped, files over :data:`MAX_FILE_BYTES` skipped, files
with a NUL byte in their first 8 KiB taken as binary and skipped, symlinks never followed: a link's target
is scanned where it lives when that is inside the tree, and never when it is outside). The history is read
in one pass of ``git log --all -p -U0``: each line a commit added is scanned once, in the commit that
added it, whatever the number of branches and commits that keep it.
"""

from __future__ import annotations

import hmac
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import Engine, select

from ..core.identity import KEY_PATTERN, parse_api_key
from ..store.schema import api_keys_table

__all__ = [
    "KINDS",
    "MAX_FILE_BYTES",
    "Finding",
    "GitError",
    "look_up",
    "scan_git_history",
    "scan_text",
    "scan_tree",
    "to_json",
    "to_sarif",
]

MAX_FILE_BYTES = 4 * 1024 * 1024
_BINARY_SNIFF = 8192

KINDS = {
    "bastion_api_key": "A Bastion API key (prefix and checksum match)",
    "twilio_account_sid": "A Twilio Account SID",
    "twilio_api_key": "A Twilio API key SID next to a 32-character secret",
    "twilio_auth_token": "A Twilio Auth Token assigned to a Twilio-looking name",
    "private_key": "A PEM private key",
}

_ACCOUNT_SID = re.compile(r"\bAC[0-9a-f]{32}\b")
_API_KEY_SID = re.compile(r"\bSK[0-9a-f]{32}\b")
_SECRET_32 = re.compile(r"\b[0-9A-Za-z]{32}\b")
# A name with "twilio" and "token" or "secret" in it, an assignment (=, :, :=, =>), 32 hex characters.
_AUTH_TOKEN = re.compile(
    r"(?i:twilio)[A-Za-z0-9_.\-]*?(?i:token|secret)[A-Za-z0-9_]*['\"]?\s*(?::=|=>|[:=])\s*['\"]?"
    r"([0-9a-f]{32})\b"
)
_PEM = re.compile(
    r"-----BEGIN ((?:[A-Z0-9]+ )*)PRIVATE KEY(?: BLOCK)?-----[ \t]*(?:\r?\n|\\(?:r\\)?n)[ \t\"']*"
    r"(?:Proc-Type:|Version:|[A-Za-z0-9+/=]{16,})"
)
_HINTS = ("bst_", "AC", "SK", "PRIVATE KEY", "wilio", "WILIO")


@dataclass(frozen=True, slots=True)
class Finding:
    """One credential found. ``key_id`` is the public part only (see the module docstring)."""

    kind: str
    path: str
    line: int
    commit: str | None = None
    key_id: str | None = None
    status: str = "unknown"  # live | revoked | expired | unknown
    # HMAC of the key under the store's pepper, when the scan was given one: tells the key the store holds
    # from a forged string with the same public id. Never printed.
    digest: bytes | None = field(default=None, repr=False, compare=False)

    def document(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "path": self.path,
            "line": self.line,
            "commit": self.commit,
            "key_id": self.key_id,
            "status": self.status,
        }


Digest = Callable[[str], bytes]


class GitError(Exception):
    """The history cannot be read (not a repository, no git): one line for the user."""


def _line_at(text: str, pos: int, first_line: int) -> int:
    return first_line + text.count("\n", 0, pos)


def scan_text(
    text: str, path: str, *, first_line: int = 1, commit: str | None = None, digest: Digest | None = None
) -> list[Finding]:
    """Every credential in ``text`` (the content of ``path``, whose first line is ``first_line``).
    ``digest`` (the store's keyed digest) is applied to each Bastion key found; nothing else keeps it."""
    if not any(h in text for h in _HINTS):
        return []
    found: list[Finding] = []

    def add(kind: str, pos: int, key_id: str | None, key_digest: bytes | None = None) -> None:
        found.append(Finding(kind, path, _line_at(text, pos, first_line), commit, key_id, digest=key_digest))

    if "bst_" in text:
        for m in KEY_PATTERN.finditer(text):
            key_id = parse_api_key(m.group(0))
            if key_id is not None:
                add("bastion_api_key", m.start(), key_id, digest(m.group(0)) if digest else None)
    if "AC" in text:
        for m in _ACCOUNT_SID.finditer(text):
            add("twilio_account_sid", m.start(), m.group(0))
    if "SK" in text:
        for m in _API_KEY_SID.finditer(text):
            # "Next to": on the SID's line or the two after it, another 32-character token.
            end = m.end()
            for _ in range(3):
                nl = text.find("\n", end + 1)
                if nl < 0:
                    end = len(text)
                    break
                end = nl
            start = text.rfind("\n", 0, m.start()) + 1
            near = [s for s in _SECRET_32.finditer(text, start, end) if s.start() != m.start() + 2]
            if any(not _API_KEY_SID.fullmatch(text, s.start() - 2, s.end()) for s in near):
                add("twilio_api_key", m.start(), m.group(0))
    if "wilio" in text or "WILIO" in text:
        for m in _AUTH_TOKEN.finditer(text):
            add("twilio_auth_token", m.start(1), m.group(1)[:4] + "…")
    if "PRIVATE KEY" in text:
        for m in _PEM.finditer(text):
            add("private_key", m.start(), None)
    found.sort(key=lambda f: f.line)  # stable: same line keeps the order of the kinds
    return found


def _read(path: Path) -> str | None:
    """A file's text for scanning, or None: too large, unreadable or binary."""
    try:
        with open(path, "rb") as fh:
            if os.fstat(fh.fileno()).st_size > MAX_FILE_BYTES:
                return None
            data = fh.read(MAX_FILE_BYTES + 1)
    except OSError:
        return None
    if len(data) > MAX_FILE_BYTES or b"\0" in data[:_BINARY_SNIFF]:
        return None
    # latin-1 maps every byte to one character: never fails, keeps offsets, and every credential is ASCII.
    return data.decode("latin-1")


def _files(root: Path) -> Iterator[Path]:
    if root.is_file() and not root.is_symlink():
        yield root
        return
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if d != ".git")
        for name in sorted(filenames):
            p = Path(dirpath, name)
            if not p.is_symlink():
                yield p


def scan_tree(root: Path, *, digest: Digest | None = None) -> list[Finding]:
    """Every credential in the files under ``root`` (or in ``root`` itself, a file). Paths are reported as
    ``root`` joined with the path below it (``bastion scan .`` reports ``src/app.py``)."""
    found: list[Finding] = []
    for path in _files(root):
        text = _read(path)
        if text is not None:
            found.extend(scan_text(text, path.as_posix(), digest=digest))
    return found


_HUNK = re.compile(rb"^@@ -\d+(?:,\d+)? \+(\d+)(?:,\d+)? @@")


def _git_path(raw: bytes) -> str:
    # git ends a name that has a space with a tab (for patch(1)); a name that is quoted ends with its quote
    text = raw.decode("utf-8", "replace").rstrip("\r\n").removesuffix("\t")
    if text.startswith('"') and text.endswith('"'):  # quoted by git (control characters or quotes)
        text = text[1:-1].encode("latin-1", "replace").decode("unicode_escape", "replace")
    return text[2:] if text.startswith("b/") else text


def scan_git_history(root: Path, *, digest: Digest | None = None) -> list[Finding]:
    """Every credential any commit of any ref added, with the commit that added it.

    ``git log --all -p -U0`` prints each commit's added lines once, grouped in hunks that carry their
    line number in the new file; the hunk's lines are scanned together (a PEM body or an API key secret
    on the line after its SID was added in the same hunk)."""
    cmd = [
        "git",
        "-c",
        "core.quotepath=off",
        "-C",
        str(root),
        "log",
        "--all",
        "-p",
        "-U0",
        "--no-color",
        "--no-ext-diff",
        "--no-renames",
        "--no-textconv",
        "--format=%x00commit %H",
    ]
    found: list[Finding] = []
    commit: str | None = None
    path: str | None = None
    in_header = False
    hunk: list[str] = []
    first = 0

    def flush() -> None:
        if hunk and path is not None:
            found.extend(scan_text("\n".join(hunk), path, first_line=first, commit=commit, digest=digest))
        hunk.clear()

    # git's messages go to a file, not a pipe: a pipe nobody reads while stdout is read could fill and stall.
    with tempfile.TemporaryFile() as errors:
        try:
            proc = subprocess.Popen(  # noqa: S603 - a fixed argument list, no shell
                cmd, stdout=subprocess.PIPE, stderr=errors, env={**os.environ, "GIT_PAGER": "cat"}
            )
        except FileNotFoundError:
            raise GitError("git is not installed: --git needs the git command") from None
        with proc:
            assert proc.stdout is not None
            for raw in proc.stdout:
                if raw.startswith(b"\0commit "):
                    flush()
                    commit, path, in_header = raw[8:].decode("ascii").strip(), None, False
                elif raw.startswith(b"diff --git "):
                    flush()
                    path, in_header = None, True
                elif in_header:
                    if raw.startswith(b"+++ "):
                        target = raw[4:]
                        path = None if target.rstrip() == b"/dev/null" else _git_path(target)
                    elif raw.startswith(b"@@"):
                        in_header = False
                        m = _HUNK.match(raw)
                        first = int(m.group(1)) if m else 1
                elif raw.startswith(b"@@"):
                    flush()
                    m = _HUNK.match(raw)
                    first = int(m.group(1)) if m else 1
                elif raw.startswith(b"+"):
                    hunk.append(raw[1:].decode("latin-1").rstrip("\r\n"))
            flush()
        if proc.returncode != 0:
            errors.seek(0)
            err = errors.read(4096).decode("utf-8", "replace").strip()
            first_line = err.splitlines()[0] if err else f"git exited with status {proc.returncode}"
            raise GitError(f"cannot read the git history of {root}: {first_line}")
    return found


def look_up(findings: list[Finding], engine: Engine, *, now: float | None = None) -> list[Finding]:
    """Each Bastion key found, with its status in the store: ``live``, ``revoked``, ``expired``, or
    ``unknown`` (no key with that public id; or, when the scan computed digests, a string with a known
    public id that is not that key - a forgery or a typo that kept the checksum, never revoked)."""
    now = time.time() if now is None else now
    ids = sorted({f.key_id for f in findings if f.kind == "bastion_api_key" and f.key_id})
    rows: dict[str, Any] = {}
    k = api_keys_table.c
    with engine.connect() as conn:
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            query = select(k.id, k.digest, k.revoked_at, k.expires_at).where(k.id.in_(chunk))
            rows.update((row.id, row) for row in conn.execute(query))

    def status(f: Finding) -> str:
        row = rows.get(f.key_id or "")
        if row is None:
            return "unknown"
        if f.digest is not None and not hmac.compare_digest(f.digest.hex(), row.digest):
            return "unknown"
        if row.revoked_at is not None:
            return "revoked"
        if row.expires_at is not None and row.expires_at <= now:
            return "expired"
        return "live"

    return [replace(f, status=status(f)) if f.kind == "bastion_api_key" else f for f in findings]


def to_json(findings: Iterable[Finding]) -> dict[str, Any]:
    return {"findings": [f.document() for f in findings]}


_SARIF_SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"


def sarif_log(driver: dict[str, Any], results: list[dict[str, Any]], **run: Any) -> dict[str, Any]:
    """A SARIF 2.1.0 log with one run (shared by ``bastion scan`` and ``bastion audit``)."""
    return {
        "$schema": _SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [{"tool": {"driver": driver}, **run, "results": results}],
    }


def to_sarif(findings: Iterable[Finding], version: str) -> dict[str, Any]:
    rules = [
        {
            "id": f"bastion-scan/{kind}",
            "name": kind,
            "shortDescription": {"text": text},
            "defaultConfiguration": {"level": "error"},
        }
        for kind, text in KINDS.items()
    ]
    index = {kind: i for i, kind in enumerate(KINDS)}
    results = []
    for f in findings:
        where = f"in commit {f.commit}" if f.commit else "in the working tree"
        what = f" ({f.key_id})" if f.key_id else ""
        status = f", status {f.status}" if f.kind == "bastion_api_key" else ""
        result: dict[str, Any] = {
            "ruleId": f"bastion-scan/{f.kind}",
            "ruleIndex": index[f.kind],
            "level": "note" if f.status in ("revoked", "expired") else "error",
            "message": {"text": f"{KINDS[f.kind]}{what} {where}{status}."},
            "locations": [
                {
                    "physicalLocation": {
                        "artifactLocation": {"uri": quote(f.path)},
                        "region": {"startLine": f.line},
                    }
                }
            ],
            "partialFingerprints": {"credential/v1": f"{f.kind}:{f.key_id or ''}:{f.path}"},
            "properties": {"status": f.status, **({"commit": f.commit} if f.commit else {})},
        }
        results.append(result)
    return sarif_log({"name": "bastion-scan", "version": version, "rules": rules}, results)

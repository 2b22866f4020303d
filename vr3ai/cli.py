"""``vr3ai``: serve the platform and manage organizations, API keys, users and the secret key.

Passwords are never taken from the command line (other local users can read it in ``ps`` and it
lands in shell history): they are prompted for with ``getpass`` on a terminal, and read from the
first line of standard input otherwise, for scripts (``printf '%s\n' "$PW" | vr3ai user set-password …``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from typing import Any

from vr3ai.core import orgs
from vr3ai.core.limits import LIMIT_COLUMNS, limits_of
from vr3ai.db.migrate import upgrade
from vr3ai.db.session import Database
from vr3ai.files import loose_mode
from vr3ai.logs import setup_logging
from vr3ai.settings import Settings

log = logging.getLogger("vr3ai.cli")


def _db(settings: Settings) -> Database:
    return Database(settings.resolved_database_url())


async def _with_db(settings: Settings, fn: Any) -> Any:
    db = _db(settings)
    try:
        await upgrade(db)
        return await fn(db)
    finally:
        await db.dispose()


ROOT_REFUSAL = (
    "refusing to run the server as root: a flaw in it, or in a library it loads, would then own the "
    "whole machine. Start it as an unprivileged user (`sudo bash scripts/run.sh` runs it as the "
    "`vr3ai` system user), or set VR3AI_ALLOW_ROOT=1 if root here is not the host's root (a container)."
)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    if os.geteuid() == 0 and not settings.server.allow_root:
        print(f"error: {ROOT_REFUSAL}", file=sys.stderr)
        return 2
    # Whatever libraries create on their own (SQLite's -wal, the TTS cache, temporary files) is for
    # this user only, like the data folder and recordings (vr3ai.files sets those explicitly).
    os.umask(0o077)
    loose = loose_mode(settings.storage.data_dir)
    if loose is not None:
        log.warning(
            "the data folder is readable by other users; `chmod 700` it",
            extra={"data_dir": str(settings.storage.data_dir), "mode": oct(loose)},
        )
    # Imported here, not at the top: the server loads the whole web stack, which the other
    # commands do not need (there is no cycle: the server does not import the CLI).
    from vr3ai.server import serve

    if args.host:
        settings.server.host = args.host
    if args.port:
        settings.server.port = args.port
    return serve(settings)


def cmd_org_create(args: argparse.Namespace, settings: Settings) -> int:
    async def run(db: Database) -> None:
        org, key = await orgs.create_organization(
            db,
            args.name,
            max_concurrent_calls=args.max_concurrent_calls,
            minutes_per_month=args.minutes_per_month,
        )
        print(json.dumps({"organization_id": org.id, "api_key": key}))

    asyncio.run(_with_db(settings, run))
    return 0


def cmd_org_list(args: argparse.Namespace, settings: Settings) -> int:
    async def run(db: Database) -> None:
        for org in await orgs.list_organizations(db):
            print(
                json.dumps(
                    {
                        "organization_id": org.id,
                        "name": org.name,
                        "max_concurrent_calls": org.max_concurrent_calls,
                        "minutes_per_month": org.minutes_per_month,
                    }
                )
            )

    asyncio.run(_with_db(settings, run))
    return 0


def cmd_org_set_limits(args: argparse.Namespace, settings: Settings) -> int:
    values = {name: getattr(args, name) for name in LIMIT_COLUMNS if getattr(args, name) is not None}

    async def run(db: Database) -> None:
        org = await orgs.set_limits(db, args.org, **values)
        print(json.dumps({"organization_id": org.id, **limits_of(org)}))

    asyncio.run(_with_db(settings, run))
    return 0


def cmd_apikey_create(args: argparse.Namespace, settings: Settings) -> int:
    async def run(db: Database) -> None:
        row, key = await orgs.create_api_key_row(db, args.org)
        print(json.dumps({"organization_id": args.org, "api_key": key, "api_key_id": row.id}))

    asyncio.run(_with_db(settings, run))
    return 0


def _key_json(row: Any) -> dict[str, Any]:
    return {
        "api_key_id": row.id,
        "organization_id": row.organization_id,
        "name": row.name,
        "prefix": row.prefix,
        "created_at": row.created_at.isoformat() if row.created_at else None,
        "revoked_at": row.revoked_at.isoformat() if row.revoked_at else None,
    }


def cmd_apikey_list(args: argparse.Namespace, settings: Settings) -> int:
    async def run(db: Database) -> None:
        for row in await orgs.list_api_keys(db, args.org):
            print(json.dumps(_key_json(row)))

    asyncio.run(_with_db(settings, run))
    return 0


def cmd_apikey_revoke(args: argparse.Namespace, settings: Settings) -> int:
    async def run(db: Database) -> None:
        row = await orgs.revoke_api_key(db, args.key_id)
        print(json.dumps(_key_json(row)))

    asyncio.run(_with_db(settings, run))
    return 0


def read_password(prompt: str = "password: ") -> str:
    """From the terminal without echo (asked twice), or the first line of a non-terminal stdin."""
    import getpass

    if not sys.stdin.isatty():
        line = sys.stdin.readline()
        if not line:
            raise ValueError("no password on standard input")
        return line.rstrip("\r\n")
    password = getpass.getpass(prompt)
    if getpass.getpass("again: ") != password:
        raise ValueError("the two passwords differ")
    return password


def cmd_user_create(args: argparse.Namespace, settings: Settings) -> int:
    if args.password:
        print("warning: --password is visible to other users of this machine; omit it to be prompted", file=sys.stderr)
    password = args.password or read_password()
    orgs.check_password(password)

    async def run(db: Database) -> None:
        user = await orgs.create_user(db, args.org, args.email, password)
        print(json.dumps({"user_id": user.id, "email": user.email, "organization_id": args.org}))

    asyncio.run(_with_db(settings, run))
    return 0


def cmd_user_set_password(args: argparse.Namespace, settings: Settings) -> int:
    password = read_password("new password: ")
    orgs.check_password(password)

    async def run(db: Database) -> None:
        user = await orgs.set_password(db, args.email, password)
        print(json.dumps({"user_id": user.id, "email": user.email, "password_changed": True}))

    asyncio.run(_with_db(settings, run))
    return 0


def cmd_secrets_rotate(args: argparse.Namespace, settings: Settings) -> int:
    from cryptography.fernet import Fernet

    from vr3ai.core.keyrotation import all_current, rotate_all
    from vr3ai.core.secrets import SECRET_KEY_FILE, SecretBox, read_key_file, write_key_file

    key_file = settings.storage.data_dir / SECRET_KEY_FILE
    if (args.new_key or args.forget_previous) and settings.storage.secret_key:
        raise ValueError(
            "--new-key and --forget-previous manage the key file; with VR3AI_SECRET_KEY set, change "
            "VR3AI_SECRET_KEY and VR3AI_SECRET_KEY_PREVIOUS instead (README: Security)"
        )
    if args.new_key:
        old = read_key_file(key_file) if key_file.exists() else []
        if not old:
            raise ValueError(f"{key_file} does not exist: there is nothing to rotate from")
        write_key_file(key_file, [Fernet.generate_key().decode(), *old])

    async def run(db: Database) -> dict[str, Any]:
        storage = settings.storage
        box = SecretBox.from_settings(storage.secret_key, storage.data_dir, storage.secret_key_previous)
        result = await rotate_all(db, box)
        out: dict[str, Any] = {"rotated": result.rotated, "already_current": result.already_current}
        if args.forget_previous:
            # Check again under the final state: a server still running on the old key could have
            # written a value since; forgetting that key would make it unreadable.
            if not await all_current(db, box):
                raise ValueError("some secrets are still under a previous key; run `vr3ai secrets rotate` again")
            keys = read_key_file(key_file)
            write_key_file(key_file, keys[:1])
            out["previous_keys_forgotten"] = len(keys) - 1
        return out

    print(json.dumps(asyncio.run(_with_db(settings, run))))
    return 0


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    async def run(db: Database) -> None:
        await upgrade(db)

    asyncio.run(_with_db(settings, run))
    print(json.dumps({"migrated": True}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vr3ai", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run migrations, then API, dashboard, media WebSocket and ARI listeners")
    s.add_argument("--host", default="")
    s.add_argument("--port", type=int, default=0)
    s.set_defaults(fn=cmd_serve)

    org = sub.add_parser("org", help="organizations").add_subparsers(dest="org_command", required=True)
    oc = org.add_parser("create", help="create an organization; prints its first API key once")
    oc.add_argument("name")
    oc.add_argument("--max-concurrent-calls", type=int, default=5)
    oc.add_argument("--minutes-per-month", type=int, default=1000)
    oc.set_defaults(fn=cmd_org_create)
    ol = org.add_parser("list")
    ol.set_defaults(fn=cmd_org_list)
    osl = org.add_parser("set-limits", help="change what an organization may store (prints all its limits)")
    osl.add_argument("org", help="organization id")
    for name in LIMIT_COLUMNS:
        osl.add_argument("--" + name.replace("_", "-"), dest=name, type=int, default=None)
    osl.set_defaults(fn=cmd_org_set_limits)

    ak = sub.add_parser("apikey", help="API keys").add_subparsers(dest="apikey_command", required=True)
    akc = ak.add_parser("create", help="create another API key for an organization")
    akc.add_argument("org", help="organization id")
    akc.set_defaults(fn=cmd_apikey_create)
    akl = ak.add_parser("list", help="an organization's API keys (never the keys themselves)")
    akl.add_argument("org", help="organization id")
    akl.set_defaults(fn=cmd_apikey_list)
    akr = ak.add_parser("revoke", help="revoke an API key: requests with it get 401 from now on")
    akr.add_argument("key_id", help="the api_key_id printed by `apikey create` or `apikey list`")
    akr.set_defaults(fn=cmd_apikey_revoke)

    us = sub.add_parser("user", help="dashboard users").add_subparsers(dest="user_command", required=True)
    usc = us.add_parser("create", help="create a dashboard user")
    usc.add_argument("org", help="organization id")
    usc.add_argument("email")
    # Kept so existing scripts work; it warns. Prompted (or read from stdin) when omitted.
    usc.add_argument("--password", default="", help=argparse.SUPPRESS)
    usc.set_defaults(fn=cmd_user_create)
    usp = us.add_parser(
        "set-password", help="set a user's password (prompted; first line of stdin when not a terminal)"
    )
    usp.add_argument("email")
    usp.set_defaults(fn=cmd_user_set_password)

    sc = sub.add_parser("secrets", help="the key that encrypts stored secrets").add_subparsers(
        dest="secrets_command", required=True
    )
    scr = sc.add_parser("rotate", help="re-encrypt every stored secret under the current secret key")
    scr.add_argument(
        "--new-key", action="store_true", help="first make a new key in <data dir>/secret.key (the old one is kept)"
    )
    scr.add_argument(
        "--forget-previous",
        action="store_true",
        help="afterwards drop the previous keys from <data dir>/secret.key (restart the server first)",
    )
    scr.set_defaults(fn=cmd_secrets_rotate)

    mg = sub.add_parser("migrate", help="bring the database schema up to date")
    mg.set_defaults(fn=cmd_migrate)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings.from_env()
    setup_logging(json_lines=settings.server.log_json and args.command == "serve")
    try:
        return int(args.fn(args, settings) or 0)
    except (ValueError, LookupError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

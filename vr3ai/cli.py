"""``vr3ai``: serve the platform and manage organizations, API keys and users."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from typing import Any

from vr3ai.core import orgs
from vr3ai.db.migrate import upgrade
from vr3ai.db.session import Database
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


async def ensure_default_organization(db: Database) -> tuple[str, str] | None:
    """On the first start of an empty data folder, create an organization and return its key once."""
    if await orgs.list_organizations(db):
        return None
    org, key = await orgs.create_organization(db, "Default organization")
    return org.id, key


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from vr3ai.server import serve

    if args.host:
        settings.host = args.host
    if args.port:
        settings.port = args.port
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


def cmd_apikey_create(args: argparse.Namespace, settings: Settings) -> int:
    async def run(db: Database) -> None:
        key = await orgs.create_api_key(db, args.org)
        print(json.dumps({"organization_id": args.org, "api_key": key}))

    asyncio.run(_with_db(settings, run))
    return 0


def cmd_user_create(args: argparse.Namespace, settings: Settings) -> int:
    import getpass

    password = args.password or getpass.getpass("password: ")

    async def run(db: Database) -> None:
        user = await orgs.create_user(db, args.org, args.email, password)
        print(json.dumps({"user_id": user.id, "email": user.email, "organization_id": args.org}))

    asyncio.run(_with_db(settings, run))
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

    ak = sub.add_parser("apikey", help="API keys").add_subparsers(dest="apikey_command", required=True)
    akc = ak.add_parser("create", help="create another API key for an organization")
    akc.add_argument("org", help="organization id")
    akc.set_defaults(fn=cmd_apikey_create)

    us = sub.add_parser("user", help="dashboard users").add_subparsers(dest="user_command", required=True)
    usc = us.add_parser("create", help="create a dashboard user")
    usc.add_argument("org", help="organization id")
    usc.add_argument("email")
    usc.add_argument("--password", default="", help="prompted for when omitted")
    usc.set_defaults(fn=cmd_user_create)

    mg = sub.add_parser("migrate", help="bring the database schema up to date")
    mg.set_defaults(fn=cmd_migrate)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings.from_env()
    setup_logging(json_lines=settings.log_json and args.command == "serve")
    try:
        return int(args.fn(args, settings) or 0)
    except (ValueError, LookupError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

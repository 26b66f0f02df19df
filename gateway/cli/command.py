"""The ``sipgw`` command.

    sipgw run [--config FILE]            run the gateway until SIGTERM/SIGINT
    sipgw check-config [--config FILE]   load and check the settings, print a summary
    sipgw sync MAPPING [--full] …        send contacts that changed (docs/sync.md)

With no --config, ``$SIPGW_CONFIG`` or the embedded demo (gateway/default.toml) is used.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tomllib
from importlib import resources
from pathlib import Path

from gateway import __version__
from gateway.app import DEFAULT_STATE_DIR, Gateway, install_uvloop
from gateway.cli import admin, demo, dial, webhooks
from gateway.cli.sync import command as sync_command
from gateway.cli.watch import UnsafeURL, WatchError, WatchOptions, check_url, watch
from gateway.config import ConfigError, Settings, load_settings
from gateway.logs import setup_logging
from gateway.supervisor import run_workers
from gateway.transport.relay import WorkerPlan


def _load(path: str | None) -> Settings:
    try:
        return load_settings(path)
    except ConfigError as err:
        print(f"sipgw: configuration error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as err:
        print(f"sipgw: cannot read configuration: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def _demo_api_passwords(settings: Settings) -> dict[str, str]:
    """The public demo API passwords (gateway/default.toml), for the banner only."""
    if not settings.source.startswith("<embedded"):
        return {}
    raw = tomllib.loads(resources.files("gateway").joinpath("default.toml").read_text())
    return {
        user["username"]: user["api_password"]
        for tenant in raw.get("tenants", [])
        for user in tenant.get("users", [])
        if "api_password" in user
    }


def _demo_passwords(settings: Settings) -> dict[str, str]:
    """The public demo passwords, read from the embedded demo file for the banner only.

    Settings keep HA1 hashes, never passwords; the demo's passwords are documented in
    gateway/default.toml, so showing them to the person who ran `make run` leaks nothing.
    """
    if not settings.source.startswith("<embedded"):
        return {}
    raw = tomllib.loads(resources.files("gateway").joinpath("default.toml").read_text())
    return {
        user["username"]: user["password"]
        for tenant in raw.get("tenants", [])
        for user in tenant.get("users", [])
        if "password" in user
    }


def banner(settings: Settings, gateway: Gateway) -> str:
    assert gateway.sip is not None
    listening = gateway.sip.transport.listening
    lines = [f"sipgw {__version__} running as node {settings.node.name!r}", ""]
    lines.append("SIP listening on:")
    for spec in listening:
        lines.append(f"  {spec.transport.upper():4} {spec.host}:{spec.port}")
    lines.append("")
    lines.append(
        f"HTTP on {settings.http.scheme}://{settings.http.host}:{gateway.http_port}  "
        "(/healthz /readyz /metrics /docs)"
    )
    passwords = _demo_passwords(settings)
    udp = next((s for s in listening if s.transport == "udp"), None)
    for tenant in settings.tenants:
        lines.append("")
        lines.append(f"Tenant {tenant.id!r}: domains {', '.join(tenant.domains)}")
        for user in tenant.users:
            secret = f"  password {passwords[user.username]}" if user.username in passwords else ""
            lines.append(f"  user {user.username} (extension {user.extension}){secret}")
        for did in tenant.dids:
            lines.append(f"  DID {did.number} -> extension {did.extension}")
        for trunk in tenant.trunks:
            lines.append(f"  trunk {trunk.name}: {trunk.transport} {trunk.host}:{trunk.port}")
    if udp is not None and settings.tenants and settings.tenants[0].users:
        tenant = settings.tenants[0]
        user = tenant.users[0]
        other = tenant.users[1] if len(tenant.users) > 1 else user
        lines += [
            "",
            "Point a softphone at it:",
            f"  SIP server / registrar: {udp.host}:{udp.port} (UDP; TCP on the same port)",
            f"  username: {user.username}   domain: {tenant.domains[0]}   "
            f"auth realm: {tenant.realm}",
            f"  then call extension {other.extension} from a second phone registered as "
            f"{other.username}.",
            "  e.g. linphonec:  register sip:"
            f"{user.username}@{tenant.domains[0]} sip:{udp.host}:{udp.port} <password>",
            "",
            f"Metrics: curl {settings.http.scheme}://{settings.http.host}:{gateway.http_port}/metrics",
        ]
        api = _demo_api_passwords(settings)
        admin = next((u for u in tenant.users if u.role == "admin" and u.username in api), None)
        if admin is not None:
            url = f"{settings.http.scheme}://{settings.http.host}:{gateway.http_port}"
            lines += [
                "",
                "Watch live call events (demo admin API user):",
                f"  SIPGW_PASSWORD='{api[admin.username]}' .venv/bin/sipgw watch --url {url} "
                f"--username {admin.username}",
            ]
    return "\n".join(lines)


async def _run(
    settings: Settings, state_dir: Path, quiet: bool, plan: WorkerPlan | None = None
) -> None:
    gateway = Gateway(settings, state_dir=state_dir, plan=plan)
    gateway.install_signal_handlers()
    await gateway.start()
    if not quiet:
        print(banner(settings, gateway), flush=True)
    await gateway.run_until_signalled()


def cmd_run(args: argparse.Namespace) -> int:
    settings = _load(args.config)
    setup_logging(settings.log.level, settings.log.format)
    plan = WorkerPlan.from_env()
    if settings.node.workers > 1 and plan is None:
        argv = ["run", "--state-dir", args.state_dir]
        argv += ["--config", args.config] if args.config else []
        argv += ["--quiet"] if args.quiet else []
        return run_workers(settings, argv, Path(args.state_dir))
    install_uvloop()
    try:
        asyncio.run(_run(settings, Path(args.state_dir), args.quiet, plan))
    except OSError as err:
        print(f"sipgw: cannot start: {err}", file=sys.stderr)
        return 1
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = _load(args.config)
    print(f"configuration OK ({settings.source})")
    for spec in settings.sip.listen:
        print(f"  sip listen {spec.transport}:{spec.host}:{spec.port}")
    print(f"  http listen {settings.http.listen}")
    for tenant in settings.tenants:
        print(
            f"  tenant {tenant.id}: {len(tenant.users)} users, {len(tenant.dids)} DIDs, "
            f"{len(tenant.trunks)} trunks"
        )
    print(f"  profiles: {', '.join(sorted(settings.profiles))}")
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    options = WatchOptions(
        url=args.url,
        token=args.token or os.environ.get("SIPGW_TOKEN"),
        tenant=args.tenant,
        username=args.username,
        password=os.environ.get("SIPGW_PASSWORD"),
        extensions=args.extension or [],
        types=args.type or [],
        since=args.since,
        raw_json=args.json,
    )
    if options.token is None and (options.username is None or options.password is None):
        print(
            "sipgw watch: give --token (or SIPGW_TOKEN), or --username with the password "
            "in SIPGW_PASSWORD",
            file=sys.stderr,
        )
        return 2
    try:
        check_url(options.url)  # before a password or token is sent anywhere
    except UnsafeURL as err:
        print(f"sipgw watch: {err}", file=sys.stderr)
        return 2
    try:
        asyncio.run(watch(options))
    except WatchError as err:
        print(f"sipgw watch: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sipgw", description="SIP/telephony event gateway for CTI"
    )
    parser.add_argument("--version", action="version", version=f"sipgw {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the gateway")
    run.add_argument("--config", help="TOML settings file (default: $SIPGW_CONFIG or the demo)")
    run.add_argument(
        "--state-dir",
        default=str(DEFAULT_STATE_DIR),
        help="where generated files (self-signed TLS certificate) go",
    )
    run.add_argument("--quiet", action="store_true", help="do not print the start banner")
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check-config", help="load and check the settings")
    check.add_argument("--config", help="TOML settings file")
    check.set_defaults(func=cmd_check_config)
    admin.register(sub)
    webhooks.register(sub)
    sync_command.register(sub)
    dial.register(sub)
    demo.register(sub)

    watch_cmd = sub.add_parser("watch", help="print live call events as a table")
    watch_cmd.add_argument("--url", default="http://127.0.0.1:8080", help="the gateway's HTTP API")
    watch_cmd.add_argument("--token", help="bearer token (default: $SIPGW_TOKEN)")
    watch_cmd.add_argument("--tenant", help="tenant to log in to")
    watch_cmd.add_argument("--username", help="log in as this user; password in $SIPGW_PASSWORD")
    watch_cmd.add_argument("--extension", action="append", help="only this extension (repeatable)")
    watch_cmd.add_argument("--type", action="append", help="only this event type (repeatable)")
    watch_cmd.add_argument("--since", help="replay from after this event seq")
    watch_cmd.add_argument("--json", action="store_true", help="one JSON object per line")
    watch_cmd.set_defaults(func=cmd_watch)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))

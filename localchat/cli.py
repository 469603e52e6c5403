"""Command-line entry: `localchat [flags]` (also `python -m localchat` and `python app.py`) serve; `localchat users ...` manages
household members. Passwords are asked for at a prompt or read from stdin, never taken as flags."""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import sys
from typing import TYPE_CHECKING, Any

import localchat  # noqa: F401 - sets the privacy switches before gradio/transformers load
from localchat.settings import Settings, load_settings
from localchat.types import InvalidValue

if TYPE_CHECKING:
    import uvicorn


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["users"]:
        return users(argv[1:])
    if argv[:1] == ["doctor"]:
        return doctor(argv[1:])
    if argv[:1] in (["pull"], ["models"]):
        return models_command(argv[0], argv[1:])
    try:
        settings = load_settings(argv)
    except InvalidValue as exc:
        print(f"localchat: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per engine request is noise
    from localchat.store import Store, StoreError

    try:
        store = Store(settings.database)
    except StoreError as exc:
        print(f"localchat: {exc}", file=sys.stderr)
        return 2
    if settings.household_mode and store.count_accounts() == 0:
        print(
            f"localchat: sharing on the network ({settings.bind_host}) needs a household account first, so that "
            "nobody on the network can use it without signing in.\n"
            "Create the first admin with:  localchat users add NAME --admin",
            file=sys.stderr,
        )
        return 2
    from urllib.parse import urlsplit

    from localchat.privacy import go_offline, has_default_route, is_local

    remote_engine = settings.engine == "openai" and not is_local(urlsplit(settings.engine_url or "").hostname)
    if settings.offline and remote_engine:
        print(f"localchat: --offline would block the engine at {settings.engine_url}", file=sys.stderr)
        return 2
    if settings.offline or (settings.offline is None and not remote_engine and not has_default_route()):
        go_offline()
    # Gradio's upload/cache folder goes inside the data dir too (it reads this at import time).
    os.environ.setdefault("GRADIO_TEMP_DIR", str(settings.data / "tmp" / "gradio"))
    from localchat.household import Household
    from localchat.server import build_app

    app = build_app(settings, household=Household(store, listen=settings.household_mode))
    where = f"http://{settings.bind_host}:{settings.port}"
    if settings.household_mode:
        where += "  (shared on the network: everyone signs in)"
    print(f"localchat is starting on {where}  (Ctrl+C to stop)", flush=True)
    import uvicorn

    uvicorn.Server(server_config(app.api, settings)).run()
    return 0


def server_config(api: Any, settings: Settings) -> uvicorn.Config:
    """How uvicorn serves the app. X-Forwarded-For (and -Proto) is believed only from the configured
    proxies: uvicorn's default believes any loopback client, which could then pick the address the
    sign-in limits count it under."""
    import uvicorn

    proxies = settings.proxies
    return uvicorn.Config(
        api,
        host=settings.bind_host,
        port=settings.port,
        log_level="warning",
        proxy_headers=bool(proxies),
        forwarded_allow_ips=list(proxies) if proxies else None,
    )


def doctor(argv: list[str]) -> int:
    """`localchat doctor [flags]`: this machine, and whether the configured model fits it."""
    try:
        settings = load_settings(argv)
    except InvalidValue as exc:
        print(f"localchat: {exc}", file=sys.stderr)
        return 2
    from localchat.engine.loading import LoadError, fit_report
    from localchat.hardware import detect, disk_free, gib
    from localchat.weights import models

    print(detect().describe())
    from localchat.engine.native import supported

    reason = supported()
    kernels = "yes (built at the first load of a model of 0.25B+ parameters)" if reason is None else f"no: {reason}"
    print(f"Compiled CPU kernels for q8/q4 weights: {kernels}")
    print(f"Data folder: {settings.data} ({gib(disk_free(settings.data))} free on its disk)")
    found = models.discover(settings.models)
    print(f"Models found: {len(found)}")
    for spec in found:
        print(f"  - {spec.name}: {spec.id}")
    options = settings.load_options()
    print(f"\nWill {options.model} fit?")
    try:
        real = models.materialize(options.model, settings.data)
        from dataclasses import replace

        report = fit_report(replace(options, model=real), settings.data / "cache" / "gguf-dequantized")
        print(report.describe().replace("**", ""))
    except (LoadError, OSError, ValueError) as exc:
        print(f"  cannot tell: {exc}")
    return 0


def models_command(command: str, argv: list[str]) -> int:
    """`localchat pull ID` downloads a Hub model into the models folder (resumable);
    `localchat models [--check-updates] [--delete NAME]` lists, checks and deletes them."""
    p = argparse.ArgumentParser(prog=f"localchat {command}")
    p.add_argument("--data-dir", help="data folder (default: as for the server)")
    p.add_argument("--models-dir", help="models folder (default DATA_DIR/models)")
    if command == "pull":
        p.add_argument("repo_id", help="a Hub id like org/name")
        p.add_argument("--allow-pickle", action="store_true", help="allow .bin weights (they can run code)")
    else:
        p.add_argument("--check-updates", action="store_true", help="ask the Hub whether a newer revision exists")
        p.add_argument("--delete", metavar="NAME", help="delete a downloaded model folder")
    args = p.parse_args(argv)
    from localchat.hardware import gib
    from localchat.weights import hub

    flags = [
        *(["--data-dir", args.data_dir] if args.data_dir else []),
        *(["--models-dir", args.models_dir] if args.models_dir else []),
    ]
    settings = load_settings(flags)
    if settings.offline:
        print("localchat: --offline is set in the configuration; a download needs the network", file=sys.stderr)
        return 2
    try:
        if command == "pull":

            def show(done: int, total: int) -> None:
                print(f"\r  {hub.progress_bar(done, total)}  {gib(done)} of {gib(total)}   ", end="", flush=True)

            pulled = hub.pull(args.repo_id, settings.models, allow_pickle=args.allow_pickle, progress=show)
            print(f"\nDownloaded {pulled.repo_id} ({gib(pulled.size_bytes)}) into {pulled.folder}")
            return 0
        if args.delete:
            freed = hub.delete(settings.models / args.delete, settings.models)
            print(f"Deleted {args.delete} ({gib(freed)} freed)")
            return 0
        folders = sorted(f for f in settings.models.glob("*") if f.is_dir()) if settings.models.is_dir() else []
        for folder in folders:
            source = hub.source_of(folder)
            line = f"{folder.name}\t{gib(hub.folder_size(folder))}"
            if source:
                line += f"\t{source['repo_id']}@{source['revision'][:8]}"
                if args.check_updates:
                    newer = hub.check_update(folder)
                    line += f"\tupdate: {newer[:8]} (localchat pull {source['repo_id']})" if newer else "\tup to date"
            print(line)
        return 0
    except hub.PullError as exc:
        print(f"\nlocalchat: {exc}", file=sys.stderr)
        return 1


def _password(prompt: str) -> str:
    if sys.stdin.isatty():
        first = getpass.getpass(f"{prompt}: ")
        if getpass.getpass("Again: ") != first:
            raise ValueError("The two passwords differ")
        return first
    return sys.stdin.readline().rstrip("\r\n")


def users(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="localchat users", description="Manage the household's accounts.")
    p.add_argument("--data-dir", help="data folder (default: as for the server)")
    # --data-dir also after the subcommand; SUPPRESS keeps a subcommand from resetting one given before it.
    data_dir = argparse.ArgumentParser(add_help=False)
    data_dir.add_argument("--data-dir", default=argparse.SUPPRESS, help="data folder (default: as for the server)")
    sub = p.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add", parents=[data_dir], help="add a member (password asked for, or one line on stdin)")
    add.add_argument("name")
    add.add_argument("--admin", action="store_true", help="make them an admin (manages members and models)")
    sub.add_parser("list", parents=[data_dir], help="list members")
    for name, text in (("remove", "remove a member and their chats"), ("passwd", "set a new password")):
        sub.add_parser(name, parents=[data_dir], help=text).add_argument("name")
    role = sub.add_parser("role", parents=[data_dir], help="make a member admin or member")
    role.add_argument("name")
    role.add_argument("role", choices=["admin", "member"])
    args = p.parse_args(argv)

    from localchat.household import Household
    from localchat.store import Store, StoreError

    try:
        settings = load_settings(["--data-dir", args.data_dir] if args.data_dir else [])
        household = Household(Store(settings.database))
        store = household.store
        if args.command == "list":
            for m in store.members():
                print(f"{m.name}\t{m.role}")
            return 0
        if args.command == "add":
            member = household.add_member(
                args.name, _password(f"Password for {args.name}"), "admin" if args.admin else "member"
            )
            print(f"Added {member.name} ({member.role}).")
            return 0
        member = store.member_by_name(args.name)
        if member is None:
            raise ValueError(f"There is no household member called {args.name}")
        # by=None: the console acts as an admin, under the same rules (one admin always remains)
        if args.command == "passwd":
            household.reset_password(None, member.id, _password(f"New password for {member.name}"))
            print(f"Password changed; {member.name} is signed out everywhere and their API keys are revoked.")
        elif args.command == "remove":
            household.remove_member(None, member.id)
            print(f"Removed {member.name} and their chats.")
        elif args.command == "role":
            household.set_role(None, member.id, args.role)
            print(f"{member.name} is now {args.role}.")
        return 0
    except (ValueError, StoreError, InvalidValue, PermissionError) as exc:
        print(f"localchat: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

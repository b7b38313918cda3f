"""`sidecar admin ...`: the admin API for humans, over the admin socket.

    sidecar admin versions                         versions, states, traffic
    sidecar admin traffic --stable 8 [--canary 9:10] [--shadow 9:100] [--resident 2]
    sidecar admin load 9 | unload 7 | rollback | reload

The socket is SIDECAR_ADMIN_UDS unless --socket names it; --model names the model (default: the
served one). It prints the JSON answer; the exit code is 0 on a 2xx answer, 1 otherwise (and 1
when a loaded version ends failed).
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import sys
from typing import Any

TIMEOUT_S = 600.0  # a load may take minutes on a large model


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=TIMEOUT_S)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(TIMEOUT_S)
        sock.connect(self._path)
        self.sock = sock


def add_parser(commands: Any) -> None:
    """The `admin` subcommand and its actions."""
    admin = commands.add_parser("admin", help="model versions over the admin socket")
    admin.add_argument("--socket", help="the admin socket (default: SIDECAR_ADMIN_UDS)")
    admin.add_argument("--model", default="default", help="the served name (default: default)")
    actions = admin.add_subparsers(dest="action", required=True)
    actions.add_parser("versions", help="versions, their states, the routing in force")
    traffic = actions.add_parser("traffic", help="set the desired state")
    traffic.add_argument("--stable", help="the stable version")
    traffic.add_argument("--canary", help="VERSION:PERCENT of unpinned requests")
    traffic.add_argument("--shadow", help="VERSION:PERCENT of stable requests, run again")
    traffic.add_argument("--resident", type=int, help="versions kept loaded (default 1)")
    for action in ("load", "unload"):
        parser = actions.add_parser(action, help=f"{action} a version under the model root")
        parser.add_argument("version")
    actions.add_parser("rollback", help="make the previous stable version stable again")
    actions.add_parser("reload", help="re-read the model root and versions.json now")


def run(args: argparse.Namespace, admin_uds: str | None) -> int:
    """Send the action to the admin socket and print the answer."""
    path = args.socket or admin_uds
    if not path:
        print("sidecar admin: set SIDECAR_ADMIN_UDS or pass --socket", file=sys.stderr)
        return 2
    model = f"/admin/v1/models/{args.model}"
    body: dict[str, Any] | None = None
    if args.action == "versions":
        method, url = "GET", f"{model}/versions"
    elif args.action == "traffic":
        method, url, body = "PUT", f"{model}/traffic", _desired(args)
    elif args.action in ("load", "unload"):
        method, url = "POST", f"{model}/versions/{args.version}/{args.action}"
    elif args.action == "rollback":
        method, url = "POST", f"{model}/rollback"
    else:
        method, url = "POST", "/admin/v1/reload"
    connection = _UnixConnection(path)
    try:
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        connection.request(method, url, body=payload, headers=headers)
        response = connection.getresponse()
        text = response.read().decode("utf-8", "replace")
    except OSError as exc:
        print(f"sidecar admin: cannot reach {path}: {exc}", file=sys.stderr)
        return 1
    finally:
        connection.close()
    print(text)
    if not 200 <= response.status < 300:
        return 1
    version = json.loads(text).get("version")
    return 1 if isinstance(version, dict) and version.get("state") == "failed" else 0


def _desired(args: argparse.Namespace) -> dict[str, Any]:
    desired: dict[str, Any] = {}
    if args.stable:
        desired["stable"] = args.stable
    for key in ("canary", "shadow"):
        value = getattr(args, key)
        if value:
            version, _, percent = value.rpartition(":")
            try:
                desired[key] = {"version": version, "percent": float(percent)}
            except ValueError:
                raise SystemExit(f"sidecar admin: --{key} takes VERSION:PERCENT") from None
    if args.resident is not None:
        desired["resident"] = args.resident
    return desired

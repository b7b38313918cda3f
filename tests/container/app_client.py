"""The "app" of the container tests: runs inside the app container, standard library only.

The tests pass this file's source to `python -c` in a container that shares the sidecar's network
namespace and socket volume, as an app container in the same pod does:

    request tcp|uds METHOD PATH [JSON_BODY]   print {"status": ..., "body": ...}
    load tcp|uds NUM_REQUESTS NUM_INPUTS OUT  send them all at once; write "sent" to OUT once
                                              every request is written, then the statuses as JSON
    read PATH                                 print the file, or nothing if it is missing
    exists PATH                               print true or false
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import sys
import threading

SOCKET_PATH = "/var/run/sidecar/sidecar.sock"
TCP_PORT = 8080
TIMEOUT_S = 120.0


class UnixConnection(http.client.HTTPConnection):
    """HTTP over the sidecar's Unix socket."""

    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=TIMEOUT_S)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT_S)
        self.sock.connect(self._path)


def connect(transport: str) -> http.client.HTTPConnection:
    if transport == "uds":
        return UnixConnection(SOCKET_PATH)
    return http.client.HTTPConnection("127.0.0.1", TCP_PORT, timeout=TIMEOUT_S)


def send(connection: http.client.HTTPConnection, method: str, path: str, body: str | None) -> None:
    headers = {"Content-Type": "application/json"} if body is not None else {}
    connection.request(method, path, body=body, headers=headers)


def request(transport: str, method: str, path: str, body: str | None) -> None:
    connection = connect(transport)
    send(connection, method, path, body)
    response = connection.getresponse()
    raw = response.read()
    try:
        decoded = json.loads(raw)
    except ValueError:
        decoded = raw.decode(errors="replace")
    print(json.dumps({"status": response.status, "body": decoded}))


def load(transport: str, num_requests: int, num_inputs: int, out: str) -> None:
    sentence = " ".join(f"word{index} of a longer sentence" for index in range(12))
    body = json.dumps({"inputs": [f"{i}: {sentence}" for i in range(num_inputs)]})
    statuses: list[int | str] = ["unanswered"] * num_requests
    sent = threading.Semaphore(0)

    def one(index: int) -> None:
        try:
            connection = connect(transport)
            send(connection, "POST", "/v1/predict", body)
        finally:
            sent.release()
        try:
            response = connection.getresponse()
            response.read()
            statuses[index] = response.status
        except OSError as exc:
            statuses[index] = type(exc).__name__

    threads = [threading.Thread(target=one, args=(index,)) for index in range(num_requests)]
    for thread in threads:
        thread.start()
    for _ in threads:
        sent.acquire()
    write(out, "sent")
    for thread in threads:
        thread.join()
    write(out, json.dumps(statuses))


def write(path: str, text: str) -> None:
    """Replace `path` atomically, so that a reader sees the old or the new text only."""
    with open(path + ".tmp", "w") as file:
        file.write(text)
    os.replace(path + ".tmp", path)


def main(argv: list[str]) -> None:
    command, *args = argv
    if command == "request":
        transport, method, path, *body = args
        request(transport, method, path, body[0] if body else None)
    elif command == "load":
        load(args[0], int(args[1]), int(args[2]), args[3])
    elif command == "read":
        if os.path.exists(args[0]):
            with open(args[0]) as file:
                print(file.read())
    elif command == "exists":
        print(json.dumps(os.path.exists(args[0])))
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])

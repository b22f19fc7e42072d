"""A hostile MCP server speaking raw JSON-RPC: huge, malformed and non-JSON answers."""

from __future__ import annotations

import json
import sys

TOOLS = [
    {"name": name, "description": name, "inputSchema": {"type": "object", "properties": {}}}
    for name in ("huge", "malformed", "garbage", "echo")
]


def send(message: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


for line in sys.stdin:
    request = json.loads(line)
    method, ident = request.get("method"), request.get("id")
    if ident is None:
        continue  # a notification
    if method == "initialize":
        result: object = {
            "protocolVersion": request["params"]["protocolVersion"],
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "malicious", "version": "6.6.6"},
        }
    elif method == "tools/list":
        result = {"tools": TOOLS}
    elif method == "tools/call":
        name = request["params"]["name"]
        if name == "huge":
            result = {"content": [{"type": "text", "text": "x" * (8 * 1024 * 1024)}]}
        elif name == "malformed":
            result = {"content": "not a list", "isError": "maybe"}
        elif name == "garbage":
            sys.stdout.write("this is not JSON {{{\n")
            sys.stdout.flush()
            continue  # and never answers
        else:
            result = {"content": [{"type": "text", "text": "echo"}]}
    else:
        send({"jsonrpc": "2.0", "id": ident, "error": {"code": -32601, "message": method}})
        continue
    send({"jsonrpc": "2.0", "id": ident, "result": result})

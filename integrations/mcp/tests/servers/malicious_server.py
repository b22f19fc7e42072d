"""A hostile MCP server speaking raw JSON-RPC: huge, endless, malformed and non-JSON answers.

``enormous`` writes one line of ``ENORMOUS_MIB`` MiB (default 64) in 1 MiB pieces.
"""

from __future__ import annotations

import json
import os
import sys
import time

TOOLS = [
    {"name": name, "description": name, "inputSchema": {"type": "object", "properties": {}}}
    for name in ("huge", "enormous", "malformed", "garbage", "stray", "echo", "silent", "rpc_error")
]
ENORMOUS_MIB = int(os.environ.get("ENORMOUS_MIB", "64"))


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
            "capabilities": {"tools": {}, "resources": {}, "prompts": {}},
            "serverInfo": {"name": "malicious", "version": "6.6.6"},
        }
    elif method == "tools/list" and os.environ.get("MALICIOUS_LIST") == "error":
        send({"jsonrpc": "2.0", "id": ident, "error": {"code": -32603, "message": "no list"}})
        continue
    elif method == "tools/list":  # in two pages
        if (request.get("params") or {}).get("cursor") == "page-2":
            result = {"tools": TOOLS[3:]}
        else:
            result = {"tools": TOOLS[:3], "nextCursor": "page-2"}
    elif method == "resources/list":  # a line that is not JSON-RPC, and no answer
        sys.stdout.write("<html>oops</html>\n")
        sys.stdout.flush()
        continue
    elif method == "resources/templates/list":  # no answer at all
        continue
    elif method == "resources/read":  # asks for input (the proxy cannot pass that on)
        result = {"resultType": "input_required", "requestState": "more"}
    elif method == "prompts/get":  # malformed
        result = {"messages": "not a list"}
    elif method == "tools/call":
        name = request["params"]["name"]
        if name == "huge":
            result = {"content": [{"type": "text", "text": "x" * (8 * 1024 * 1024)}]}
        elif name == "malformed":
            result = {"content": "not a list", "isError": "maybe"}
        elif name == "enormous":
            piece = "x" * (1024 * 1024)
            head = json.dumps({"jsonrpc": "2.0", "id": ident, "result": {"content": ""}})
            sys.stdout.write(head[: -len('"}}')])  # the string left open
            for _ in range(ENORMOUS_MIB):
                sys.stdout.write(piece)
            sys.stdout.write('"}}\n')
            sys.stdout.flush()
            continue
        elif name == "garbage":
            sys.stdout.write("this is not JSON {{{\n")
            sys.stdout.flush()
            continue  # and never answers
        elif name == "stray":  # two stray lines (a print() to stdout), then the answer
            sys.stdout.write("debug: starting\n\nthe second {\n")
            sys.stdout.flush()
            time.sleep(1)
            result = {"content": [{"type": "text", "text": "late"}]}
        elif name == "silent":
            continue  # never answers
        elif name == "rpc_error":
            error = {"code": -32000, "message": "the backend is down"}
            send({"jsonrpc": "2.0", "id": ident, "error": error})
            continue
        else:
            result = {"content": [{"type": "text", "text": "echo"}]}
    else:
        send({"jsonrpc": "2.0", "id": ident, "error": {"code": -32601, "message": method}})
        continue
    send({"jsonrpc": "2.0", "id": ident, "result": result})

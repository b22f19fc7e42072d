"""`make bench`: latency the governing MCP proxy adds to one ``tools/call`` over stdio.

One process, one event loop, two real ``mcp.ClientSession`` s over stdio: one straight to the
example file-system server (``integrations/mcp/examples/fs_proxy/fs_server.py``), one to
``python -m cra_agents_mcp proxy`` in front of another copy of it (SQLite store, ``async``
durability: the trace writer runs). Both read the same small file with ``read_file`` (an
allowed call). The two are timed in turns, ``ROUNDS`` rounds of ``N`` calls each, so load from
other work falls on both alike; the table gives median, p99 and mean per call and what the
proxy adds (difference of the statistics).

    python benchmarks/mcp_bench.py [N] [ROUNDS]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import anyio
from _timing import Timing, load_average, machine
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "integrations" / "mcp" / "examples" / "fs_proxy"


async def bench(folder: Path, store: str, n: int, rounds: int) -> dict[str, list[int]]:
    server = [sys.executable, str(EXAMPLE / "fs_server.py"), str(folder)]
    direct = StdioServerParameters(command=server[0], args=server[1:])
    proxy = StdioServerParameters(
        command=sys.executable,
        args=[
            *("-m", "cra_agents_mcp", "proxy", "--atlas", str(EXAMPLE / "atlas.json")),
            *("--store", store, "--", *server),
        ],
    )
    found: dict[str, list[int]] = {"direct": [], "proxy": []}
    with open(os.devnull, "w") as errlog:  # noqa: ASYNC230 - /dev/null does not block
        async with (
            stdio_client(direct, errlog=errlog) as (r1, w1),
            ClientSession(r1, w1) as straight,
            stdio_client(proxy, errlog=errlog) as (r2, w2),
            ClientSession(r2, w2) as proxied,
        ):
            await straight.initialize()
            await proxied.initialize()
            arguments = {"path": "notes.txt"}
            for session in (straight, proxied):  # warm up both paths
                for _ in range(200):
                    await session.call_tool("read_file", arguments)
            clock = time.perf_counter_ns
            for _ in range(rounds):
                for name, session in (("direct", straight), ("proxy", proxied)):
                    out = found[name]
                    for _ in range(n):
                        t0 = clock()
                        result = await session.call_tool("read_file", arguments)
                        out.append(clock() - t0)
                        if result.is_error:
                            raise SystemExit(f"{name}: {result.content}")
    return found


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "files"
        folder.mkdir()
        (folder / "notes.txt").write_text("hello")
        store = f"sqlite://{Path(tmp) / 'traces.db'}"
        found = anyio.run(bench, folder, store, n, rounds)
    direct, proxy = Timing.of(found["direct"]), Timing.of(found["proxy"])
    print(f"MCP tools/call over stdio, {n} x {rounds} calls each, in turns")
    print(f"{machine()}; {load_average()}")
    print(f"{'':24s} {'median µs':>10s} {'p99 µs':>10s} {'mean µs':>10s}")
    for label, timing in (("direct to the server", direct), ("through cra mcp proxy", proxy)):
        print(f"{label:24s} {timing.median:10.1f} {timing.p99:10.1f} {timing.mean:10.1f}")
    print(
        f"{'added by the proxy':24s} {proxy.median - direct.median:10.1f} "
        f"{proxy.p99 - direct.p99:10.1f} {proxy.mean - direct.mean:10.1f}"
    )


if __name__ == "__main__":
    main()

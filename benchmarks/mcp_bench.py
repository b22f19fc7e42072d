"""`make bench`: latency the governing MCP proxy adds to one ``tools/call`` over stdio.

One process, one event loop, two real ``mcp.ClientSession`` s over stdio: one straight to the
example file-system server (``integrations/mcp/examples/fs_proxy/fs_server.py``), one to
``python -m cra_agents_mcp proxy`` in front of another copy of it (SQLite store, ``async``
durability: the trace writer runs). Both read the same small file with ``read_file`` (an
allowed call). The two are timed in turns, ``ROUNDS`` rounds of ``N`` calls each, so load from
other work falls on both alike; the table gives median, p99 and mean per call and what the
proxy adds (difference of the statistics).

    python benchmarks/mcp_bench.py [N] [ROUNDS]

``--line MIB``: instead, what one line of MIB MiB from a hostile stdio upstream costs the proxy
(``integrations/mcp/tests/servers/malicious_server.py``, tool ``enormous``, default cap of
16 MiB per message): how soon the call fails, how soon the next call is answered (the whole
line read and dropped), and the proxy process's peak resident memory (``VmHWM``).
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
TESTS = ROOT / "integrations" / "mcp" / "tests"


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


def _children_hwm_kib(marker: str) -> int:
    """Peak resident memory (KiB) of this process's child whose command line has ``marker``."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) != os.getpid():
                continue
            folder = stat.parent
            if marker not in (folder / "cmdline").read_bytes().decode(errors="replace"):
                continue
            for line in (folder / "status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        except (OSError, IndexError, ValueError):
            continue
    raise SystemExit(f"no child process running {marker}")


async def line_cost(store: str, mib: int) -> dict[str, float]:
    """One ``mib`` MiB line from a hostile upstream: seconds to fail, to recover; peak RSS."""
    # The proxy passes its upstream only a minimal environment (the SDK's rule): env sets it.
    malicious = str(TESTS / "servers" / "malicious_server.py")
    upstream = ["env", f"ENORMOUS_MIB={mib}", sys.executable, malicious]
    proxy = StdioServerParameters(
        command=sys.executable,
        args=[
            *("-m", "cra_agents_mcp", "proxy", "--atlas", str(TESTS / "atlas.json")),
            *("--store", store, "--", *upstream),
        ],
    )
    with open(os.devnull, "w") as errlog:  # noqa: ASYNC230 - /dev/null does not block
        async with (
            stdio_client(proxy, errlog=errlog) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            await session.call_tool("echo", {"text": "x"})
            before = _children_hwm_kib("cra_agents_mcp")
            t0 = time.perf_counter()
            failed = await session.call_tool("enormous", {})
            t1 = time.perf_counter()
            echo = await session.call_tool("echo", {"text": "x"})
            t2 = time.perf_counter()
            after = _children_hwm_kib("cra_agents_mcp")
    if not failed.is_error or echo.is_error:
        raise SystemExit(f"unexpected: {failed.content} / {echo.content}")
    return {
        "failed_s": t1 - t0,
        "next_answer_s": t2 - t0,
        "hwm_before_mib": before / 1024,
        "hwm_after_mib": after / 1024,
    }


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--line":
        mib = int(sys.argv[2])
        with tempfile.TemporaryDirectory() as tmp:
            cost = anyio.run(line_cost, f"sqlite://{Path(tmp) / 'traces.db'}", mib)
        print(f"one {mib} MiB line from a stdio upstream, through cra mcp proxy")
        print(f"{machine()}; {load_average()}")
        print(f"the call failed after      {cost['failed_s']:8.3f} s")
        print(f"the next call answered at  {cost['next_answer_s']:8.3f} s")
        print(
            f"proxy peak RSS             {cost['hwm_before_mib']:8.1f} MiB before, "
            f"{cost['hwm_after_mib']:.1f} MiB after"
        )
        return
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

"""Wheels of the workspace and fresh venvs with them pip-installed, as a user gets them.

Shared by ``tests/test_installed.py`` and the tests that install our wheels beside packages
the workspace cannot hold (``integrations/mcp/tests/test_langchain_mcp_adapters.py``).
Versions are held to ``uv.lock`` with a constraints file, so CI is repeatable; a venv is
reused when its wheels, requirements and constraints have not changed (``CRA_INSTALLED_DIR``
keeps them between runs).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness.processes import run_bounded

__all__ = [
    "ROOT",
    "Build",
    "Venv",
    "build_wheels",
    "check",
    "make_venv",
    "session_build",
    "uv",
    "without",
]

ROOT = Path(__file__).resolve().parents[2]

#: The build this process made (one ``uv build`` per pytest run, whichever test asks first).
_BUILT: list[Build] = []


@dataclass(frozen=True)
class Venv:
    """A virtual environment outside the repository, with our wheels installed."""

    path: Path

    @property
    def bin(self) -> Path:
        return self.path / "bin"

    @property
    def python(self) -> Path:
        return self.bin / "python"

    def env(self) -> dict[str, str]:
        """A user's environment: this venv first on PATH, none of our variables set."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("CRA_", "PYTHON", "VIRTUAL_ENV", "UV_", "JUPYTER", "COV_"))
        }
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        env["VIRTUAL_ENV"] = str(self.path)
        return env

    def run(self, *argv: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return run_bounded(argv, cwd=cwd, env=self.env(), timeout=timeout)

    def installed(self) -> dict[str, str]:
        done = self.run(str(self.python), "-m", "pip", "list", "--format", "json", cwd=self.path)
        assert done.returncode == 0, done.stderr
        return {p["name"].lower().replace("_", "-"): p["version"] for p in json.loads(done.stdout)}

    def site_packages_mib(self) -> float:
        total = sum(f.stat().st_size for f in (self.path / "lib").rglob("*") if f.is_file())
        return total / 2**20


def uv() -> list[str]:
    """How to run uv here."""
    found = shutil.which("uv")  # .ci/run and the Makefile install it when missing
    return [found] if found else ["python3", "-m", "uv"]


def check(argv: list[str], cwd: Path, timeout: float = 900) -> str:
    """Run ``argv`` (none of our variables set); its stdout, or fail the test with its output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "CRA_"))}
    env["UV_PYTHON_DOWNLOADS"] = "never"
    done = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{argv} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done.stdout


@dataclass(frozen=True)
class Build:
    """The wheels of the workspace and the constraints that pin their dependencies."""

    core: Path
    langchain: Path
    mcp: Path
    constraints: Path
    home: Path

    def extras(self) -> list[str]:
        with zipfile.ZipFile(self.core) as wheel:
            name = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
            metadata = wheel.read(name).decode()
        return [
            line.split(":", 1)[1].strip()
            for line in metadata.splitlines()
            if line.startswith("Provides-Extra:")
        ]


def session_build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    """The wheels, built once per pytest run, in ``CRA_INSTALLED_DIR`` (kept) or a temp folder."""
    if not _BUILT:
        keep = os.environ.get("CRA_INSTALLED_DIR")
        home = Path(keep) if keep else tmp_path_factory.mktemp("installed")
        home.mkdir(parents=True, exist_ok=True)
        _BUILT.append(build_wheels(home))
    return _BUILT[0]


def build_wheels(home: Path) -> Build:
    """``uv build`` every package of the workspace into ``home/dist``; ``uv export`` the pins."""
    dist = home / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    check([*uv(), "build", "--all-packages", "--wheel", "-o", str(dist)], cwd=ROOT)
    constraints = home / "constraints.txt"
    check(
        [
            *uv(),
            "export",
            "--frozen",
            "--all-packages",
            "--all-extras",
            "--no-hashes",
            "--no-emit-workspace",
            "--format",
            "requirements-txt",
            "-o",
            str(constraints),
        ],
        cwd=ROOT,
    )
    core = next(dist.glob("cra_agents-*.whl"))
    langchain = next(dist.glob("cra_agents_langchain-*.whl"))
    mcp = next(dist.glob("cra_agents_mcp-*.whl"))
    return Build(core=core, langchain=langchain, mcp=mcp, constraints=constraints, home=home)


def without(constraints: Path, names: Iterable[str], extra: Iterable[str], out: Path) -> Path:
    """``constraints`` less the pins of ``names``, plus the lines ``extra``, written to ``out``.

    For a venv that holds other versions of a few packages than the workspace does (mcp 1.x
    beside langchain-mcp-adapters); every other pin stays.
    """
    dropped = {name.lower() for name in names}
    kept = [
        line
        for line in constraints.read_text("utf-8").splitlines()
        if line.split("==", 1)[0].strip().lower() not in dropped
    ]
    out.write_text("\n".join([*kept, *extra]) + "\n", "utf-8")
    return out


def make_venv(
    build: Build, name: str, requirements: list[str], constraints: Path | None = None
) -> Venv:
    """A fresh venv with ``requirements`` pip-installed (reused when nothing changed).

    ``constraints`` defaults to the build's (``uv.lock``'s pins).
    """
    pins = constraints or build.constraints
    stamp = hashlib.sha256(
        b"\0".join(
            [
                *(r.encode() for r in requirements),
                build.core.read_bytes(),
                build.langchain.read_bytes(),
                build.mcp.read_bytes(),
                pins.read_bytes(),
            ]
        )
    ).hexdigest()
    venv = Venv(build.home / name)
    marker = venv.path / ".cra-stamp"
    if marker.exists() and marker.read_text() == stamp:
        return venv
    shutil.rmtree(venv.path, ignore_errors=True)
    base = getattr(sys, "_base_executable", sys.executable)
    check([base, "-m", "venv", str(venv.path)], cwd=build.home)
    check(
        [
            str(venv.python),
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "-q",
            "-c",
            str(pins),
            *requirements,
        ],
        cwd=build.home,
        timeout=1200,
    )
    marker.write_text(stamp)
    return venv

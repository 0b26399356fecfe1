#!/usr/bin/env python3
"""Write deploy/requirements.lock and deploy/requirements-build.lock: the exact Python
packages deploy/install.sh puts into a room box's venv, each with the sha256 of every file
pip may pick for it, so install.sh can refuse anything else (pip --require-hashes).

Which versions: the ones installed in an environment you have tested (default: the kit's
.venv), following the agent's requirements (pyproject.toml dependencies and the hw extra)
through every package's own requirements. Nothing is resolved anew here: the lock says
what was tested, not what is newest.

Which files: from the index the boxes use (PyPI), fetched with pip itself:
  * a wheel for CPython 3.11 (Debian 12, Raspberry Pi OS 12) on x86_64 and on aarch64,
    manylinux up to glibc 2.36 (the hash of each one pip would pick there);
  * the sdist for a package that has no such wheel (pyscard, pyalsaaudio: built on the
    box against libpcsclite-dev / libasound2-dev, with swig for pyscard).
The build tools (setuptools, which colorzero also needs at run time) are a lock of their
own, installed first: install.sh builds those sdists and the agent with
--no-build-isolation, so no unpinned setuptools is fetched behind the lock's back.

Regenerate after changing pyproject.toml's dependencies or upgrading the tested .venv:
    .venv/bin/python deploy/fleet/make-lock.py
then run the tests (tests/test_install.py checks the lock against the .venv) and commit
both files. Needs network access to the index; downloads about 60 MB into a temporary
directory.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
KIT = HERE.parent.parent
# setuptools >= 70.1 builds wheels without the "wheel" package
BUILD_TOOLS = {"setuptools": "80.9.0"}
ARCHES = ("x86_64", "aarch64")
GLIBC_MAX = 36  # Debian 12 / Raspberry Pi OS 12

# Run inside the tested environment: every installed distribution's version and requirements,
# and the requirement closure of ROOTS there, markers evaluated for that interpreter.
_PROBE = r"""
import json, re, sys
import importlib.metadata as md
try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement

def norm(n):
    return re.sub(r"[-_.]+", "-", n).lower()

dists = {}
for d in md.distributions():
    name = d.metadata["Name"]
    if name:
        dists.setdefault(norm(name), d)
roots = json.loads(sys.argv[1])
seen, todo, missing = {}, [(r, ()) for r in roots], []
while todo:
    text, extras = todo.pop()
    req = Requirement(text)
    envs = [{"extra": e} for e in extras] or [{"extra": ""}]
    if req.marker is not None and not any(req.marker.evaluate(e) for e in envs):
        continue
    key = norm(req.name)
    d = dists.get(key)
    if d is None:
        missing.append(text)
        continue
    if not req.specifier.contains(d.version, prereleases=True):
        missing.append(f"{text} (installed: {d.version})")
    want = set(req.extras)
    have = seen.get(key)
    if have is not None and want <= have[1]:
        continue
    merged = want | (have[1] if have else set())
    seen[key] = (d.version, merged)
    for sub in d.requires or []:
        todo.append((sub, tuple(sorted(merged))))
print(json.dumps({"pins": {k: v for k, (v, _) in sorted(seen.items())}, "missing": missing}))
"""


class LockError(Exception):
    pass


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def roots_from_pyproject(pyproject: Path, extras: list[str]) -> list[str]:
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    roots = list(project.get("dependencies", []))
    for extra in extras:
        roots += project.get("optional-dependencies", {}).get(extra, [])
    return roots


def tested_pins(python: str, roots: list[str]) -> dict[str, str]:
    r = subprocess.run([python, "-c", _PROBE, json.dumps(roots)], capture_output=True, text=True)
    if r.returncode != 0:
        raise LockError(f"{python}: could not read its installed packages:\n{r.stderr}")
    out = json.loads(r.stdout)
    if out["missing"]:
        raise LockError(f"{python} lacks (or has a wrong version of) {', '.join(out['missing'])}: "
                        "install the agent with its hw extra there first (pip install -e '.[hw]')")
    return out["pins"]


def platforms(arch: str) -> list[str]:
    tags = [f"manylinux_2_{n}_{arch}" for n in range(GLIBC_MAX, 16, -1)]
    tags.append(f"manylinux2014_{arch}")
    if arch == "x86_64":
        tags += ["manylinux2010_x86_64", "manylinux1_x86_64"]
    return tags


def pip(python: str, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([python, "-m", "pip", *args], capture_output=True, text=True, env=env)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_hashes(python: str, pins: dict[str, str], args: argparse.Namespace, work: Path,
                 env: dict[str, str], sdist_python: str | None = None) -> dict[str, dict[str, str]]:
    """{name: {file name: sha256}}: one wheel per architecture, else the sdist."""
    files: dict[str, dict[str, str]] = {}
    index = ["--index-url", args.index_url, "--no-cache-dir", "--disable-pip-version-check"]
    for name, version in pins.items():
        got: dict[str, str] = {}
        need_sdist = False
        for arch in ARCHES:
            d = work / f"{name}-{arch}"
            plat = [a for p in platforms(arch) for a in ("--platform", p)]
            r = pip(python, ["download", "-q", *index, "--no-deps", "--only-binary", ":all:", *plat,
                             "--python-version", args.python_version, "--implementation", "cp",
                             "-d", str(d), f"{name}=={version}"], env)
            if r.returncode != 0:
                if "No matching distribution" not in r.stderr:
                    raise LockError(f"pip download {name}=={version} ({arch}): {r.stderr.strip()}")
                need_sdist = True
                continue
            for f in d.iterdir():
                got[f.name] = sha256(f)
        if need_sdist:
            d = work / f"{name}-sdist"
            r = pip(sdist_python or python, ["download", "-q", *index, "--no-deps", "--no-binary", ":all:",
                                             "--no-build-isolation", "-d", str(d), f"{name}=={version}"], env)
            if r.returncode != 0:
                raise LockError(f"pip download {name}=={version} (sdist): {r.stderr.strip()}")
            for f in d.iterdir():
                got[f.name] = sha256(f)
        files[name] = got
        print(f"make-lock: {name}=={version}: {', '.join(sorted(got))}", file=sys.stderr)
    return files


def render(pins: dict[str, str], files: dict[str, dict[str, str]], title: str, note: str) -> str:
    lines = [f"# {title}",
             "# Generated by deploy/fleet/make-lock.py; do not edit by hand (regenerate: see that script).",
             f"# {note}",
             "# install.sh installs it with pip --require-hashes: a file whose sha256 is not listed",
             "# here is refused, from the index or from a --wheelhouse alike.", ""]
    for name, version in sorted(pins.items()):
        hashes = sorted(set(files[name].values()))
        lines.append(f"{name}=={version} \\")
        lines += [f"    --hash=sha256:{h}" + (" \\" if i < len(hashes) - 1 else "") for i, h in enumerate(hashes)]
        lines.append(f"    # {', '.join(sorted(files[name]))}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Write the hash-checked requirement locks install.sh uses.")
    venv = KIT / ".venv/bin/python"
    p.add_argument("--python", default=str(venv) if venv.exists() else sys.executable,
                   help="interpreter of the tested environment whose versions are locked (default: the kit's .venv)")
    p.add_argument("--extra", action="append", default=None, help="extras of the agent to lock (default: hw)")
    p.add_argument("--python-version", default="3.11", help="Python of the boxes (default 3.11: Debian 12)")
    p.add_argument("--index-url", default="https://pypi.org/simple", help="the index the boxes install from")
    p.add_argument("--out", type=Path, default=KIT / "deploy/requirements.lock")
    p.add_argument("--build-out", type=Path, default=KIT / "deploy/requirements-build.lock")
    args = p.parse_args(argv)
    extras = args.extra or ["hw"]
    # only the index named here: no pip.conf, no find-links, no cache of locally built wheels
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PIP_")}, "PIP_CONFIG_FILE": os.devnull}
    try:
        roots = roots_from_pyproject(KIT / "pyproject.toml", extras)
        pins = {k: v for k, v in tested_pins(args.python, roots).items()
                if k not in BUILD_TOOLS and k != "examroom"}
        with tempfile.TemporaryDirectory(prefix="make-lock-") as tmp:
            work = Path(tmp)
            build_files = fetch_hashes(args.python, BUILD_TOOLS, args, work / "build", env)
            build_text = render(BUILD_TOOLS, build_files, "deploy/requirements-build.lock: build tools, installed first",
                                "setuptools builds requirements.lock's sdists and the agent "
                                "(--no-build-isolation); colorzero needs it at run time too.")
            build_lock = work / "build.lock"
            build_lock.write_text(build_text, encoding="utf-8")
            # sdists are downloaded (their metadata prepared) with the locked build tools only
            tools = work / "venv"
            subprocess.run([sys.executable, "-m", "venv", str(tools)], check=True)
            r = pip(str(tools / "bin/python"), ["install", "-q", "--index-url", args.index_url, "--no-cache-dir",
                                                "--require-hashes", "--no-deps", "-r", str(build_lock)], env)
            if r.returncode != 0:
                raise LockError(f"the build lock does not install: {r.stderr.strip()}")
            files = fetch_hashes(args.python, pins, args, work / "run", env, sdist_python=str(tools / "bin/python"))
        text = render(pins, files, "deploy/requirements.lock: what install.sh installs into /opt/examroom/.venv",
                      f"The agent's dependencies and its {'/'.join(extras)} extra, as tested; CPython "
                      f"{args.python_version} wheels for {' and '.join(ARCHES)}, sdists where there is no wheel.")
    except LockError as e:
        print(f"make-lock: error: {e}", file=sys.stderr)
        return 2
    args.build_out.write_text(build_text, encoding="utf-8")
    args.out.write_text(text, encoding="utf-8")
    print(f"make-lock: wrote {args.out} ({len(pins)} packages) and {args.build_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

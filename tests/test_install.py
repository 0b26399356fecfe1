"""deploy/install.sh on a staged root (``--destdir``): what lands on the box, the pip
commands it runs against the hash-checked locks, the previous config, and the exam lock.

No venv is built here: the staged /opt/examroom/.venv holds two stand-ins that log how they
were called. ``python -m pip ...`` only logs (or, for the wheelhouse test, runs this venv's
real pip on the lock install with --dry-run); any other ``python`` call and every
``examroom-agent`` subcommand but ``exam-lock`` and ``note`` run the kit's real code, so
check-config is the agent's own. ``exam-lock`` answers what the test wrote in
``lock_rc``/``lock_out``, as the real CLI's contract says (0 free, 1 locked, 3 no agent).
deploy/fleet/make-lock.py is checked against the .venv the tests run in.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
INSTALL = REPO / "deploy/install.sh"
CONFIGS = REPO / "deploy/fleet/make-configs.py"
PKI = REPO / "deploy/pki/make-pki.sh"
LOCK = REPO / "deploy/requirements.lock"
BUILD_LOCK = REPO / "deploy/requirements-build.lock"
SEATPLANS = REPO / "deploy/fleet/seatplans"


def run(*cmd, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=120, **kw)
    assert r.returncode == 0, f"{cmd}: {r.stdout}{r.stderr}"
    return r


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fleet")
    run("bash", PKI, root / "pki", "init", "site01", "localhost", "127.0.0.1")
    run(sys.executable, CONFIGS, "--pki", root / "pki", "--site", "site01", "--broker-host", "127.0.0.1",
        "--out", root / "bundles")
    return root / "bundles"


STUB_PYTHON = """#!/bin/bash
echo "python $*" >> "{log}"
if [[ "$1 $2" == "-m pip" ]]; then
  if [[ -f "{dir}/pip_real" && " $* " == *" --require-hashes "* ]]; then
    shift 3  # "-m pip install": the lock install, for real but changing nothing
    exec "{python}" -m pip install --dry-run "$@"
  fi
  exit 0
fi
exec env PYTHONPATH="{repo}" "{python}" "$@"
"""

STUB_AGENT = """#!/bin/bash
echo "agent $*" >> "{log}"
case "$1" in
  exam-lock) cat "{dir}/lock_out" 2>/dev/null; exit $(cat "{dir}/lock_rc" 2>/dev/null || echo 3) ;;
  note) exit 0 ;;
esac
exec env PYTHONPATH="{repo}" "{python}" -m examroom.agent.cli "$@"
"""


class Box:
    """A staged root with the stand-in venv; ``install(...)`` runs install.sh on it."""

    def __init__(self, tmp: Path) -> None:
        self.root = tmp / "root"
        self.dir = tmp / "stub"
        self.dir.mkdir()
        self.log = self.dir / "calls.log"
        self.log.touch()
        bin_ = self.root / "opt/examroom/.venv/bin"
        bin_.mkdir(parents=True)
        for name, text in (("python", STUB_PYTHON), ("examroom-agent", STUB_AGENT)):
            (bin_ / name).write_text(text.format(log=self.log, dir=self.dir, python=sys.executable, repo=REPO))
            (bin_ / name).chmod(0o755)

    def lock(self, rc: int, out: str = "") -> None:
        (self.dir / "lock_rc").write_text(str(rc))
        (self.dir / "lock_out").write_text(out)

    def install(self, *args: object, kit: Path = REPO) -> subprocess.CompletedProcess:
        self.log.write_text("")
        return subprocess.run([str(kit / "deploy/install.sh"), "--destdir", str(self.root), *map(str, args)],
                              capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHON": sys.executable})

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines()

    @property
    def etc(self) -> Path:
        return self.root / "etc/examroom"


@pytest.fixture
def box(tmp_path: Path) -> Box:
    return Box(tmp_path)


def _seatplan_ids() -> dict[str, set[str]]:
    """Every ID number in the kit's seat plans, by plan."""
    return {p.name: set(re.findall(r"\b\d{17}[\dX]\b", p.read_text(encoding="utf-8")))
            for p in SEATPLANS.glob("*") if p.is_file()}


def test_the_box_gets_its_own_bundle_and_code_only(box: Box, bundles: Path) -> None:
    # an install from before this one copied the whole kit, every room's seat plan with it
    old = box.root / "opt/examroom/src/deploy/fleet/seatplans"
    old.mkdir(parents=True)
    shutil.copy(SEATPLANS / "room102.example.csv", old / "room102.csv")
    r = box.install(bundles / "room101")
    assert r.returncode == 0, r.stdout + r.stderr
    src = box.root / "opt/examroom/src"
    assert sorted(p.relative_to(src).as_posix() for p in (src / "deploy").rglob("*")) == [
        "deploy/install.sh", "deploy/requirements-build.lock", "deploy/requirements.lock",
        "deploy/systemd", "deploy/systemd/examroom-agent.service"]
    assert (src / "examroom/agent/cli.py").is_file() and (src / "pyproject.toml").is_file()
    assert (box.root / "opt/examroom/docs/deployment.md").is_file()
    assert not (box.root / "opt/examroom/src.old").exists()
    # no seat plan anywhere on the box but its own, in /etc/examroom
    ids = _seatplan_ids()
    room101, room102 = ids["room101.example.csv"], ids["room102.example.csv"]
    holders = []
    for f in box.root.rglob("*"):
        if f.is_file() and not f.is_symlink():
            text = f.read_bytes().decode("utf-8", "replace")
            if any(i in text for i in room101 | room102):
                holders.append((f.relative_to(box.root).as_posix(), bool(room102 & set(re.findall(r"\d{17}[\dX]", text)))))
    docs_examples = {h for h in holders if "/docs/" in h[0]}  # docs/deployment.md's sample rows
    assert set(holders) - docs_examples == {("etc/examroom/seatplan.csv", False)}, holders
    for f in box.root.rglob("*"):
        assert not (f.name.endswith(".key") and "etc/examroom/tls" not in f.as_posix()), f


def test_packages_come_from_the_hash_checked_locks(box: Box, bundles: Path, tmp_path: Path) -> None:
    r = box.install("--wheelhouse", tmp_path, bundles / "room101")
    assert r.returncode == 0, r.stdout + r.stderr
    pip = [c.split(" ", 3)[3] for c in box.calls() if c.startswith("python -m pip install")]
    src = box.root / "opt/examroom/src"
    wheels = f"--no-index --find-links {tmp_path}"
    assert pip[0].endswith(f"{wheels} --require-hashes --no-deps -r {src}/deploy/requirements-build.lock")
    assert pip[1].endswith(f"{wheels} --require-hashes --no-deps --no-build-isolation -r {src}/deploy/requirements.lock")
    # the agent itself from its source, offline, then a resolve with no index: the lock is complete
    assert "--no-index --no-deps --no-build-isolation --force-reinstall" in pip[2] and pip[2].endswith(str(src))
    assert "--no-index --no-build-isolation --dry-run" in pip[3] and pip[3].endswith(f"{src}[hw]")
    assert len(pip) == 4
    # --config-only touches no package
    r = box.install("--config-only", bundles / "room101")
    assert r.returncode == 0 and not [c for c in box.calls() if "-m pip" in c]


def test_a_file_whose_hash_is_not_in_the_lock_is_refused(box: Box, bundles: Path, tmp_path: Path) -> None:
    """The real pip on the real lock: a wheelhouse wheel that is not the locked file stops the install."""
    (box.dir / "pip_real").touch()
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    name, version = BUILD_LOCK.read_text().split("\n\n")[1].split(" ")[0].split("==")
    (wheels / f"{name}-{version}-py3-none-any.whl").write_bytes(b"PK\x05\x06" + bytes(18))  # not that file
    r = box.install("--wheelhouse", wheels, bundles / "room101")
    assert r.returncode != 0
    assert "DO NOT MATCH THE HASHES" in r.stderr, r.stderr
    assert not box.etc.exists()  # stopped before the config


def test_previous_config_is_not_kept_with_its_key_and_plan(box: Box, bundles: Path) -> None:
    assert box.install("--config-only", bundles / "room101").returncode == 0
    r = box.install("--config-only", "--ignore-hostname", bundles / "room102")
    assert r.returncode == 0, r.stderr
    assert not (box.root / "etc/examroom.prev").exists() and "removed" in r.stdout
    assert tomllib.loads((box.etc / "agent.toml").read_text())["room"]["id"] == "room102"
    assert sorted(p.name for p in (box.root / "etc").iterdir()) == ["examroom", "systemd"]


def test_an_open_session_stops_the_install_before_anything_changes(box: Box, bundles: Path) -> None:
    assert box.install("--config-only", bundles / "room101").returncode == 0
    before = (box.etc / "agent.toml").read_bytes()
    box.lock(1, "locked: session eng-am entry is open (07:30-08:15)")
    r = box.install("--ignore-hostname", bundles / "room102")
    assert r.returncode == 1
    assert "entry is open" in r.stderr and "--force REASON" in r.stderr
    assert (box.etc / "agent.toml").read_bytes() == before
    assert [c for c in box.calls() if not c.startswith("agent exam-lock")] == []  # no pip, no check, no note
    assert box.calls() == [f"agent exam-lock -c {box.etc}/agent.toml"]


def test_force_records_the_reason_on_the_box_first(box: Box, bundles: Path) -> None:
    assert box.install("--config-only", bundles / "room101").returncode == 0
    box.lock(1, "locked: listening window open")
    r = box.install("--force", "broker certificate expired; chief examiner agreed", bundles / "room101")
    assert r.returncode == 0, r.stdout + r.stderr
    calls = box.calls()
    note = (f"agent note -c {box.etc}/agent.toml --author install.sh -- forced restart during an open session: "
            "broker certificate expired; chief examiner agreed")
    assert calls[:2] == [f"agent exam-lock -c {box.etc}/agent.toml", note]
    assert calls.count(note) == 1
    assert "going ahead (--force)" in r.stdout and "listening window open" in r.stdout
    r = box.install("--force", "  ", bundles / "room101")
    assert r.returncode == 1 and "needs a reason" in r.stderr


@pytest.mark.parametrize("rc", [0, 2, 3])
def test_no_window_or_no_agent_goes_ahead(box: Box, bundles: Path, rc: int) -> None:
    """0: free; 3: no agent answers; 2: an older CLI without exam-lock: nothing to protect."""
    assert box.install("--config-only", bundles / "room101").returncode == 0
    box.lock(rc, "")
    r = box.install("--config-only", bundles / "room101")
    assert r.returncode == 0, r.stderr
    assert not [c for c in box.calls() if c.startswith("agent note")]
    assert ("did not answer" in r.stdout) == (rc != 0)


def test_a_fresh_box_has_nothing_to_lock(box: Box, bundles: Path) -> None:
    box.lock(1, "locked: would be wrong: there is no config yet")
    r = box.install("--config-only", bundles / "room101")
    assert r.returncode == 0, r.stderr
    assert not [c for c in box.calls() if c.startswith("agent exam-lock")]


def test_install_sh_and_the_unit_agree_on_groups_and_modes() -> None:
    """The unit and install.sh agree on the groups and directories (read, not run)."""
    text = INSTALL.read_text(encoding="utf-8")
    assert "OPS_GROUP=examroom-ops" in text
    unit = (REPO / "deploy/systemd/examroom-agent.service").read_text(encoding="utf-8")
    groups = re.search(r"^SupplementaryGroups=(.*)$", unit, re.M).group(1).split()
    created = re.search(r'for g in "\$OPS_GROUP" (.*); do', text).group(1).split()
    assert set(groups) == set(created)  # systemd refuses to start with a missing one
    assert re.search(r"^Group=examroom-ops$", unit, re.M) and re.search(r"^User=examroom$", unit, re.M)
    assert 'chown root:"$OPS_GROUP" "$NEW" "$NEW/tls"' in text
    assert "chmod 0700 /var/lib/examroom" in text and "StateDirectoryMode=0700" in unit


# -- the lock files ---------------------------------------------------------------------

def _make_lock():
    spec = importlib.util.spec_from_file_location("make_lock", REPO / "deploy/fleet/make-lock.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def parse_lock(path: Path) -> dict[str, tuple[str, list[str]]]:
    text = path.read_text(encoding="utf-8").replace("\\\n", " ")
    out = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req, *opts = line.split()
            name, version = req.split("==")
            out[name] = (version, [o.split(":", 1)[1] for o in opts if o.startswith("--hash=sha256:")])
            assert all(o.startswith("--hash=sha256:") for o in opts), line
    return out


def test_lock_pins_what_the_tests_run_with_and_every_pin_has_hashes() -> None:
    ml = _make_lock()
    roots = ml.roots_from_pyproject(REPO / "pyproject.toml", ["hw"])
    tested = {k: v for k, v in ml.tested_pins(sys.executable, roots).items() if k not in ml.BUILD_TOOLS}
    lock = parse_lock(LOCK)
    assert {k: v for k, (v, _) in lock.items()} == tested, \
        "deploy/requirements.lock is not what this .venv runs: regenerate it (deploy/fleet/make-lock.py)"
    for name in ("paho-mqtt", "prometheus-client", "pyserial", "gpiozero", "colorzero", "numpy", "pillow",
                 "pypinyin", "pyscard", "pyalsaaudio"):
        assert name in lock, name
    build = parse_lock(BUILD_LOCK)
    assert set(build) == set(ml.BUILD_TOOLS) == {"setuptools"}
    for name, (_v, hashes) in {**lock, **build}.items():
        assert hashes and all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), name
    # a wheel for each box architecture where the package is not pure Python or an sdist
    comments = LOCK.read_text(encoding="utf-8")
    for name in ("numpy", "pillow"):
        assert len(lock[name][1]) == 2 and f"{name}-{lock[name][0]}-cp311-cp311-manylinux" in comments


def test_install_sh_installs_only_through_the_locks() -> None:
    text = INSTALL.read_text(encoding="utf-8")
    installs = [line.strip() for line in text.splitlines()
                if ('"${PIP[@]}"' in line or "-m pip install" in line) and not line.strip().startswith("PIP=(")]
    assert len(installs) == 4
    assert all("--require-hashes" in line or "--no-index" in line for line in installs), installs
    assert "requirements-build.lock" in text and "requirements.lock" in text


def test_the_kit_keeps_site_data_out_of_git() -> None:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    ignored = ["deploy/fleet/rooms.csv", "deploy/fleet/seatplans/room214.csv", "deploy/fleet/seatplans/a.json",
               "deploy/pki/site01/private/ca.key", "pki-site01/ca.crt", "bundles/room101/agent.toml",
               "deploy/mosquitto/acl", "some/room.key"]
    kept = ["deploy/fleet/seatplans/room101.example.csv", "deploy/fleet/rooms.example.csv",
            "deploy/fleet/make-configs.py", "deploy/pki/make-pki.sh"]
    r = subprocess.run(["git", "-C", str(REPO), "check-ignore", "--no-index", "--stdin"],
                       input="\n".join(ignored + kept), capture_output=True, text=True)
    assert sorted(r.stdout.split()) == sorted(ignored)
    assert stat.S_ISREG((SEATPLANS / "room101.example.csv").stat().st_mode)

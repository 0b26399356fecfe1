"""``examroom-site time-check``: the site's standard time to every room, each room's clock
offset back (and on its record), with a real broker and real agents."""
from __future__ import annotations

from pathlib import Path

from devkit.localbroker import Broker
from examroom.site.cli import main
from tests.agentproc import AgentProcess, wait_online, write_config
from tests.site_lab import site_toml


def test_every_room_answers_its_offset_and_a_wrong_clock_fails_the_check(tmp_path: Path, capsys):
    broker = Broker(tmp_path / "b").start()
    good = AgentProcess(write_config(tmp_path, broker.port, room="room101"), tmp_path / "room101.sock").start()
    strict = AgentProcess(write_config(tmp_path, broker.port, room="room102",
                                       extra="[procedure]\nclock_tolerance_s = 0.000001\n"),
                          tmp_path / "room102.sock").start()
    wait_online(broker.port, ["room101", "room102"])
    cfg = str(site_toml(tmp_path, broker.port))
    try:
        assert main(["--config", cfg, "time-check", "--rooms", "room101"]) == 0
        out = capsys.readouterr().out
        assert "(Asia/Shanghai)" in out and "room101      offset +0." in out and " ok" in out
        assert main(["--config", cfg, "time-check", "--rooms", "room101,room102,room199", "--timeout", "3"]) == 1
        lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
        assert lines["room101"].endswith(" ok") and "WRONG" in lines["room102"] and "no answer" in lines["room199"]
    finally:
        good.kill()
        strict.kill()
        broker.kill()

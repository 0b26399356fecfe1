"""The audio backends declare every option they read, and a config is held to that table.

A backend reads its options with ``self._opt(key)`` or ``config.get(key, ...)``; a key read
but not declared would pass the config check (nothing to check it against) and only fail
with a KeyError, or silently use a default nobody can set, the first time that code path runs
on a box (the loopback self-test, the relay). So the keys read are taken from the drivers'
own source and compared with each backend's ``options``, and the config loader must refuse
a key that is not declared, naming it and the keys it knows.
"""
from __future__ import annotations

import ast
import inspect
import textwrap

import pytest

from examroom.agent import config
from examroom.agent.errors import ConfigError
from examroom.drivers.audio import backends as audio, monitor as audio_monitor
from examroom.drivers.audio.backends import AlsaAudioMonitor, SimAudioMonitor
from examroom.drivers.audio.monitor import AudioMonitor
from examroom.drivers.bus import Bus
from tests.configs import MINIMAL

BACKENDS = (("alsa", AlsaAudioMonitor), ("sim", SimAudioMonitor))


def _reads_config(call: ast.Call) -> bool:
    """A call that reads an option: ``self._opt("k")``, ``config.get("k")``, ``self.config.get("k")``."""
    func = call.func
    if not isinstance(func, ast.Attribute):
        return False
    if func.attr == "_opt":
        return True
    target = func.value
    named_config = (isinstance(target, ast.Name) and target.id == "config") or (
        isinstance(target, ast.Attribute) and target.attr == "config")
    return func.attr == "get" and named_config


def keys_read(cls: type[AudioMonitor]) -> set[str]:
    """Option keys the methods of ``cls`` and of its audio base classes read, as string literals."""
    keys: set[str] = set()
    for klass in cls.__mro__:
        if klass.__module__ not in (audio.__name__, audio_monitor.__name__):
            continue
        for node in ast.walk(ast.parse(textwrap.dedent(inspect.getsource(klass)))):
            if isinstance(node, ast.Call) and _reads_config(node) and node.args:
                key = node.args[0]
            elif (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute)
                  and node.value.attr == "options"):
                key = node.slice
            else:
                continue
            if isinstance(key, ast.Constant) and isinstance(key.value, str):
                keys.add(key.value)
    return keys


@pytest.mark.parametrize("backend,cls", BACKENDS)
def test_every_option_read_is_declared(backend: str, cls: type[AudioMonitor]) -> None:
    read = keys_read(cls)
    # the scan sees reads of every style (a scan that found nothing would prove nothing)
    assert {"device", "silence_hold_s", "relay_pin", "loopback_test", "output_device"} <= read
    assert sorted(read - set(cls.options)) == []
    # The real backend declares nothing it never reads; the sim takes ALSA's whole table
    # (sample_format, retry_s unused) so a room's config can switch backend without edits.
    if backend == "alsa":
        assert sorted(set(cls.options) - read) == []


@pytest.mark.parametrize("backend,cls", BACKENDS)
def test_config_takes_declared_options_and_refuses_others(backend: str, cls: type[AudioMonitor]) -> None:
    device = f'\n[[device]]\nkind = "audio"\nname = "broadcast"\nbackend = "{backend}"\n'
    with pytest.raises(ConfigError) as refused:
        config.parse(MINIMAL + device + "silence_hold = 3\n", "room.toml")  # the _s forgotten
    [problem] = refused.value.problems
    assert (problem.key, problem.message) == (
        "device[0].silence_hold", f"unknown key (known: {', '.join(sorted(cls.options))})")
    assert "silence_hold_s" in problem.message
    assert str(problem).startswith("room.toml: device[0].silence_hold: unknown key")

    [dev] = config.parse(MINIMAL + device + "silence_hold_s = 3\n", "room.toml").devices
    assert dev.options == {**{k: o.default for k, o in cls.options.items()}, "silence_hold_s": 3}
    drv = cls(dev.name, dev.options, Bus())  # the value set is the value the analysis uses
    assert drv.thresholds().silence_hold_s == 3.0

"""eakd.registry: one registry type for every pluggable thing; "module:attr" only for listed plugins."""

from __future__ import annotations

import sys

import pytest

from eakd.engine import TASKS
from eakd.registry import PLUGINS, Registry, import_plugins


def test_register_get_and_errors():
    things: Registry[int] = Registry("thing")
    things.register("one")(1)
    assert things.get("one") == 1 and "one" in things and things.names() == ["one"] and len(things) == 1
    with pytest.raises(ValueError, match="thing 'one' is already registered"):
        things.register("one")(2)
    with pytest.raises(ValueError, match=r"unknown thing 'ones' \(did you mean 'one'\?\); known: one"):
        things.get("ones")


def test_module_attr_names_reach_only_listed_plugins(tmp_path, monkeypatch):
    things: Registry[object] = Registry("thing")
    with pytest.raises(ValueError, match="module 'os' is not one of the config's `imports:`"):
        things.get("os:system")  # imported already, but not listed: never reached
    (tmp_path / "my_things.py").write_text("VALUE = 42\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    import_plugins(["my_things"])
    try:
        assert things.get("my_things:VALUE") == 42
        with pytest.raises(ValueError, match="has no attribute 'NOPE'"):
            things.get("my_things:NOPE")
    finally:
        PLUGINS.discard("my_things")
        sys.modules.pop("my_things", None)
    with pytest.raises(ValueError, match="cannot import plugin module 'no_such_plugin'"):
        import_plugins(["no_such_plugin"])


def test_builtin_tasks_come_from_entry_points():
    assert {"classification", "detection"} <= set(TASKS.names())
    assert TASKS.get("detection").__module__ == "eakd.detection.task"

"""Every CUJIT_ variable is read through config.py, listed in its table, documented in the README and validated."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import cujit
from cujit._runtime import config

ROOT = Path(__file__).resolve().parent.parent


def test_every_variable_in_the_code_is_listed_and_documented() -> None:
    listed = {v.name for v in config.VARIABLES}
    used = set()
    for path in (ROOT / "cujit").rglob("*.py"):
        used |= set(re.findall(r"[\"'](CUJIT_[A-Z_]+)[\"']", path.read_text()))  # environment names are strings
    assert used == listed
    readme = (ROOT / "README.md").read_text()
    for name in listed:
        assert f"`{name}`" in readme, f"{name} is not in the README's table"


@pytest.mark.parametrize("name", ["CUJIT_DISK_CACHE", "CUJIT_OFFLINE", "CUJIT_DUMP_SOURCE"])
def test_bad_flag_values_name_the_variable(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(name, "maybe")
    read = {"CUJIT_DISK_CACHE": config.disk_cache_enabled, "CUJIT_OFFLINE": config.offline,
            "CUJIT_DUMP_SOURCE": config.dump_source}[name]
    with pytest.raises(cujit.CujitError, match=rf"{name}: expected one of 0, 1, true, false, yes, no, on, off, "
                                                 r"got 'maybe'"):
        read()


def test_bad_paths_and_arches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUJIT_CACHE_DIR", " ")
    with pytest.raises(cujit.CujitError, match="CUJIT_CACHE_DIR: expected a folder path, got an empty string"):
        config.cache_dir()
    monkeypatch.setenv("CUJIT_DEFAULT_ARCH", "hopper")
    with pytest.raises(cujit.CujitError, match="CUJIT_DEFAULT_ARCH: expected an arch such as sm_80 or sm_90a, "
                                               "got 'hopper'"):
        config.default_arch()

"""Every CUJIT_ variable is read through config.py, listed in its table (defaults included), documented in the
README and validated, also when everything is cached; a misspelled name is reported."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

import cujit
from cujit._runtime import cache, config

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


def test_readme_table_gives_the_defaults_of_the_code() -> None:
    readme = (ROOT / "README.md").read_text()
    for variable in config.VARIABLES:
        row = re.search(rf"^\| `{variable.name}` \| `([^`]*)` \|", readme, re.MULTILINE)
        assert row is not None, f"{variable.name} has no row with a default in the README"
        assert row.group(1) == variable.default, variable.name


def test_defaults_come_from_the_table(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for variable in config.VARIABLES:
        monkeypatch.delenv(variable.name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert config.cache_dir() == tmp_path / ".cache" / "cujit"
    assert (config.disk_cache_enabled(), config.offline(), config.dump_source()) == (True, False, False)
    assert config.default_arch() == "sm_90"
    config.validate()


def test_validate_names_every_bad_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUJIT_OFFLINE", "2")
    monkeypatch.setenv("CUJIT_DEFAULT_ARCH", "hopper")
    with pytest.raises(cujit.CujitError) as info:
        config.validate()
    message = str(info.value)
    assert "CUJIT_OFFLINE: expected one of 0, 1, true, false, yes, no, on, off, got '2'" in message
    assert "CUJIT_DEFAULT_ARCH: expected an arch such as sm_80 or sm_90a, got 'hopper'" in message


def test_a_cache_hit_does_not_hide_a_bad_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kernel = tmp_path / "k.cuh"
    kernel.write_text("__global__ void k(int* out) { out[0] = 1; }\n")

    def fresh() -> cujit.JitModule:
        return cujit.load_jit("config_hit", cuda_files=[kernel], cuda_wrappers=[("k", "k")])

    fresh().compile(arch="sm_90")
    monkeypatch.setenv("CUJIT_OFFLINE", "2")
    with pytest.raises(cujit.CujitError, match="CUJIT_OFFLINE: expected one of"):
        fresh().compile(arch="sm_90")  # in memory already
    cache.clear_memory()
    with pytest.raises(cujit.CujitError, match="CUJIT_OFFLINE: expected one of"):
        fresh().compile(arch="sm_90")  # on disk
    monkeypatch.setenv("CUJIT_OFFLINE", "1")
    assert fresh().compile(arch="sm_90").cubin


@pytest.mark.parametrize(
    ("name", "closest"),
    [("CUJIT_CACHE_DIRR", "CUJIT_CACHE_DIR"), ("CUJIT_OFFLNE", "CUJIT_OFFLINE"),
     ("CUJIT_DISKCACHE", "CUJIT_DISK_CACHE"), ("CUJIT_DEFAULT_ARC", "CUJIT_DEFAULT_ARCH"), ("CUJIT_ZZZ", None)],
)
def test_misspelled_names_get_one_warning_naming_the_closest(
    name: str, closest: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(config, "_WARNED", set())
    monkeypatch.setenv(name, "1")
    assert config.unknown_variables() == {name: closest}
    with pytest.warns(UserWarning) as record:
        config.validate()
    messages = [str(w.message) for w in record if name in str(w.message)]
    assert len(messages) == 1
    assert f"{name} is set but is not a cujit variable" in messages[0]
    assert (f"did you mean {closest}?" in messages[0]) if closest else ("did you mean" not in messages[0])
    assert record[0].filename == __file__  # points at the caller, not into cujit
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config.validate()  # once per process


def test_known_names_are_not_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    assert config.unknown_variables({v.name: v.default for v in config.VARIABLES}) == {}
    assert config.unknown_variables({"NOT_CUJIT": "1", "CUJITX": "1"}) == {}

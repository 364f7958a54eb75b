"""Firmware profiles: lookup on the search path, checks, and the documents they give."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.resources.profiles import list_profiles, load_profile


def test_bundled_profiles_load() -> None:
    refs = list_profiles()
    assert len(refs) >= 6
    sdm = load_profile("eastron/sdm630")
    assert sdm.model.name == "eastron-sdm630" and sdm.protocol == "modbus-rtu" and sdm.source
    assert sdm.visitors["voltage_l1"] == {"register": "InputRegister", "type": "float32", "offset": 0}
    assert {p.name for p in sdm.model.properties} == set(sdm.visitors)


def test_unknown_profile_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError, match="unknown profile 'acme/nothing'"):
        load_profile("acme/nothing")
    with pytest.raises(ConfigError, match="expected VENDOR/MODEL"):
        load_profile("../etc/passwd")


def test_search_path_comes_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "eastron").mkdir()
    (tmp_path / "eastron" / "sdm630.yaml").write_text(
        "vendor: Eastron\nmodel: SDM630 (local)\nsource: local test\nprotocol: modbus-tcp\n"
        "properties:\n  - {name: v, type: float, visitor: {register: InputRegister, offset: 0, type: float32}}\n"
    )
    (tmp_path / "eastron" / "broken.yaml").write_text("vendor: Eastron\nmodel: x\nprotocol: modbus-tcp\n")
    monkeypatch.setenv("FIELDGATE_PROFILE_PATH", str(tmp_path))
    assert load_profile("eastron/sdm630").product == "SDM630 (local)"
    with pytest.raises(ConfigError, match=r"profile eastron/broken: .*broken.yaml: Object missing required field"):
        load_profile("eastron/broken")

"""``nextstate registry ...`` end to end through the composition root, on real Redis and two replicas."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from nextstate.cli import main as nextstate
from registry.store import Registry
from tests.registry.conftest import PublishFn


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, redis_url: str, registry: Registry, replicas: list[Any], tmp_path: Path) -> None:
    monkeypatch.setenv("NEXTSTATE_REDIS_URL", redis_url)
    monkeypatch.setenv("NEXTSTATE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NEXTSTATE_ADAPTERS_DIR", str(registry.root))
    monkeypatch.setenv("NEXTSTATE_BASE_MODEL", "tiny-chat")
    monkeypatch.setenv("NEXTSTATE_POLICY_URLS", json.dumps([url for _, url in replicas]))
    monkeypatch.setenv("NEXTSTATE_DRAIN_SECONDS", "0")
    # logging is configured once per real process; a test must not bind it to pytest's capture streams
    monkeypatch.setattr("registry.cli.configure_logging", lambda *args, **kwargs: None)


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = nextstate(["registry", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_operator_session(env: None, publish: PublishFn, registry: Registry, capsys: pytest.CaptureFixture[str],
                          tmp_path: Path, replicas: list[Any]) -> None:
    v1, v2, v3 = publish(gate=True), publish(gate=True), publish(gate=False)
    assert cli(capsys, "promote", v1, "--reason", "first")[0] == 0
    code, out, _ = cli(capsys, "canary", v2, "--fraction", "0.1")
    assert code == 0 and "canary at 10%" in out
    code, out, _ = cli(capsys, "ls")
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert "stable" in lines[v1] and "canary 10%" in lines[v2] and "fail" in lines[v3]
    code, _, err = cli(capsys, "canary", v3)
    assert code == 1 and "still running" in err
    code, out, _ = cli(capsys, "routing")
    table = json.loads(out)
    assert table["canary"] == "v2" and table["canary_fraction"] == 0.1 and v3 not in table["versions"]
    assert cli(capsys, "abort")[1].strip() == f"{v2} rejected"
    code, out, _ = cli(capsys, "rollback", "--reason", "user reports")
    assert code == 0 and f"{v1} rolled back; stable is the base model" in out
    code, _, err = cli(capsys, "promote", v3)
    assert code == 1 and "gated_fail" in err
    code, _, err = cli(capsys, "show", "v9")
    assert code == 1 and "v9" in err
    code, out, _ = cli(capsys, "show", v1)
    assert json.loads(out)["info"]["state"] == "rolled_back" and json.loads(out)["manifest"]["version"] == v1

    code, out, _ = cli(capsys, "history", "--json")
    events = [json.loads(line) for line in out.splitlines()]
    kinds = [(e["kind"], e["version"], e["actor"]) for e in events]
    assert ("rolled_back", v1, "operator") in kinds and ("rejected", v2, "operator") in kinds
    assert next(e for e in events if e["kind"] == "rolled_back")["reason"] == "user reports"
    code, out, _ = cli(capsys, "history", v2)
    assert all(f" {v2} " in line for line in out.splitlines()) and "canary_started" in out


def test_pin_and_release(env: None, publish: PublishFn, registry: Registry, capsys: pytest.CaptureFixture[str]) -> None:
    v1 = publish(gate=True)
    assert cli(capsys, "pin", v1)[0] == 0
    assert registry.alias("stable") == v1 and registry.frozen()
    assert "pinned" in cli(capsys, "ls")[1]
    assert cli(capsys, "pin")[0] == 1
    assert cli(capsys, "pin", "--release")[0] == 0 and not registry.frozen()


def test_export_then_import_is_a_new_candidate(env: None, publish: PublishFn, registry: Registry,
                                               capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    v1 = publish(gate=True, loss=0.25)
    archive = tmp_path / "v1.tar.gz"
    assert cli(capsys, "export", v1, str(archive))[0] == 0 and archive.is_file()
    code, out, _ = cli(capsys, "import", str(archive))
    assert code == 0 and "imported as v2" in out
    info = registry.get("v2")
    assert info.state == "candidate" and info.imported_from and info.imported_from.endswith(":v1")
    manifest = registry.manifest("v2")
    assert manifest.version == "v2" and manifest.metrics == {"loss": 0.25}
    assert registry.check_loadable("v2").served_name == "tiny-chat@v2"
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"not a tarball")
    assert cli(capsys, "import", str(bad))[0] == 1

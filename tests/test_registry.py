"""The shipped checkpoint registry and WAVEGLOW_REGISTRY overrides (no network)."""

from __future__ import annotations

from pathlib import Path

import pytest

from waveglow_cli.checkpoints.cache import ensure_checkpoint
from waveglow_cli.checkpoints.registry import Registry, close_matches
from waveglow_cli.errors import UnknownCheckpointError, UsageError
from waveglow_cli.settings import Settings


def settings_for(tmp_path, registry_text: str | None = None, offline: bool = True) -> Settings:
    registry = None
    if registry_text is not None:
        registry = tmp_path / "extra.toml"
        registry.write_text(registry_text, "utf-8")
    return Settings(home=tmp_path / "home", registry_file=registry, offline=offline, mirror=None,
                    debug=False)


def test_builtin_registry_has_the_published_checkpoints(tmp_path):
    reg = Registry.load(settings_for(tmp_path))
    for name in ("universal", "ljs-v3", "ljs-v2", "old", "dle-fp32", "dle-fp16", "dle-256-amp"):
        entry = reg.entries[name]
        assert entry.urls and all(u.startswith("https://") for u in entry.urls)
        assert entry.mel["n_mels"] == 80 and entry.sample_rate == 22050
    # No checksum is published for any of them, and none may be invented (a checkpoint that
    # ships with the package is ours: its sha256 is known).
    assert all(e.sha256 is None and e.size is None for e in reg.entries.values() if not e.bundled)
    # NGC (direct HTTPS) first, Google Drive as the fallback mirror.
    assert "ngc.nvidia.com" in reg.entries["universal"].urls[0]
    assert "drive.google.com" in reg.entries["universal"].urls[-1]
    amp = reg.entries["dle-256-amp"]
    assert amp.archive == "zip" and amp.filename == amp.member


def test_aliases_and_file_names_resolve_to_entries(tmp_path):
    reg = Registry.load(settings_for(tmp_path))
    assert reg.find("waveglow_256channels_universal_v5").name == "universal"
    assert reg.find("waveglow_256channels_universal_v5.pt").name == "universal"
    assert reg.find("waveglow_old").name == "old"
    assert reg.find("nope") is None
    assert close_matches("univeral", reg) == ["universal"]


def test_user_registry_adds_and_overrides(tmp_path):
    s = settings_for(tmp_path, """
[universal]
urls = ["http://127.0.0.1:9/u.pt"]
sha256 = "%s"
[mine]
urls = ["http://127.0.0.1:9/mine.pt"]
aliases = ["my-model"]
""" % ("ab" * 32))
    reg = Registry.load(s)
    assert reg.entries["universal"].urls == ("http://127.0.0.1:9/u.pt",)
    assert reg.entries["universal"].sha256 == "ab" * 32
    assert reg.find("my-model").name == "mine" and "ljs-v3" in reg.entries


@pytest.mark.parametrize("table,message", [
    ('[x]\nurls = []', "urls"),
    ('[x]\nurls = ["http://127.0.0.1:9/a"]\nsha256 = "abc"', "sha256"),
    ('[x]\nurls = ["http://127.0.0.1:9/a"]\nsize = -3', "size"),
    ('[x]\nurls = ["http://127.0.0.1:9/a"]\narchive = "tar"', "archive"),
    ('[x]\nurls = ["http://127.0.0.1:9/a"]\narchive = "zip"', "member"),
    ('[x]\nurls = ["http://127.0.0.1:9/a"]\narchive = "zip"\nmember = "/etc/passwd"', "member"),
    ('["a b"]\nurls = ["http://127.0.0.1:9/a"]', "name"),
    ('[x\nurls = 1', "invalid TOML"),
    ('[x]\nbundled = "../../etc/passwd"', "bundled"),
    ('[x]\nbundled = "/etc/passwd"', "bundled"),
    # tomllib recurses per nesting level: this was "internal error (RecursionError)".
    ("[x]\nurls = " + "[" * 50_000 + "]" * 50_000, "nested too deeply"),
])
def test_bad_registry_entries_are_usage_errors(tmp_path, table, message):
    with pytest.raises(UsageError, match=message):
        Registry.load(settings_for(tmp_path, table))


def test_paths_win_and_unknown_paths_are_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "universal").write_bytes(b"x")   # an existing file beats the registry name
    s = settings_for(tmp_path)
    assert ensure_checkpoint("universal", s) == Path("universal")
    with pytest.raises(UnknownCheckpointError, match="no such checkpoint file"):
        ensure_checkpoint(str(tmp_path / "missing.pt"), s)


def test_a_bundled_entry_resolves_to_the_package_without_cache_or_network(tmp_path):
    # Any file inside the package stands in for a shipped checkpoint here.
    s = settings_for(tmp_path, '[mine]\nbundled = "checkpoints.toml"\n', offline=True)
    path = ensure_checkpoint("mine", s)
    assert path.is_file() and path.parent.name == "waveglow_cli"
    assert not (tmp_path / "home").exists()  # nothing cached, nothing downloaded


def test_a_damaged_bundled_file_is_named_by_fetch(tmp_path):
    from conftest import run_cli

    registry = tmp_path / "extra.toml"
    registry.write_text('[mine]\nbundled = "checkpoints.toml"\nsha256 = "' + "0" * 64 + '"\n')
    env = {"WAVEGLOW_REGISTRY": str(registry), "WAVEGLOW_HOME": str(tmp_path / "home")}
    r = run_cli("fetch", "mine", env=env)
    assert r.returncode == 1
    err = r.stderr.decode()
    assert "mine" in err and "sha256 mismatch" in err and "reinstall" in err
    assert "Traceback" not in err
    r = run_cli("rm", "mine", env=env)
    assert r.returncode == 0 and "ships with the package" in r.stderr.decode()


def test_info_of_the_bundled_demo_shows_its_verified_sha256_size_and_file(tmp_path):
    """A newcomer's `info`: no cache folder, no `sha256: null`, no missing `sha256_of`."""
    import json

    from typer.testing import CliRunner

    from waveglow_cli.cli import app

    entry = Registry.load(settings_for(tmp_path)).find("demo")
    env = {"WAVEGLOW_HOME": str(tmp_path / "home"), "WAVEGLOW_OFFLINE": "1"}
    r = CliRunner().invoke(app, ["info", "demo", "--json"], env=env)
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["sha256"] == entry.sha256 and data["sha256_published"] and data["bundled"]
    assert Path(data["sha256_of"]).is_file() and data["sha256_of"] == data["path"]
    assert data["size"] == Path(data["path"]).stat().st_size == entry.bundled_path.stat().st_size
    assert data["cache_dir"] is None and not (tmp_path / "home").exists()
    text = CliRunner().invoke(app, ["info", "demo"], env=env).stdout
    assert f"sha256:       {entry.sha256} (matches the pinned sha256)" in text
    assert f"{data['size']:,} bytes" in text and "cache:" not in text

"""Hostile registries, servers and cache records (the first hardening round): each attack is built here by hand
against the fault-injecting server of test_download.py, and the outcome asserted: nothing
written outside the cache, nothing kept that was refused, no hang, one line naming the cause,
and the good path beside it still working.  Nothing but 127.0.0.1 is ever contacted."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import run_cli
from test_download import (  # noqa: F401
    BOMB_BYTES,
    FAST,
    NAME,
    cli_env,
    entry_of,
    files_under,
    http_server,
    make_settings,
    srv,
)

from waveglow_cli.checkpoints.cache import (
    cache_paths,
    cached_file,
    describe_cached,
    fetch_checkpoint,
    read_metadata,
    read_record,
)
from waveglow_cli.checkpoints.download import download
from waveglow_cli.checkpoints.registry import Registry, name_problem
from waveglow_cli.errors import (
    CheckpointNotAvailableError,
    ChecksumMismatchError,
    DownloadError,
    UsageError,
)
from waveglow_cli.settings import DownloadLimits, Settings

SMALL_CAP = 1 << 20   # 1 MiB: the tiny checkpoint (~370 KB) fits, the bombs do not


def with_limits(settings: Settings, **limits: object) -> Settings:
    return dataclasses.replace(settings, limits=dataclasses.replace(settings.limits, **limits))


def tree(root: Path, skip: Path | None = None) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` (except under ``skip``) with its size and mtime."""
    found = {}
    for path in root.rglob("*"):
        if skip is not None and (path == skip or skip in path.parents):
            continue
        if path.is_file() or path.is_symlink():
            st = path.lstat()
            found[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return found


# ---------------------------------------------------------------------------------------------
# Registry values that become paths


TRAVERSALS = [
    # (field, registry table (URL filled in), text the one line must hold)
    ("name", ("../../victim", {"urls": ["{base}/files/{name}"]}), "name"),
    ("aliases", ("evil", {"urls": ["{base}/files/get?id={name}"],
                          "aliases": ["../../../victim"]}), "aliases"),
    ("aliases-dot", ("evil", {"urls": ["{base}/files/get?id={name}"],
                              "aliases": [".hidden"]}), "aliases"),
    ("aliases-control", ("evil", {"urls": ["{base}/files/get?id={name}"],
                                  "aliases": ["a\u001b[31mred"]}), "aliases"),
    ("member", ("evil", {"urls": ["{base}/files/bundle.zip"], "archive": "zip",
                         "member": "../../../victim.pt"}), "member"),
    ("member-backslash", ("evil", {"urls": ["{base}/files/bundle.zip"], "archive": "zip",
                                   "member": "..\\..\\..\\victim.pt"}), "member"),
    ("member-metadata", ("evil", {"urls": ["{base}/files/bundle.zip"], "archive": "zip",
                                  "member": "metadata.json"}), "metadata.json"),
    ("bundled", ("evil", {"bundled": "../../../victim.pt"}), "bundled"),
    ("url-escaped", ("evil", {"urls": ["{base}/files/..%2F..%2F..%2Fvictim.pt"]}), "urls"),
    ("url-escaped-inner", ("evil", {"urls": ["{base}/files/a%2F..%2F..%2F..%2Fvictim.pt"]}),
     "urls"),
    ("url-backslash", ("evil", {"urls": ["{base}/files/a\\..\\..\\..\\victim.pt"]}), "urls"),
    ("long-name", ("n" * 300, {"urls": ["{base}/files/{name}"]}), "name"),
]


@pytest.mark.parametrize("field,table,needle", TRAVERSALS, ids=[t[0] for t in TRAVERSALS])
def test_registry_path_fields_cannot_leave_the_cache(srv, tmp_path, field, table, needle):
    """A WAVEGLOW_REGISTRY file is user-supplied text: before the fix an alias '../../x' made
    `fetch` write the download over a file outside the cache.  Every field that becomes a path
    is refused up front with one line naming the entry and the field, and nothing outside the
    cache (here: nothing at all) is written; the sentinel beside the cache is untouched."""
    name, values = table
    values = json.loads(json.dumps(values).replace("{base}", srv.base).replace("{name}", NAME))
    # Every URL here serves the real checkpoint, so only the registry check stops the attack.
    srv.state.files.setdefault("..%2F..%2F..%2Fvictim.pt", srv.data)
    srv.state.files.setdefault("a%2F..%2F..%2F..%2Fvictim.pt", srv.data)
    sentinel = tmp_path / "victim.pt"
    sentinel.write_bytes(b"precious user data")
    # Quoted keys and JSON escapes are valid TOML: the hostile name reaches the registry as is.
    registry = tmp_path / "registry.toml"
    registry.write_text(f"[{json.dumps(name)}]\n" + "".join(
        f"{key} = {json.dumps(value)}\n" for key, value in values.items()), "utf-8")
    s = Settings(home=tmp_path / "home", registry_file=registry, offline=False, mirror=None,
                 debug=False)
    before = tree(tmp_path)
    with pytest.raises(UsageError) as info:
        Registry.load(s)
    message = str(info.value)
    assert needle in message and str(s.registry_file) in message and "\n" not in message
    r = run_cli("fetch", name if "/" not in name else "evil", env=cli_env(s))
    err = r.stderr.decode()
    assert r.returncode == 2, err
    assert err.count("\n") == 1 and needle in err and "Traceback" not in err
    assert sentinel.read_bytes() == b"precious user data"
    assert tree(tmp_path) == before and not s.home.exists()
    assert srv.requests() == []


def test_the_same_registry_without_traversal_downloads_into_the_cache(srv, tmp_path):
    """The good path beside the traversal tests: the same alias-named, extensionless URL is
    cached under the alias's name inside the cache folder (so those tests fail for the right
    reason, not because the download could never work)."""
    s = make_settings(tmp_path, {"evil": {"urls": [f"{srv.base}/files/get?id={NAME}"],
                                          "aliases": ["victim"]}})
    result = fetch_checkpoint(entry_of(s, "evil"), s, policy=FAST)
    original = cache_paths(entry_of(s, "evil"), s).original
    assert original == s.checkpoint_dir / "evil" / "victim.pt"
    assert original.read_bytes() == srv.data and result.path.parent == original.parent


@pytest.mark.parametrize("line,field", [
    ("aliases = 5", "aliases"),
    ('aliases = "abc"', "aliases"),
    ("aliases = [1, 2]", "aliases"),
    ('sample_rate = "abc"', "sample_rate"),
    ("sample_rate = 0", "sample_rate"),
    ("sample_rate = true", "sample_rate"),
    ('urls = "http://127.0.0.1:9/a.pt"', "urls"),
    ("urls = [1]", "urls"),
    ('urls = ["ftp://127.0.0.1/a.pt"]', "urls"),
    ("size = true", "size"),
    ('size = "12"', "size"),
    ('sha256 = 5', "sha256"),
    ("mel = 5", "mel"),
    ('mel = {n_mels = "eighty"}', "mel.n_mels"),
    ("description = 5", "description"),
    ("license = [1]", "license"),
    ("member = 5\narchive = \"zip\"", "member"),
])
def test_registry_values_of_the_wrong_type_name_entry_and_field(tmp_path, line, field):
    """`aliases = 5` or `sample_rate = "abc"` used to end in "internal error (TypeError)" or an
    int() message naming nothing; each is now one line naming the file, entry and field."""
    urls = "" if line.startswith("urls") else 'urls = ["http://127.0.0.1:9/a.pt"]\n'
    registry = tmp_path / "extra.toml"
    registry.write_text(f"[mine]\n{urls}{line}\n", "utf-8")
    s = Settings(home=tmp_path / "home", registry_file=registry, offline=True, mirror=None,
                 debug=False)
    with pytest.raises(UsageError) as info:
        Registry.load(s)
    message = str(info.value)
    assert f"{registry}: entry [mine]: '{field}'" in message or (
        f"{registry}: entry [mine]:" in message and field in message), message


def test_registry_type_errors_exit_2_with_one_line(tmp_path):
    """The same through the real CLI: exit 2, one line, no traceback, for `list` and `synth`
    alike (every command loads the registry)."""
    registry = tmp_path / "extra.toml"
    registry.write_text('[mine]\nurls = ["http://127.0.0.1:9/a.pt"]\naliases = 5\n', "utf-8")
    env = {"WAVEGLOW_REGISTRY": str(registry), "WAVEGLOW_HOME": str(tmp_path / "home")}
    r = run_cli("list", env=env)
    err = r.stderr.decode()
    assert r.returncode == 2 and err.count("\n") == 1
    assert "[mine]" in err and "'aliases'" in err and "internal error" not in err


def test_a_registry_that_is_no_regular_file_is_refused_not_read_forever(tmp_path):
    """WAVEGLOW_REGISTRY=/dev/zero (or a FIFO nobody writes) used to be read without end."""
    fifo = tmp_path / "registry.fifo"
    os.mkfifo(fifo)
    for target in (fifo, Path("/dev/zero")):
        s = Settings(home=tmp_path / "home", registry_file=target, offline=True, mirror=None,
                     debug=False)
        with pytest.raises(UsageError, match="not a regular file"):
            Registry.load(s)


def test_name_problem_is_the_one_check():
    """The single function every path field goes through, on its own."""
    for good in ("universal", "waveglow_256channels_universal_v5.pt", "a-b.c_d", "my model.pt"):
        assert name_problem(good) is None, good
    for bad in ("", " ", ".", "..", ".hidden", "a/b", "a\\b", "C:x.pt", "a..b", "x\x00y",
                "x\ny", "\x1b[2J", "n" * 129, 5, None):
        assert name_problem(bad) is not None, bad


# ---------------------------------------------------------------------------------------------
# Bounded downloads


def test_endless_body_without_size_is_refused_at_the_cap(srv, tmp_path):
    """A server that sends a valid checkpoint followed by zeros forever, with no
    Content-Length, filled 49 GB and the result was accepted.  With a cap (1 MiB here,
    4 GiB by default) it is refused as soon as the cap is passed, the partial bytes are
    discarded (not kept to resume) and the cache is left empty."""
    s = with_limits(make_settings(tmp_path, {"tiny": {"urls": [f"{srv.base}/endless/{NAME}"]}}),
                    max_bytes=SMALL_CAP)
    t0 = time.monotonic()
    with pytest.raises(DownloadError) as info:
        fetch_checkpoint(entry_of(s, "tiny"), s, policy=FAST)
    assert time.monotonic() - t0 < 20
    message = str(info.value)
    assert "refused" in message and "WAVEGLOW_MAX_DOWNLOAD_BYTES" in message
    assert f"{srv.base}/endless/{NAME}" in message
    assert cached_file(entry_of(s, "tiny"), s) is None
    assert files_under(s.home / "checkpoints") == []
    assert srv.full_gets("/endless/") == 1            # refused, not retried or resumed


def test_endless_body_is_refused_by_the_cli_with_the_env_cap(srv, tmp_path):
    """The cap is read from WAVEGLOW_MAX_DOWNLOAD_BYTES (units allowed): exit 1, one line
    naming the URL and the variable, nothing in the cache."""
    s = make_settings(tmp_path, {"tiny": {"urls": [f"{srv.base}/endless/{NAME}"]}})
    r = run_cli("fetch", "tiny", env=cli_env(s, WAVEGLOW_MAX_DOWNLOAD_BYTES="1M"))
    err = r.stderr.decode()
    assert r.returncode == 1, err
    assert "WAVEGLOW_MAX_DOWNLOAD_BYTES" in err and f"/endless/{NAME}" in err
    assert files_under(s.home / "checkpoints") == []
    r = run_cli("fetch", "tiny", env=cli_env(s, WAVEGLOW_MAX_DOWNLOAD_BYTES="lots"))
    assert r.returncode == 2 and b"WAVEGLOW_MAX_DOWNLOAD_BYTES='lots'" in r.stderr


def test_a_content_length_beyond_the_cap_is_refused_before_the_body(srv, tmp_path):
    """A server announcing 10 GiB is refused on its headers: no body byte is written."""
    s = with_limits(make_settings(tmp_path, {"tiny": {"urls": [f"{srv.base}/huge/{NAME}",
                                                               f"{srv.base}/files/{NAME}"]}}),
                    max_bytes=SMALL_CAP)
    notes: list[str] = []

    class Notes:
        def note(self, text: str) -> None:
            notes.append(text)

    fetch_checkpoint(entry_of(s, "tiny"), s, policy=FAST, progress=Notes())
    assert any("announces 10,737,418,240 bytes" in n for n in notes), notes
    # The next URL delivered the real file; nothing of the refused one was kept.
    assert cache_paths(entry_of(s, "tiny"), s).original.read_bytes() == srv.data
    assert not [n for n in files_under(s.home) if n.endswith(".partial")]


def test_gzip_bomb_is_bounded_by_decoded_bytes(srv, tmp_path):
    """A ~64 KB gzip body that decodes to 64 MiB: requests decodes Content-Encoding on the
    fly, so the cap counts decoded bytes and refuses it at 1 MiB.  Without the cap this test
    would write 64 MiB and fail on the message."""
    got: list[int] = []
    with pytest.raises(DownloadError, match="refused") as info:
        download([f"{srv.base}/gzip/{NAME}"], tmp_path / "x.pt", policy=FAST,
                 progress=got.append, limits=DownloadLimits(max_bytes=SMALL_CAP))
    assert "WAVEGLOW_MAX_DOWNLOAD_BYTES" in str(info.value)
    assert sum(got) <= SMALL_CAP < BOMB_BYTES
    assert files_under(tmp_path) == []


def test_zip_member_bomb_is_refused_on_its_declared_size(srv, tmp_path):
    """A zip member declaring 64 MiB (deflated to ~64 KB) is refused before extraction; the
    downloaded archive is not kept either."""
    s = with_limits(make_settings(tmp_path, {"z": {"urls": [f"{srv.base}/files/bomb.zip"],
                                                   "archive": "zip", "member": NAME}}),
                    max_bytes=SMALL_CAP)
    with pytest.raises(DownloadError, match="expands to 67,108,864 bytes"):
        fetch_checkpoint(entry_of(s, "z"), s, policy=FAST)
    assert files_under(s.home / "checkpoints") == []


def test_zip_member_longer_than_its_header_is_refused(tmp_path):
    """A member whose header understates its size cannot expand past it: extraction counts
    the bytes (zipfile then finds the CRC wrong), the target is removed."""
    import io
    import zipfile

    from waveglow_cli.checkpoints.download import extract_member
    from waveglow_cli.errors import SourceFailed

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("m.pt", bytes(4096))
    data = bytearray(buffer.getvalue())
    # Patch the uncompressed size (local header offset 22, central directory +24) to 100.
    local = data.index(b"PK\x03\x04")
    data[local + 22:local + 26] = (100).to_bytes(4, "little")
    central = data.index(b"PK\x01\x02")
    data[central + 24:central + 28] = (100).to_bytes(4, "little")
    archive = tmp_path / "a.zip"
    archive.write_bytes(bytes(data))
    target = tmp_path / "m.pt"
    with pytest.raises((SourceFailed, ChecksumMismatchError)):
        extract_member(archive, "m.pt", target, max_bytes=1000)
    assert not target.exists()


def test_a_trickle_is_given_up_as_too_slow(srv, tmp_path):
    """A server sending 5 bytes/s never trips the read timeout; the minimum throughput
    (here 1000 bytes/s over 0.5 s windows) gives it up with "download too slow" naming the
    URL, long before the file could be complete (it would take ~20 hours)."""
    outcome: list[BaseException] = []

    def fetch() -> None:
        try:
            download([f"{srv.base}/trickle/{NAME}"], tmp_path / "x.pt", policy=FAST,
                     limits=DownloadLimits(min_rate=1000, rate_window=0.5))
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            outcome.append(e)

    worker = threading.Thread(target=fetch, daemon=True)
    worker.start()
    worker.join(timeout=20)       # hang guard: without the throughput check it never ends
    assert not worker.is_alive(), "the trickle download did not give up"
    assert len(outcome) == 1 and isinstance(outcome[0], DownloadError), outcome
    assert "download too slow" in str(outcome[0]) and f"/trickle/{NAME}" in str(outcome[0])


def test_the_deadline_bounds_a_whole_download(srv, tmp_path):
    """WAVEGLOW_DOWNLOAD_DEADLINE bounds a download however its bytes arrive (the rate check
    is off here, so only the deadline can stop the trickle): the CLI exits 1 in bounded time
    with one line naming the URL."""
    s = make_settings(tmp_path, {"tiny": {"urls": [f"{srv.base}/trickle/{NAME}"]}})
    env = {**os.environ, **cli_env(s, WAVEGLOW_DOWNLOAD_DEADLINE="1.5",
                                   WAVEGLOW_DOWNLOAD_MIN_RATE="0")}
    # Hang guard: without the deadline this fetch would take ~20 hours.
    r = subprocess.run([sys.executable, "-m", "waveglow_cli", "fetch", "tiny"], env=env,
                       capture_output=True, timeout=60)
    err = r.stderr.decode()
    assert r.returncode == 1 and "download too slow" in err and "WAVEGLOW_DOWNLOAD_DEADLINE" in err
    assert f"/trickle/{NAME}" in err


def test_a_partial_larger_than_the_cap_is_discarded(srv, tmp_path):
    """A dead run's .partial is kept to resume, unless it is already beyond the cap: then it
    is discarded and the file downloaded from the start (no Range request)."""
    s = with_limits(make_settings(tmp_path, {"tiny": {"urls": [f"{srv.base}/files/{NAME}"]}}),
                    max_bytes=SMALL_CAP)
    paths = cache_paths(entry_of(s, "tiny"), s)
    paths.folder.mkdir(parents=True)
    partial = paths.original.with_name(paths.original.name + ".partial")
    partial.write_bytes(srv.data + bytes(2 * SMALL_CAP))
    partial.with_name(partial.name + ".json").write_text(
        json.dumps({"url": f"{srv.base}/files/{NAME}"}))
    fetch_checkpoint(entry_of(s, "tiny"), s, policy=FAST)
    assert srv.requests("/files/") == [(f"/files/{NAME}", None)]
    assert paths.original.read_bytes() == srv.data and not partial.exists()


def test_a_damaged_partial_state_file_is_ignored(srv, tmp_path):
    """The .partial.json bookkeeping is a file we read: a JSON list there used to crash with
    AttributeError; now it only means "start again"."""
    s = make_settings(tmp_path, {"tiny": {"urls": [f"{srv.base}/files/{NAME}"]}})
    paths = cache_paths(entry_of(s, "tiny"), s)
    paths.folder.mkdir(parents=True)
    partial = paths.original.with_name(paths.original.name + ".partial")
    partial.write_bytes(srv.data[:1000])
    partial.with_name(partial.name + ".json").write_text("[1, 2, 3]")
    fetch_checkpoint(entry_of(s, "tiny"), s, policy=FAST)
    assert paths.original.read_bytes() == srv.data


# ---------------------------------------------------------------------------------------------
# The cache record


@pytest.fixture(scope="module")
def cached_home(http_server, tmp_path_factory):
    """One downloaded `tiny` cache, copied by each test that damages it."""
    root = tmp_path_factory.mktemp("cached")
    base = f"http://127.0.0.1:{http_server.server_address[1]}"
    s = make_settings(root, {"tiny": {"urls": [f"{base}/files/{NAME}"]}})
    fetch_checkpoint(entry_of(s, "tiny"), s, policy=FAST)
    return s


def copy_cache(cached_home: Settings, tmp_path: Path, offline: bool = True) -> Settings:
    shutil.copytree(cached_home.home, tmp_path / "home")
    registry = shutil.copy(cached_home.registry_file, tmp_path / "registry.toml")
    return Settings(home=tmp_path / "home", registry_file=Path(registry), offline=offline,
                    mirror=None, debug=False)


DAMAGES = {
    "not-json": b"{ this is not json",
    "a-list": b"[1, 2, 3]",
    "wrong-types": json.dumps({"sha256": 5, "size": "big", "url": ["x"],
                               "safetensors_sha256": {"a": 1}}).encode(),
    "wrong-sha256": None,    # well-formed, but the recorded sha256 is not the file's
    "wrong-size": None,      # well-formed, but the recorded size is not the file's
    "huge": b"{" + b" " * (2 << 20) + b"}",
    "empty": b"",
    "deep": b"[" * 100_000 + b"]" * 100_000,
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_verify_offline_keeps_good_bytes_and_repairs_a_damaged_record(cached_home, tmp_path,
                                                                      damage):
    """`fetch --verify --offline` used to delete a good cached checkpoint when only its
    metadata.json was damaged, leaving nothing and no way to fetch it.  The bytes are hashed
    and load as a WaveGlow: they are kept and the record is repaired from them, with a note.
    `list` (describe_cached) reads the damaged record without failing and names the damage."""
    s = copy_cache(cached_home, tmp_path)
    entry = entry_of(s, "tiny")
    paths = cache_paths(entry, s)
    original, converted = paths.original.read_bytes(), paths.converted.read_bytes()
    good = read_metadata(entry, s)
    if damage == "wrong-sha256":
        paths.metadata.write_text(json.dumps({**good, "sha256": "0" * 64}))
    elif damage == "wrong-size":
        paths.metadata.write_text(json.dumps({**good, "size": 1}))
    else:
        paths.metadata.write_bytes(DAMAGES[damage])
    row = describe_cached(entry, s)
    assert row["cached"] and row["path"] == str(paths.converted)
    if not damage.startswith("wrong-"):
        assert "metadata.json" in row["record_problem"]
    notes: list[str] = []

    class Notes:
        def note(self, text: str) -> None:
            notes.append(text)

    result = fetch_checkpoint(entry, s, verify=True, progress=Notes())
    assert result.action == "verified"
    assert paths.original.read_bytes() == original       # kept, byte for byte
    assert paths.converted.read_bytes() == converted     # rebuilt identically or untouched
    repaired, problem = read_record(entry, s)
    assert problem == "" and repaired["sha256"] == good["sha256"]
    assert repaired["size"] == good["size"] == len(original)
    assert repaired["safetensors_sha256"] == good["safetensors_sha256"]
    assert notes and "record" in notes[0], notes


def test_verify_offline_still_removes_bytes_proven_bad(cached_home, tmp_path):
    """The guard above must not keep garbage: an original that does not load (here cut in
    half) is proof; offline it is removed with one line saying so."""
    s = copy_cache(cached_home, tmp_path)
    entry = entry_of(s, "tiny")
    paths = cache_paths(entry, s)
    data = paths.original.read_bytes()
    paths.original.write_bytes(data[: len(data) // 2])
    with pytest.raises(ChecksumMismatchError, match="offline"):
        fetch_checkpoint(entry, s, verify=True)
    assert not paths.original.exists()


def test_cli_list_and_info_with_a_damaged_record(cached_home, tmp_path):
    """A metadata.json that is not JSON used to break `waveglow list` entirely: now list exits
    0 with a note naming the record, and `info` hashes the bytes instead."""
    s = copy_cache(cached_home, tmp_path, offline=False)
    entry = entry_of(s, "tiny")
    good = read_metadata(entry, s)
    cache_paths(entry, s).metadata.write_bytes(b"\x00\xff not json")
    env = {"WAVEGLOW_HOME": str(s.home), "WAVEGLOW_REGISTRY": str(s.registry_file)}
    r = run_cli("list", "--json", env=env)
    assert r.returncode == 0, r.stderr.decode()
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert rows["tiny"]["cached"] and "metadata.json" in rows["tiny"]["record_problem"]
    assert b"note: tiny: metadata.json" in r.stderr
    r = run_cli("info", "tiny", "--json", "--offline", env=env)
    assert r.returncode == 0, r.stderr.decode()
    assert json.loads(r.stdout)["sha256"] == good["sha256"]


def test_cli_verify_offline_with_a_damaged_record(cached_home, tmp_path):
    """`fetch --verify --offline` with a record that is not JSON keeps the checkpoint,
    repairs the record, says so and exits 0 (it used to delete the checkpoint, exit 1)."""
    s = copy_cache(cached_home, tmp_path, offline=False)
    entry = entry_of(s, "tiny")
    paths = cache_paths(entry, s)
    original = paths.original.read_bytes()
    good = read_metadata(entry, s)
    paths.metadata.write_bytes(b"\x00\xff not json")
    env = {"WAVEGLOW_HOME": str(s.home), "WAVEGLOW_REGISTRY": str(s.registry_file)}
    r = run_cli("fetch", "tiny", "--verify", "--offline", env=env)
    assert r.returncode == 0, r.stderr.decode()
    assert b"record" in r.stderr and r.stdout.decode().strip() == str(paths.converted)
    assert paths.original.read_bytes() == original
    assert read_record(entry, s)[1] == ""
    assert read_metadata(entry, s)["sha256"] == good["sha256"]


def test_a_killed_fetchs_temporary_record_is_removed_by_the_next_fetch(cached_home, tmp_path):
    """A fetch killed while writing metadata.json leaves a hidden temporary file in the cache
    folder; the next fetch that writes there (a download, --force, --verify; a plain fetch of
    a cached checkpoint only reads) removes it (its process is gone), and never a live
    process's temporary file."""
    from waveglow_cli.fileio import part_name

    s = copy_cache(cached_home, tmp_path)
    entry = entry_of(s, "tiny")
    folder = cache_paths(entry, s).folder
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()   # reaped: its pid names no process now
    stale = folder / part_name("metadata.json", child.pid)
    live = folder / part_name("metadata.json", os.getpid())
    stale.write_text("{")
    live.write_text("{")
    fetch_checkpoint(entry, s, verify=True)
    assert not stale.exists() and live.exists()


def test_cache_records_honour_the_umask(cached_home, tmp_path):
    """metadata.json was written through mkstemp, mode 0600 whatever the umask; it is an
    ordinary file like the checkpoint beside it (0644 under umask 022)."""
    s = copy_cache(cached_home, tmp_path)
    entry = entry_of(s, "tiny")
    paths = cache_paths(entry, s)
    paths.metadata.write_text("[]")
    old = os.umask(0o022)
    try:
        fetch_checkpoint(entry, s, verify=True)
    finally:
        os.umask(old)
    assert paths.metadata.stat().st_mode & 0o777 == 0o644


# ---------------------------------------------------------------------------------------------
# The per-checkpoint lock


HOLD_LOCK = """
import sys, time
from pathlib import Path
from waveglow_cli.checkpoints.lock import CheckpointLock
from waveglow_cli.progress import ProgressReporter
with CheckpointLock(Path(sys.argv[1]), "tiny", ProgressReporter(None)):
    print("held", flush=True)
    time.sleep(60)
"""


def hold_lock(lock: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(lock)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_dead_lock_holder_does_not_block(srv, tmp_path):
    """A fetch killed with SIGKILL (no cleanup at all) must not block the next one: the lock
    is an flock, released by the kernel.  The holder is checked to really hold it first."""
    from filelock import FileLock, Timeout

    s = make_settings(tmp_path, {"tiny": {"urls": [f"{srv.base}/files/{NAME}"]}})
    lock = cache_paths(entry_of(s, "tiny"), s).lock
    proc = hold_lock(lock)
    try:
        with pytest.raises(Timeout):
            FileLock(str(lock)).acquire(timeout=0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    t0 = time.monotonic()
    fetch_checkpoint(entry_of(s, "tiny"), s, policy=FAST)
    assert time.monotonic() - t0 < 10
    assert cached_file(entry_of(s, "tiny"), s) is not None


def test_a_hung_lock_holder_is_named_after_the_timeout(srv, tmp_path):
    """A live holder that makes no progress (a hung process) used to block every later fetch
    forever.  After WAVEGLOW_LOCK_TIMEOUT seconds without progress the waiter gives up with
    one line naming the holder's pid and the lock file; nothing is downloaded."""
    s = with_limits(make_settings(tmp_path, {"tiny": {"urls": [f"{srv.base}/files/{NAME}"]}}),
                    lock_timeout=1.0)
    lock = cache_paths(entry_of(s, "tiny"), s).lock
    proc = hold_lock(lock)
    try:
        t0 = time.monotonic()
        with pytest.raises(CheckpointNotAvailableError) as info:
            fetch_checkpoint(entry_of(s, "tiny"), s, policy=FAST)
        assert time.monotonic() - t0 < 15
    finally:
        proc.kill()
        proc.wait(timeout=10)
    message = str(info.value)
    assert f"pid {proc.pid}" in message and str(lock) in message and "no progress" in message
    assert srv.requests() == []

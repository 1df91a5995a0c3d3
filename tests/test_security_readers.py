"""No file given to the CLI can hang it, exhaust its memory or run code (the readers' trust boundary).

The CLI cases run the installed ``autoglm`` script in a fresh process, as a user
would, on files built here: exit status 1, exactly one ``autoglm: error:`` line,
no traceback, nothing written, within a timeout and (where a file could eat
memory) under an address-space limit. The rest call the readers directly.
"""
from __future__ import annotations

import os
import resource
import shutil
import socket
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from autoglm.loading.bounded_read import check_nesting, loads_json, read_user_file
from autoglm.api.config_file import ConfigError, load_config
from autoglm.loading.model_files import ModelLoadError, import_factory, load_example_inputs, load_model

AUTOGLM = shutil.which("autoglm", path=str(Path(sys.executable).parent)) or shutil.which("autoglm")
needs_cli = pytest.mark.skipif(AUTOGLM is None, reason="autoglm console script not installed")
MEMORY_LIMIT = 2 << 30  # RLIMIT_AS for refusals: the CLI with torch imported needs well under 1 GiB


def _cli(*argv: str, cwd: Path, memory_limit: int | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """The installed script in a fresh process, with no AUTOGLM_* caps from our environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOGLM_")}
    env["OMP_NUM_THREADS"] = "1"

    def limit_memory() -> None:
        if memory_limit:
            resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))

    return subprocess.run([AUTOGLM, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          preexec_fn=limit_memory)


def _assert_refused(r: subprocess.CompletedProcess, cwd: Path, before: set[str], *needles: str) -> None:
    errors = [line for line in r.stderr.splitlines() if line.startswith("autoglm: error:")]
    assert r.returncode == 1, r.stderr
    assert len(errors) == 1, r.stderr
    assert "Traceback" not in r.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    assert set(os.listdir(cwd)) == before, "the refused command wrote something"


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


# ---------------------------------------------------------------- zip bombs


def _npy_header(shape: tuple[int, ...], descr: str = "<f4") -> bytes:
    text = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode()
    text += b" " * (63 - (10 + len(text)) % 64) + b"\n"  # numpy pads the header to 64 bytes
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text


def _zip_one(name: str, comp: bytes, size: int, crc: int) -> bytes:
    """A one-entry deflated zip archive around an already compressed payload."""
    nm = name.encode()
    local = struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 8, 0, 0, crc, len(comp), size, len(nm), 0) + nm
    central = struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 8, 0, 0, crc, len(comp), size, len(nm),
                          0, 0, 0, 0, 0, 0) + nm
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 1, 1, len(central), len(local) + len(comp), 0)
    return local + comp + central + end


def _npz_bomb(unzipped: int, seg: int = 1 << 20) -> bytes:
    """A valid ``.npz`` of one float32 array of zeros that inflates to ``unzipped`` bytes.

    Built from one repeated deflate block (full flushes reset the compressor), so a 2.5 GiB
    bomb is a 2.6 MB file that takes well under a second to make.
    """
    first = _npy_header(((unzipped - 128) // 4,))
    assert len(first) == 128 and unzipped % seg == 0
    head_raw = first + bytes(seg - len(first))
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(head_raw) + c.flush(zlib.Z_FULL_FLUSH)
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = z.compress(bytes(seg)) + z.flush(zlib.Z_FULL_FLUSH)
    n = unzipped // seg - 1
    crc, zeros = zlib.crc32(head_raw), bytes(seg)
    for _ in range(n):
        crc = zlib.crc32(zeros, crc)
    final = zlib.compressobj(9, zlib.DEFLATED, -15).flush(zlib.Z_FINISH)
    return _zip_one("x.npy", head + block * n + final, unzipped, crc)


# ---------------------------------------------------------------- the CLI, end to end


@needs_cli
@pytest.mark.parametrize("which", ["config", "model"])
def test_cli_refuses_fifo_without_blocking(tmp_path, which):
    """A FIFO nobody writes to: before, opening it blocked forever."""
    if which == "config":
        (tmp_path / "m.pt2").write_bytes(b"x")
        argv = ["compile", "m.pt2", "--config", str(_fifo(tmp_path / "c.yaml")), "--out", "o"]
    else:
        argv = ["compile", str(_fifo(tmp_path / "m.pt2")), "--passes", "dce", "--out", "o"]
    before = set(os.listdir(tmp_path))
    r = _cli(*argv, cwd=tmp_path, timeout=45)
    _assert_refused(r, tmp_path, before, "named pipe (FIFO)", "not a regular file")


@needs_cli
def test_cli_refuses_dev_zero_model(tmp_path):
    """/dev/zero never ends: before, it was read until memory ran out."""
    before = set(os.listdir(tmp_path))
    r = _cli("compile", "/dev/zero", "--passes", "dce", "--out", "o", cwd=tmp_path, memory_limit=MEMORY_LIMIT)
    _assert_refused(r, tmp_path, before, "/dev/zero is a character device")


@needs_cli
def test_cli_refuses_npz_bomb_with_default_caps(tmp_path):
    """2.6 MB on disk, 2.5 GiB inflated: refused from the zip directory before numpy reads a byte."""
    (tmp_path / "bomb.npz").write_bytes(_npz_bomb(2560 << 20))
    (tmp_path / "m.pt2").write_bytes(b"x")
    assert (tmp_path / "bomb.npz").stat().st_size < 3 << 20
    before = set(os.listdir(tmp_path))
    r = _cli("compile", "m.pt2", "--passes", "dce", "--example-inputs", "bomb.npz", "--out", "o", cwd=tmp_path,
             memory_limit=MEMORY_LIMIT)
    _assert_refused(r, tmp_path, before, "would decompress to 2.5 GiB", "AUTOGLM_MAX_UNZIPPED_BYTES")


@needs_cli
def test_cli_refuses_deeply_nested_config(tmp_path):
    """Before: a RecursionError, reported as an internal error (exit 3)."""
    (tmp_path / "deep.json").write_text('{"passes": ' + "[" * 50_000 + "]" * 50_000 + "}")
    (tmp_path / "m.pt2").write_bytes(b"x")
    before = set(os.listdir(tmp_path))
    r = _cli("compile", "m.pt2", "--config", "deep.json", "--out", "o", cwd=tmp_path)
    _assert_refused(r, tmp_path, before, "nests too deeply", "AUTOGLM_MAX_NESTING")


SHADOWS = ("html", "json", "email", "xml", "shlex", "configparser", "mimetypes", "secrets", "colorsys", "cProfile",
           "pstats", "getpass", "hmac", "sysconfig")
FACTORY_SOURCE = '''import torch


def build():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()), (torch.randn(2, 4),)
'''


@needs_cli
def test_cli_factory_import_never_shadows_stdlib(tmp_path):
    """A model folder's html.py/json.py/... must not run; its mymodels.py factory still compiles."""
    canary = tmp_path / "CANARY"
    for name in SHADOWS:
        (tmp_path / f"{name}.py").write_text(f"open({str(canary)!r}, 'a').write({name!r} + '\\n')\n")
    (tmp_path / "mymodels.py").write_text(FACTORY_SOURCE)
    save_file(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()).state_dict(), str(tmp_path / "w.safetensors"))
    r = _cli("compile", "w.safetensors", "--model", "mymodels:build", "--passes", "dce", "--out", "o", "-q",
             cwd=tmp_path, timeout=120)
    assert not canary.exists(), f"shadowing modules ran: {canary.read_text().split()}"
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "o" / "graph.json").is_file()


# ---------------------------------------------------------------- readers, in process


@pytest.mark.timeout(30)
def test_fifo_inputs_refused_without_blocking(tmp_path):
    with pytest.raises(ModelLoadError, match=r"named pipe \(FIFO\)"):
        load_example_inputs(_fifo(tmp_path / "x.pt"))


@pytest.mark.parametrize("kind", ["device", "socket", "directory"])
def test_non_regular_files_refused(tmp_path, kind):
    if kind == "device":  # /dev/null, not /dev/zero: a regression must not eat this process's memory
        path, match = Path("/dev/null"), "character device"
    elif kind == "socket":
        path, match = tmp_path / "s.yaml", "socket"
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
    else:
        path, match = tmp_path / "d.yaml", "is a directory"
        path.mkdir()
    with pytest.raises(ConfigError, match=match):
        load_config(path)


def test_proc_file_reporting_size_zero_is_read_whole():
    if not Path("/proc/self/status").exists():
        pytest.skip("no /proc")
    assert b"VmRSS" in read_user_file("/proc/self/status", "file", "config")


@pytest.mark.parametrize("env, make, load", [
    ("AUTOGLM_MAX_INPUTS_BYTES", lambda p: torch.save(torch.zeros(1000), p / "x.pt") or p / "x.pt",
     load_example_inputs),
    ("AUTOGLM_MAX_MODEL_BYTES", lambda p: save_file({"w": torch.zeros(1000)}, str(p / "m.safetensors"))
     or p / "m.safetensors", load_model),
], ids=["inputs", "model"])
def test_files_over_cap_refused(tmp_path, monkeypatch, env, make, load):
    path = make(tmp_path)
    monkeypatch.setenv(env, "1K")
    with pytest.raises(ModelLoadError, match=rf"over the 1 KiB limit \(set {env} to raise it\)"):
        load(path)


def test_config_over_cap_refused_and_bad_cap_value(tmp_path, monkeypatch):
    path = tmp_path / "c.yaml"
    path.write_text("passes: [dce]\n" + "# padding\n" * 100)
    monkeypatch.setenv("AUTOGLM_MAX_CONFIG_BYTES", "100")
    with pytest.raises(ConfigError, match="over the 100 bytes limit"):
        load_config(path)
    monkeypatch.setenv("AUTOGLM_MAX_CONFIG_BYTES", "lots")
    with pytest.raises(ConfigError, match="AUTOGLM_MAX_CONFIG_BYTES='lots' is not a positive number"):
        load_config(path)
    monkeypatch.setenv("AUTOGLM_MAX_CONFIG_BYTES", "1M")
    assert load_config(path).passes == [("dce", {})]


def test_npz_bomb_refused_under_a_small_cap(tmp_path, monkeypatch):
    (tmp_path / "bomb.npz").write_bytes(_npz_bomb(64 << 20))
    assert load_example_inputs(tmp_path / "bomb.npz").kwargs["x"].shape == (((64 << 20) - 128) // 4,)  # valid
    monkeypatch.setenv("AUTOGLM_MAX_UNZIPPED_BYTES", "16M")
    with pytest.raises(ModelLoadError, match="would decompress to 64 MiB, over the 16 MiB limit"):
        load_example_inputs(tmp_path / "bomb.npz")


def test_npz_header_claiming_more_than_its_entry_refused(tmp_path):
    """numpy allocates what the .npy header says before reading: 4 TB here, from a tiny file."""
    raw = _npy_header((10**12,)) + bytes(64)
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    data = comp.compress(raw) + comp.flush()
    (tmp_path / "lie.npz").write_bytes(_zip_one("x.npy", data, len(raw), zlib.crc32(raw)))
    with pytest.raises(ModelLoadError, match=r"claims shape \[1000000000000\]"):
        load_example_inputs(tmp_path / "lie.npz")


def test_npz_with_too_many_entries_refused(tmp_path, monkeypatch):
    with open(tmp_path / "many.npz", "wb") as fh:
        np.savez(fh, *[np.zeros(1, np.float32)] * 11)
    monkeypatch.setenv("AUTOGLM_MAX_ZIP_MEMBERS", "10")
    with pytest.raises(ModelLoadError, match="declares 11 zip entries, over the 10 limit"):
        load_example_inputs(tmp_path / "many.npz")


def _nested(suffix: str, depth: int) -> str:
    inner = "[" * depth + "]" * depth
    return {".json": '{"passes": %s}', ".toml": "passes = %s\n", ".yaml": "passes: %s\n"}[suffix] % inner


@pytest.mark.parametrize("suffix", [".json", ".toml", ".yaml"])
@pytest.mark.parametrize("depth, match", [(5000, "nests too deeply to parse"), (100, "more than 64 levels deep")],
                         ids=["parser-recursion", "walk"])
def test_deeply_nested_config_refused(tmp_path, suffix, depth, match):
    path = tmp_path / f"deep{suffix}"
    path.write_text(_nested(suffix, depth))
    with pytest.raises(ConfigError, match=rf"{match}.*AUTOGLM_MAX_NESTING"):
        load_config(path)


def test_yaml_alias_bomb_refused(tmp_path, monkeypatch):
    """Nine levels of ten aliases: a 1 KB file a consumer would see as 10**9 values."""
    anchors = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    anchors += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    (tmp_path / "lol.yaml").write_text("passes:\n  - dce:\n" + "".join(f"      {a}\n" for a in anchors))
    monkeypatch.setenv("AUTOGLM_MAX_DOC_NODES", "100000")
    with pytest.raises(ConfigError, match="holds more than 100,000 values.*AUTOGLM_MAX_DOC_NODES"):
        load_config(tmp_path / "lol.yaml")


@pytest.mark.parametrize("suffix", [".json", ".toml", ".yaml"])
def test_config_number_over_digit_limit_refused(tmp_path, suffix):
    """int() refuses over 4300 digits with a ValueError the parsers do not wrap: it was an internal error."""
    path = tmp_path / f"big{suffix}"
    path.write_text({".json": '{"verify": %s}', ".toml": "verify = %s\n", ".yaml": "verify: %s\n"}[suffix]
                    % ("9" * 5000))
    with pytest.raises(ConfigError, match="Exceeds the limit"):
        load_config(path)


def test_json_helpers_for_other_readers():
    with pytest.raises(ValueError, match="nests too deeply"):
        loads_json("[" * 5000 + "]" * 5000, "graph.json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        loads_json("{", "graph.json")
    check_nesting({"a": [[1]]}, "doc", max_depth=3)
    with pytest.raises(ValueError, match="more than 2 levels"):
        check_nesting({"a": [[1]]}, "doc", max_depth=2)


# ---------------------------------------------------------------- --model module:factory and sys.path


def test_factory_module_named_like_stdlib_is_not_imported_from_cwd(tmp_path, monkeypatch):
    name = "tabnanny"  # a stdlib module the test process has no reason to have imported
    if name in sys.modules:
        pytest.skip(f"{name} already imported")
    canary = tmp_path / "CANARY"
    (tmp_path / f"{name}.py").write_text(f"open({str(canary)!r}, 'w').close()\ndef build(): pass\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    with pytest.raises(ModelLoadError, match=f"has no attribute 'build'.*the {name} in the current directory is not"):
        import_factory(f"{name}:build")
    assert not canary.exists()
    sys.modules.pop(name, None)


def test_factory_import_appends_cwd_last(tmp_path, monkeypatch):
    (tmp_path / "my_sec_models.py").write_text(FACTORY_SOURCE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    try:
        factory = import_factory("my_sec_models:build")
    finally:
        sys.modules.pop("my_sec_models", None)
    assert callable(factory)
    assert sys.path[-1] == str(tmp_path) and sys.path.count(str(tmp_path)) == 1

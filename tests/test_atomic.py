"""The one atomic-write helper: the old file or the new one, never half, never a shared temporary file."""

import os
import threading

import pytest

from agent.atomic import write_atomic


def test_a_write_replaces_the_file_whole_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "sub" / "state.json"
    write_atomic(path, "old")
    write_atomic(path, b"new", 0o600)
    assert path.read_bytes() == b"new" and os.listdir(path.parent) == ["state.json"]
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    write_atomic(path, "old")

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(path, "new")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["state.json"]


def test_concurrent_writers_of_one_path_each_write_a_whole_file(tmp_path):
    path = tmp_path / "model.onnx"
    payloads = [bytes([k]) * 200_000 for k in range(16)]
    threads = [threading.Thread(target=write_atomic, args=(path, p)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert path.read_bytes() in payloads and os.listdir(tmp_path) == ["model.onnx"]

"""The demo model's files are as readable as the directory they are written into (no torch needed)."""

from __future__ import annotations

import stat

import pytest

from memwarden.training.demo_model import share_like_directory


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(("dir_mode", "file_mode", "sub_mode"), [
    (0o755, 0o644, 0o755),  # the usual umask: the service user can read the model root
    (0o750, 0o640, 0o750),  # a group-only root stays group-only
    (0o700, 0o600, 0o700),  # a private root stays private
])
def test_files_written_0600_get_the_directorys_read_bits(tmp_path, dir_mode, file_mode, sub_mode):
    root = tmp_path / "base"
    (root / "sub").mkdir(parents=True)
    weights, nested = root / "model.safetensors", root / "sub" / "tokenizer.json"
    for f in (weights, nested):
        f.write_bytes(b"x")
        f.chmod(0o600)  # as safetensors leaves its file, whatever the umask
    (root / "sub").chmod(0o700)
    root.chmod(dir_mode)
    share_like_directory(root)
    assert (mode(weights), mode(nested), mode(root / "sub")) == (file_mode, file_mode, sub_mode)


def test_no_bit_is_taken_away(tmp_path):
    script = tmp_path / "run.sh"
    script.write_bytes(b"#!/bin/sh\n")
    script.chmod(0o700)
    tmp_path.chmod(0o755)
    share_like_directory(tmp_path)
    assert mode(script) == 0o744  # its owner's execute bit stays; nobody else's is added

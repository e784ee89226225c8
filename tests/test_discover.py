"""Tests for discover and read_file: whatever a folder holds, nothing hangs, crashes or reads unbounded."""

from __future__ import annotations

import importlib
import io
import os
import socket
import threading
from pathlib import Path

import pytest
from PIL import Image

from glmv_cli.errors import ERROR_CODES, InputError
from glmv_cli.inputs import discover, load_document, read_file, roots_of

CORPUS = Path(__file__).parents[2] / "shared" / "corpus"
PNG = b"\x89PNG\r\n\x1a\n"


def png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (2, 2)).save(buf, "PNG")
    return buf.getvalue()


def within(seconds: float, fn, *args, **kwargs):
    """Run fn in a daemon thread; fail (without hanging the suite) if it has not returned in time."""
    box: dict = {}

    def run():
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{fn.__name__} did not return within {seconds} s"
    if "error" in box:
        raise box["error"]
    return box["value"]


def refused(code: str, fn, *args, **kwargs) -> InputError:
    with pytest.raises(InputError) as info:
        within(2, fn, *args, **kwargs)
    assert info.value.code == code and code in ERROR_CODES, info.value.one_line()
    return info.value


@pytest.fixture
def unix_socket():
    # AF_UNIX paths are limited to about 107 bytes; pytest's tmp_path can be longer.
    folder = Path(os.environ.get("TMPDIR", "/tmp")) / f"glmv-sock-{os.getpid()}-{threading.get_ident()}"
    folder.mkdir()
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(folder / "s.pdf"))
    yield folder / "s.pdf"
    sock.close()
    (folder / "s.pdf").unlink()
    folder.rmdir()


@pytest.fixture
def hostile(tmp_path):
    """A folder holding every kind of entry that used to crash, hang or exhaust memory."""
    (tmp_path / "ok.png").write_bytes(png_bytes())
    (tmp_path / "noext").write_bytes(png_bytes())  # found by content
    (tmp_path / "loop.png").symlink_to("loop.png")
    (tmp_path / "gone.pdf").symlink_to(tmp_path / "missing.pdf")
    os.mkfifo(tmp_path / "f.pdf")
    os.mkfifo(tmp_path / "fifo_noext")  # no document name: must not even be opened
    (tmp_path / "z.pdf").symlink_to("/dev/zero")
    (tmp_path / "empty.pdf").write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "back").symlink_to(tmp_path)  # a folder loop
    (tmp_path / "sub" / "c.png").write_bytes(png_bytes())
    return tmp_path


def rel(paths, root):
    return [p.relative_to(root).as_posix() for p in paths]


# ---- read_file ---------------------------------------------------------------


def test_read_file_regular(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(PNG)
    assert read_file(path, max_bytes=100) == PNG
    assert read_file(path, max_bytes=len(PNG)) == PNG
    assert read_file(str(path), max_bytes=100, roots=roots_of([tmp_path])) == PNG


def test_read_file_refuses_special_files(hostile, unix_socket):
    assert "FIFO" in refused("not_a_regular_file", read_file, hostile / "f.pdf", max_bytes=100).message
    assert "socket" in refused("not_a_regular_file", read_file, unix_socket, max_bytes=100).message
    assert "character device" in refused("not_a_regular_file", read_file, hostile / "z.pdf", max_bytes=100).message
    assert "folder" in refused("not_a_regular_file", read_file, hostile / "sub", max_bytes=100).message
    assert "symlink loop" in refused("not_a_regular_file", read_file, hostile / "loop.png", max_bytes=100).message
    assert "dangling symlink" in refused("not_a_regular_file", read_file, hostile / "gone.pdf", max_bytes=100).message
    refused("file_unreadable", read_file, hostile / "missing.pdf", max_bytes=100)
    refused("file_empty", read_file, hostile / "empty.pdf", max_bytes=100)


def test_read_file_size_cap(tmp_path):
    path = tmp_path / "big.pdf"
    path.write_bytes(b"x" * 3000)
    error = refused("file_too_large", read_file, path, max_bytes=1000)
    assert error.one_line() == "file is 2.93 KB (limit 1000 bytes) (raise --max-file-size)"
    assert read_file(path, max_bytes=3000) == b"x" * 3000


def test_read_file_stops_at_the_cap_when_the_size_lies():
    # procfs files report size 0 yet have content: the bytes read, not st_size, are the truth.
    status = Path("/proc/self/status")
    if not status.is_file():
        pytest.skip("no procfs")
    assert "grew past 100 bytes" in refused("file_too_large", read_file, status, max_bytes=100).message


def test_read_file_roots(tmp_path):
    outside = tmp_path / "outside.png"
    outside.write_bytes(PNG)
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "in.png").write_bytes(PNG)
    (folder / "alias.png").symlink_to(folder / "in.png")
    (folder / "out.png").symlink_to(outside)
    (folder / "z.pdf").symlink_to("/dev/zero")
    roots = roots_of([folder])
    assert read_file(folder / "alias.png", max_bytes=100, roots=roots) == PNG
    error = refused("symlink_outside", read_file, folder / "out.png", max_bytes=100, roots=roots)
    assert error.hint and "--follow-symlinks" in error.hint
    refused("symlink_outside", read_file, folder / "z.pdf", max_bytes=100, roots=roots)
    assert read_file(folder / "out.png", max_bytes=100) == PNG  # no roots: links are followed
    # A file named explicitly is its own root, even when it is a link to elsewhere.
    assert read_file(folder / "out.png", max_bytes=100, roots=roots_of([folder / "out.png"])) == PNG
    # Broken links say what is wrong with them, not where they point.
    (folder / "gone.png").symlink_to("/nowhere/x.png")
    refused("not_a_regular_file", read_file, folder / "gone.png", max_bytes=100, roots=roots)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_read_file_permission(tmp_path):
    path = tmp_path / "secret.png"
    path.write_bytes(PNG)
    path.chmod(0)
    assert "permission denied" in refused("file_unreadable", read_file, path, max_bytes=100).message


def test_load_document_reads_through_read_file(hostile):
    refused("not_a_regular_file", load_document, hostile / "f.pdf")
    refused("file_too_large", load_document, hostile / "ok.png", max_file_size=10)
    refused("symlink_outside", load_document, hostile / "z.pdf", roots=roots_of([hostile]))
    refused("file_too_large", load_document, b"x" * 11, max_file_size=10)


# ---- discover over hostile folders ---------------------------------------------


def test_discover_hostile_folder_returns_promptly(hostile):
    found = within(2, discover, [hostile])
    expected = ["empty.pdf", "f.pdf", "gone.pdf", "loop.png", "noext", "ok.png", "sub/c.png", "z.pdf"]
    assert rel(found, hostile) == expected  # named like documents: kept, to become failed records
    roots = roots_of([hostile])
    codes = {}
    for path in found:
        try:
            within(2, read_file, path, max_bytes=1000, roots=roots)
            codes[path.name] = "ok"
        except InputError as exc:
            codes[path.name] = exc.code
    assert codes == {
        "empty.pdf": "file_empty",
        "f.pdf": "not_a_regular_file",
        "gone.pdf": "not_a_regular_file",
        "loop.png": "not_a_regular_file",
        "noext": "ok",
        "ok.png": "ok",
        "c.png": "ok",
        "z.pdf": "symlink_outside",
    }


def test_discover_socket_named_like_a_document(unix_socket):
    assert within(2, discover, [unix_socket.parent]) == [unix_socket]


def test_discover_follow_symlinks_ends_on_loops(hostile):
    outside = hostile.parent / f"{hostile.name}-linked"
    outside.mkdir()
    (outside / "x.png").write_bytes(png_bytes())
    (hostile / "linked").symlink_to(outside)
    plain = rel(within(2, discover, [hostile]), hostile)
    assert "linked/x.png" not in plain and "sub/back/ok.png" not in plain
    followed = rel(within(5, discover, [hostile], follow_symlinks=True), hostile)
    assert followed == sorted(plain + ["linked/x.png"], key=lambda r: r.split("/"))


def test_discover_named_broken_links_are_kept(hostile):
    named = [hostile / "loop.png", hostile / "gone.pdf", hostile / "f.pdf"]
    assert within(2, discover, named) == named
    with pytest.raises(InputError) as info:
        discover([hostile / "missing.pdf"])
    assert info.value.code == "file_unreadable"


def test_discover_skip_and_dedup_by_real_path(hostile):
    (hostile / "alias.png").symlink_to(hostile / "ok.png")
    found = rel(discover([hostile / "ok.png", hostile]), hostile)
    assert found.count("ok.png") == 1 and "alias.png" not in found
    assert "ok.png" not in rel(discover([hostile], skip={hostile / "alias.png"}), hostile)


def test_roots_of(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "loop").symlink_to("loop")
    real = Path(os.path.realpath(tmp_path))
    assert roots_of([tmp_path / "link", str(tmp_path / "real")]) == [real / "real", real / "real"]
    assert roots_of([tmp_path / "loop"])[0].name == "loop"  # no RuntimeError on loops


# ---- discover: ordering, filters ------------------------------------------------


@pytest.fixture
def tree(tmp_path):
    png = png_bytes()
    files = {
        "a.pdf": b"%PDF-1.4\n",
        "b.png": png,
        "Z.PDF": b"%PDF-1.4\n",
        "noext": png,  # found by content
        "sub/c.jpg": png,
        "sub/deeper/d.tiff": png,
        "sub/notes.json": b"{}",
        "readme.txt": b"BMW notes",
        ".hidden.png": png,
        ".git/x.png": png,
    }
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    return tmp_path


def test_discover_walks_sorted_skipping_hidden_and_non_documents(tree):
    expected = ["Z.PDF", "a.pdf", "b.png", "noext", "sub/c.jpg", "sub/deeper/d.tiff"]
    assert rel(discover([tree]), tree) == expected
    assert discover([str(tree)]) == discover([tree])


def test_discover_given_files_kept_and_deduplicated(tree):
    hidden = tree / ".hidden.png"
    assert discover([hidden]) == [hidden]
    found = discover([tree / "b.png", tree / "b.png", tree])
    assert rel(found, tree)[:2] == ["b.png", "Z.PDF"] and len(found) == 6


def test_discover_glob_exclude_and_skip(tree):
    assert rel(discover([tree], glob=["*.pdf"]), tree) == ["a.pdf"]
    assert rel(discover([tree], glob=["sub/*"]), tree) == ["sub/c.jpg", "sub/deeper/d.tiff"]
    assert rel(discover([tree], exclude=["sub/*", "*.png"]), tree) == ["Z.PDF", "a.pdf", "noext"]
    skipped = discover([tree], skip={(tree / "a.pdf").resolve()})
    assert "a.pdf" not in rel(skipped, tree)


def test_discover_missing_path(tmp_path):
    with pytest.raises(InputError, match=r"No such file or directory: .*nope"):
        discover([tmp_path / "nope"])


def test_discover_corpus_finds_documents_only():
    if not CORPUS.is_dir():
        pytest.skip("shared corpus not present")
    found = discover([CORPUS])
    expected = [p for p in CORPUS.rglob("*") if p.is_file() and p.suffix not in {".json", ".md"}]
    assert sorted(found) == sorted(expected)
    assert found == sorted(found, key=lambda p: p.relative_to(CORPUS).parts)


def test_a_folder_that_cannot_be_listed_is_a_warning_not_the_end(tmp_path, monkeypatch):
    discover_module = importlib.import_module("glmv_cli.inputs.discover")  # the name is shadowed by the function

    (tmp_path / "ok").mkdir()
    (tmp_path / "locked").mkdir()
    (tmp_path / "ok" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (tmp_path / "locked" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    real = discover_module.os.scandir

    def scandir(path):
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(discover_module.os, "scandir", scandir)
    warnings: list[str] = []
    found = discover([tmp_path], warnings=warnings)
    assert [p.name for p in found] == ["a.png"]
    assert len(warnings) == 1 and "locked" in warnings[0] and "Permission denied" in warnings[0]


def test_a_sniffing_bug_keeps_the_file_for_reading_to_report(tmp_path, monkeypatch):
    discover_module = importlib.import_module("glmv_cli.inputs.discover")  # the name is shadowed by the function

    (tmp_path / "scan").write_bytes(b"%PDF-1.4 whatever")

    def broken(path, size):
        raise RuntimeError("sniffer bug")

    monkeypatch.setattr(discover_module, "read_head", broken)
    assert [p.name for p in discover([tmp_path])] == ["scan"]

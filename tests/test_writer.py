"""One writer: every file lenet writes goes in beside its name and is renamed into place; links, folders at its
name and folders it cannot write are one line, and nothing outside is touched."""

import contextlib
import os
import subprocess
import sys

import pytest
from conftest import SYNTHETIC, finished_run, run_train

from lenet.run.files import WriteError, write_text


def test_the_writer_refuses_links_and_folders_and_replaces_only_its_own_name(tmp_path):
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "report.md").symlink_to(outside)
    with pytest.raises(WriteError, match=r"report.md is a symbolic link: lenet does not write through links"):
        write_text(tmp_path / "out" / "report.md", "new")
    (tmp_path / "out" / "table.csv").mkdir()
    with pytest.raises(WriteError, match=r"table.csv is a folder, where lenet writes a file"):
        write_text(tmp_path / "out" / "table.csv", "new")
    write_text(tmp_path / "out" / "new.md", "written")
    assert outside.read_text() == "keep me" and (tmp_path / "out" / "new.md").read_text() == "written"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "new.md",
        "report.md",
        "table.csv",
    ]  # no temporaries


@contextlib.contextmanager
def read_only(folder):
    """``folder`` made read-only for this process (a read-only remount of a tmpfs as root, else permissions)."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    if subprocess.run(["mount", "-o", "remount,ro", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("cannot remount a folder read-only here")
    try:
        yield
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(folder)], capture_output=True)


@pytest.fixture
def own_mount(tmp_path):
    """A tmpfs folder of its own (as root), so that it can be made read-only."""
    folder = tmp_path / "mounted"
    folder.mkdir()
    if os.geteuid() == 0:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(folder)], capture_output=True)
        if mounted.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def tool(*args, cwd):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=cwd)


def one_line(result, fragment):
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and fragment in result.stderr, result.stderr


@pytest.mark.slow
def test_evaluate_and_compare_never_write_through_a_link_nor_crash_on_a_read_only_folder(tmp_path, own_mount):
    outside = tmp_path / "precious.png"
    outside.write_bytes(b"keep me")
    run_dir = finished_run(own_mount / "run", "trainer.epochs=1", "data.train_size=128")
    (run_dir / "confusion_matrix.png").symlink_to(outside)
    one_line(tool("lenet.evaluate", str(run_dir), cwd=tmp_path), "confusion_matrix.png is a symbolic link")
    assert outside.read_bytes() == b"keep me" and not (run_dir / "evaluation.json").exists()  # refused before any work
    (run_dir / "confusion_matrix.png").unlink()

    sweep = own_mount / "sweep"
    assert (
        run_train("-m", "seed=0,1", *SYNTHETIC, "trainer.epochs=1", f"hydra.sweep.dir={sweep}", cwd=tmp_path).returncode
        == 0
    )
    (sweep / "comparison.csv").symlink_to(outside)
    one_line(tool("lenet.compare", str(sweep), cwd=tmp_path), "comparison.csv is a symbolic link")
    assert outside.read_bytes() == b"keep me" and not (sweep / "comparison.md").exists()
    (sweep / "comparison.csv").unlink()

    with read_only(own_mount):
        one_line(tool("lenet.evaluate", str(run_dir), cwd=tmp_path), "is not writable")
        one_line(tool("lenet.compare", str(sweep), cwd=tmp_path), "is not writable")
    assert tool("lenet.compare", str(sweep), "--out", str(tmp_path / "report"), cwd=tmp_path).returncode == 0

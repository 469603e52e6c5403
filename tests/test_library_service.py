"""Libraries through its public methods on a real SQLite file and a real data dir: isolation between
members, household access lists, quotas, files on disk, delete, a corrupt file failing alone, folder
re-indexing, restart, and waiting while a reply is being written. The embedder here is a small
deterministic bag-of-words hasher (the seam is the Embedder protocol); the real MiniLM is in
test_library_retrieval.py."""

from __future__ import annotations

import hashlib
import os
import re
import stat
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from library_files import write_pdf

from localchat.library import LibraryError, QuotaExceeded
from localchat.library.service import Libraries
from localchat.store.db import NotFound
from localchat.store.store import Store


class HashEmbedder:
    """Unit vectors from hashed words: texts sharing words are near, which is all these tests need."""

    def __init__(self) -> None:
        self.calls = 0

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        self.calls += 1
        out = []
        for text in texts:
            vector = [0.0] * 64
            for word in re.findall(r"\w+", text.lower()):
                vector[int(hashlib.md5(word.encode()).hexdigest(), 16) % 64] += 1.0
            norm = sum(v * v for v in vector) ** 0.5 or 1.0
            out.append([v / norm for v in vector])
        return out


@pytest.fixture()
def home(tmp_path: Path) -> Iterator[tuple[Store, Libraries, dict]]:
    store = Store(tmp_path / "data" / "history.db")
    people = {
        "admin": store.add_member("Ada", None, "admin"),
        "a": store.add_member("Ann", None),
        "b": store.add_member("Bob", None),
    }
    libraries = Libraries(store.db, tmp_path / "data", HashEmbedder(), scan_every=3600)
    libraries.start()
    yield store, libraries, people
    libraries.close()
    store.close()


def _file(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def test_a_members_library_never_reaches_another_member(home, tmp_path: Path) -> None:
    _, libs, p = home
    mine = libs.visible(p["a"])[0]
    assert mine.owner_id == p["a"].id and not mine.household
    doc = libs.add_file(p["a"], mine.id, "diary.md", _file(tmp_path, "d.md", "# Secrets\n\nThe safe code is 4711."))
    assert libs.wait_idle(30)
    hit = libs.search(p["a"], None, "safe code")[0]
    assert hit.document == "diary.md" and "4711" in hit.text and hit.citation() == "diary.md, Secrets"
    for other in (p["b"], p["admin"]):  # an admin has no way into a private library either
        assert mine.id not in [info.id for info in libs.visible(other)]
        assert libs.search(other, None, "safe code 4711") == []
        assert libs.search(other, [mine.id], "safe code 4711") == []
        for call in (
            lambda o=other: libs.documents(o, mine.id),
            lambda o=other: libs.passage(o, hit.chunk_id),
            lambda o=other: libs.progress(o, mine.id),
            lambda o=other: libs.add_file(o, mine.id, "x.txt", _file(tmp_path, "x.txt", "x")),
            lambda o=other: libs.delete_document(o, mine.id, doc.id),
        ):
            with pytest.raises(NotFound):
                call()
    with pytest.raises(NotFound):
        libs.delete_library(p["admin"], mine.id)  # delete_library is for household libraries only
    assert libs.passage(p["a"], hit.chunk_id).text == hit.text


def test_household_libraries_follow_their_access_list(home, tmp_path: Path) -> None:
    _, libs, p = home
    with pytest.raises(LibraryError):
        libs.create_household(p["a"], "Recipes")
    recipes = libs.create_household(p["admin"], "Recipes", members=[p["a"].id])
    assert recipes.household and recipes.members == (p["a"].id,)
    libs.add_file(p["admin"], recipes.id, "soup.txt", _file(tmp_path, "s.txt", "Lentil soup simmers 25 minutes."))
    assert libs.wait_idle(30)
    assert [x.document for x in libs.search(p["a"], None, "lentil soup")] == ["soup.txt"]
    assert libs.search(p["b"], None, "lentil soup") == []
    with pytest.raises(NotFound):
        libs.documents(p["b"], recipes.id)
    with pytest.raises(LibraryError, match="admin"):
        libs.add_file(p["a"], recipes.id, "mine.txt", _file(tmp_path, "m.txt", "mine"))
    with pytest.raises(NotFound):
        libs.update_household(p["a"], recipes.id, members=None)
    everyone = libs.update_household(p["admin"], recipes.id, name="Family recipes", members=None)
    assert everyone.members is None and everyone.name == "Family recipes"
    assert [x.document for x in libs.search(p["b"], None, "lentil soup")] == ["soup.txt"]
    assert [info.name for info in libs.visible(p["b"])] == ["My documents", "Family recipes"]
    libs.update_household(p["admin"], recipes.id, members=[])  # nobody but admins
    assert libs.search(p["a"], None, "lentil soup") == [] and libs.search(p["b"], None, "lentil soup") == []
    libs.delete_library(p["admin"], recipes.id)
    assert libs.search(p["admin"], None, "lentil soup") == []
    assert not (libs.root / str(recipes.id)).exists()
    assert libs.index.db.query_one("SELECT count(*) FROM chunks_fts WHERE chunks_fts MATCH 'lentil'")[0] == 0


def test_files_are_private_in_the_data_dir_and_deduplicated(home, tmp_path: Path) -> None:
    _, libs, p = home
    lib = libs.visible(p["a"])[0]
    source = _file(tmp_path, "notes.txt", "Bins go out on Tuesday.")
    first = libs.add_file(p["a"], lib.id, "../../etc/passwd\x07.txt", source)
    again = libs.add_file(p["a"], lib.id, "copy.txt", source)
    assert again.id == first.id and first.name == "passwd.txt"
    stored = list((libs.root / str(lib.id)).iterdir())
    assert len(stored) == 1 and stored[0].suffix == ".txt" and stored[0].read_bytes() == source.read_bytes()
    assert stat.S_IMODE(os.stat(stored[0]).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(stored[0].parent).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(libs.root).st_mode) == 0o700
    with pytest.raises(LibraryError, match="PDF"):
        libs.add_file(p["a"], lib.id, "tool.exe", source)


def test_quota_is_checked_before_anything_is_written(home, tmp_path: Path) -> None:
    _, libs, p = home
    lib = libs.visible(p["a"])[0]
    with pytest.raises(LibraryError):
        libs.set_quota(p["a"], p["a"].id, 10)
    libs.set_quota(p["admin"], p["a"].id, 100)
    small = libs.add_file(p["a"], lib.id, "small.txt", _file(tmp_path, "s.txt", "x" * 60))
    assert libs.quota(p["a"]) == (60, 100)
    with pytest.raises(QuotaExceeded, match="100 bytes"):
        libs.add_file(p["a"], lib.id, "big.txt", _file(tmp_path, "b.txt", "y" * 50))
    assert [d.id for d in libs.documents(p["a"], lib.id)] == [small.id]
    assert len(list((libs.root / str(lib.id)).iterdir())) == 1
    assert libs.quota(p["b"]) == (0, None)  # another member's quota is theirs
    libs.set_quota(p["admin"], p["a"].id, None)
    libs.add_file(p["a"], lib.id, "big.txt", _file(tmp_path, "b.txt", "y" * 50))
    assert libs.quota(p["a"]) == (110, None)


def test_deleting_a_file_removes_its_chunks_vectors_and_file(home, tmp_path: Path) -> None:
    _, libs, p = home
    lib = libs.visible(p["a"])[0]
    keep = libs.add_file(p["a"], lib.id, "keep.txt", _file(tmp_path, "k.txt", "The stopcock is under the sink."))
    gone = libs.add_file(p["a"], lib.id, "gone.txt", _file(tmp_path, "g.txt", "The fuse box is under the stairs."))
    assert libs.wait_idle(30)
    assert libs.search(p["a"], None, "fuse box stairs")[0].document == "gone.txt"
    libs.delete_document(p["a"], lib.id, gone.id)
    db = libs.index.db
    assert db.query_one("SELECT count(*) FROM chunks WHERE document_id = ?", (gone.id,))[0] == 0
    assert db.query_one("SELECT count(*) FROM chunks_fts WHERE chunks_fts MATCH 'fuse'")[0] == 0
    assert [x.document for x in libs.search(p["a"], None, "fuse box stairs")] == ["keep.txt"]  # vectors too
    assert [d.id for d in libs.documents(p["a"], lib.id)] == [keep.id]
    assert len(list((libs.root / str(lib.id)).iterdir())) == 1
    with pytest.raises(NotFound):
        libs.delete_document(p["a"], lib.id, gone.id)


def test_a_corrupt_file_fails_alone_with_a_reason(home, tmp_path: Path) -> None:
    _, libs, p = home
    lib = libs.visible(p["a"])[0]
    bad = tmp_path / "bad.pdf"
    bad.write_bytes(b"%PDF-1.4 this is not really a PDF" + bytes(200))
    libs.close()  # both files are queued before indexing starts: one round of two (a quick failure
    # could otherwise end its round before the second file is added)
    libs.add_file(p["a"], lib.id, "bad.pdf", bad)
    libs.add_file(p["a"], lib.id, "manual.pdf", write_pdf(tmp_path / "m.pdf", [["Preheat to 200 degrees."]]))
    libs.start()
    assert libs.wait_idle(30)
    docs = {d.name: d for d in libs.documents(p["a"], lib.id)}
    assert docs["bad.pdf"].status == "failed" and docs["bad.pdf"].error and "\n" not in docs["bad.pdf"].error
    assert docs["manual.pdf"].status == "ready" and docs["manual.pdf"].chunks == 1
    progress = libs.progress(p["a"], lib.id)
    assert progress.finished and progress.done == progress.total == 2
    assert len(progress.errors) == 1 and progress.errors[0].startswith("bad.pdf: ")
    assert libs.search(p["a"], None, "preheat")[0].citation() == "manual.pdf, page 1"


def test_a_folder_is_indexed_in_place_and_follows_changes(home, tmp_path: Path) -> None:
    _, libs, p = home
    folder = tmp_path / "manuals"
    (folder / "kitchen").mkdir(parents=True)
    oven = _file(folder / "kitchen", "oven.md", "# Oven\n\nBake bread at 200 degrees.")
    _file(folder, "boiler.txt", "Top the boiler up to 1.5 bar.")
    _file(folder, "setup.exe", "MZ binary")
    _file(folder, ".hidden.txt", "hidden words")
    with pytest.raises(LibraryError, match="not a folder"):
        libs.create_household(p["admin"], "Manuals", folder=str(tmp_path / "nope"))
    lib = libs.create_household(p["admin"], "Manuals", folder=str(folder))
    assert libs.wait_idle(30)
    assert sorted(d.name for d in libs.documents(p["a"], lib.id)) == ["boiler.txt", "kitchen/oven.md"]
    assert not (libs.root / str(lib.id)).exists()  # read in place, not copied
    assert libs.search(p["a"], [lib.id], "bread")[0].citation() == "kitchen/oven.md, Oven"
    with pytest.raises(LibraryError, match="folder"):
        libs.delete_document(p["admin"], lib.id, libs.documents(p["admin"], lib.id)[0].id)

    oven.write_text("# Oven\n\nBake scones at 220 degrees, much hotter than before.")
    os.utime(oven, (1, 1))  # a different mtime, whatever the clock's resolution
    (folder / "boiler.txt").unlink()
    _file(folder, "router.html", "<h1>Router</h1><p>The password is on the sticker.</p>")
    libs.rescan(lib.id)
    assert libs.wait_idle(30)
    assert sorted(d.name for d in libs.documents(p["a"], lib.id)) == ["kitchen/oven.md", "router.html"]
    assert "scones" in libs.search(p["a"], [lib.id], "scones")[0].text
    assert all("bread" not in x.text for x in libs.search(p["a"], [lib.id], "bread oven"))  # the old text left
    assert all(x.document != "boiler.txt" for x in libs.search(p["a"], [lib.id], "boiler bar"))
    assert libs.search(p["a"], [lib.id], "sticker password")[0].citation() == "router.html, Router"


def test_a_restart_requeues_what_a_crash_left_indexing(tmp_path: Path) -> None:
    store = Store(tmp_path / "history.db")
    ann = store.add_member("Ann", None)
    first = Libraries(store.db, tmp_path, HashEmbedder(), scan_every=3600)  # never started: nothing indexes
    lib = first.visible(ann)[0]
    doc = first.add_file(ann, lib.id, "n.txt", _file(tmp_path, "n.txt", "The cat eats 60 grams a day."))
    store.db.execute("UPDATE documents SET status = 'indexing' WHERE id = ?", (doc.id,))  # the crash
    second = Libraries(store.db, tmp_path, HashEmbedder(), scan_every=3600)
    second.start()
    try:
        assert second.wait_idle(30)
        assert second.documents(ann, lib.id)[0].status == "ready"
        assert second.search(ann, None, "cat grams")[0].document == "n.txt"
    finally:
        second.close()
        store.close()


def test_indexing_waits_while_a_reply_is_being_written(tmp_path: Path) -> None:
    store = Store(tmp_path / "history.db")
    ann = store.add_member("Ann", None)
    replying = threading.Event()
    replying.set()
    embedder = HashEmbedder()
    libs = Libraries(store.db, tmp_path, embedder, busy=replying.is_set, scan_every=3600)
    libs.start()
    try:
        lib = libs.visible(ann)[0]
        libs.add_file(ann, lib.id, "n.txt", _file(tmp_path, "n.txt", "Swimming is on Mondays."))
        assert not libs.wait_idle(0.5)  # held back while busy
        assert embedder.calls == 0
        held = libs.progress(ann, lib.id)
        assert held.current == "n.txt" and (held.done, held.total, held.fraction) == (0, 1, 0.0)
        replying.clear()
        assert libs.wait_idle(30)
        assert embedder.calls >= 1 and libs.documents(ann, lib.id)[0].status == "ready"
        assert libs.progress(ann, lib.id).finished and libs.progress(ann, lib.id).fraction == 1.0
    finally:
        libs.close()
        store.close()


def test_removing_a_member_removes_their_library_passages_and_files(home, tmp_path: Path) -> None:
    store, libs, p = home
    lib = libs.visible(p["b"])[0]
    libs.add_file(p["b"], lib.id, "b.txt", _file(tmp_path, "b.txt", "Bob keeps the spare key in the blue folder."))
    assert libs.wait_idle(30) and (libs.root / str(lib.id)).is_dir()
    store.remove_member(p["b"].id)
    assert store.db.query_one("SELECT count(*) FROM chunks")[0] == 0
    assert store.db.query_one("SELECT count(*) FROM chunks_fts WHERE chunks_fts MATCH 'spare'")[0] == 0
    libs.close()
    libs.start()  # the next start clears the files
    assert not (libs.root / str(lib.id)).exists()


def test_progress_moves_within_a_long_file(tmp_path: Path) -> None:
    store = Store(tmp_path / "history.db")
    ann = store.add_member("Ann", None)
    seen: list[float] = []

    class Watching(HashEmbedder):
        def embed(self, texts):
            seen.append(libs.progress(ann, lib.id).fraction)
            return super().embed(texts)

    libs = Libraries(store.db, tmp_path, Watching(), scan_every=3600)
    lib = libs.visible(ann)[0]
    pages = [
        [f"Page {p} line {i} about the kettle and the boiler and the garden." for i in range(40)] for p in range(8)
    ]
    libs.add_file(ann, lib.id, "long.pdf", write_pdf(tmp_path / "long.pdf", pages))
    libs.start()
    try:
        assert libs.wait_idle(30)
        assert len(seen) >= 2 and seen[0] == 0.0 and 0.0 < seen[-1] < 1.0 and seen == sorted(seen)
        assert libs.progress(ann, lib.id).fraction == 1.0
    finally:
        libs.close()
        store.close()


def test_a_removed_members_ids_and_cached_vectors_never_reach_another_member(home, tmp_path: Path) -> None:
    store, libs, p = home
    ann_lib = libs.visible(p["a"])[0]
    bob_lib = libs.visible(p["b"])[0]  # the highest library id: SQLite would hand it out again
    libs.add_file(p["b"], bob_lib.id, "b.txt", _file(tmp_path, "b.txt", "Bob hides the blue key in the shed."))
    assert libs.wait_idle(30)
    assert libs.search(p["b"], None, "blue key shed")  # Bob's vectors are cached now
    store.remove_member(p["b"].id)
    cy = store.add_member("Cy", None)
    cy_lib = libs.visible(cy)[0]
    assert cy_lib.id != bob_lib.id
    libs.add_file(p["a"], ann_lib.id, "a.txt", _file(tmp_path, "a.txt", "Ann's blue key opens the safe in the shed."))
    assert libs.wait_idle(30)
    assert libs.search(cy, None, "blue key shed") == []
    assert bob_lib.id not in libs.index._matrices  # the removed library's cache is gone
    ann_chunk = libs.search(p["a"], None, "blue key")[0].chunk_id
    assert libs.index.passages([(ann_chunk, 1.0)], [cy_lib.id]) == []  # a chunk id alone opens nothing


def test_a_folder_library_never_reads_the_data_dir_or_follows_links(home, tmp_path: Path) -> None:
    _, libs, p = home
    secret = libs.visible(p["a"])[0]
    libs.add_file(p["a"], secret.id, "s.txt", _file(tmp_path, "s.txt", "Ann's password is swordfish."))
    assert libs.wait_idle(30)
    for folder in (libs.root / str(secret.id), libs.root, libs.root.parent, tmp_path):
        with pytest.raises(LibraryError, match="localchat's own data"):
            libs.create_household(p["admin"], "Peek", folder=str(folder))
    shared = libs.create_household(p["admin"], "Shared", folder="")
    with pytest.raises(LibraryError, match="localchat's own data"):
        libs.update_household(p["admin"], shared.id, folder=str(libs.root / str(secret.id)))
    outside = tmp_path / "outside"
    outside.mkdir()
    _file(outside, "diary.txt", "The diary says swordfish too.")
    folder = tmp_path / "manuals"
    folder.mkdir()
    _file(folder, "oven.txt", "Bake bread at 200 degrees.")
    (folder / "link.txt").symlink_to(libs.root / str(secret.id) / os.listdir(libs.root / str(secret.id))[0])
    (folder / "linked").symlink_to(outside, target_is_directory=True)
    lib = libs.create_household(p["admin"], "Manuals", folder=str(folder))
    assert libs.wait_idle(30)
    assert [d.name for d in libs.documents(p["admin"], lib.id)] == ["oven.txt"]
    assert all("swordfish" not in x.text for x in libs.search(p["admin"], [lib.id], "swordfish password diary"))


def test_the_indexer_outlives_its_own_errors_and_reports_unreadable_folders(tmp_path: Path, monkeypatch) -> None:
    store = Store(tmp_path / "history.db")
    admin = store.add_member("Ada", None, "admin")
    folder = tmp_path / "manuals"
    (folder / "locked").mkdir(parents=True)
    _file(folder, "oven.txt", "Bake bread at 200 degrees.")
    libs = Libraries(store.db, tmp_path / "data", HashEmbedder(), scan_every=3600)
    real_scan_all, failures = libs.indexer._scan_all, []

    def locked_once() -> None:  # e.g. "database is locked" while the scan reads the libraries
        if not failures:
            failures.append(1)
            raise PermissionError("database is locked")
        real_scan_all()

    monkeypatch.setattr(libs.indexer, "_scan_all", locked_once)
    real_scandir = os.scandir

    def scandir(path="."):
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    libs.start()
    try:
        lib = libs.create_household(admin, "Manuals", folder=str(folder))
        assert libs.wait_idle(30) and failures  # the loop failed once, and went on
        assert [d.status for d in libs.documents(admin, lib.id)] == ["ready"]
        assert any(e.startswith("locked: could not be read") for e in libs.progress(admin, lib.id).errors)
    finally:
        libs.close()
        store.close()


def test_files_of_a_removed_member_and_half_copies_go_without_a_restart(tmp_path: Path) -> None:
    store = Store(tmp_path / "history.db")
    bob = store.add_member("Bob", None)
    libs = Libraries(store.db, tmp_path / "data", HashEmbedder(), scan_every=0.05)
    lib = libs.visible(bob)[0]
    libs.add_file(bob, lib.id, "b.txt", _file(tmp_path, "b.txt", "Bob keeps the spare key in the blue folder."))
    half = libs.root / str(lib.id) / ".abc.txt.1.2.part"
    half.write_bytes(b"half a file")
    upload = tmp_path / "data" / "tmp" / "uploads" / "0123.part"
    upload.parent.mkdir(parents=True)
    upload.write_bytes(b"half an upload")
    libs.start()  # after a crash
    try:
        assert not half.exists() and not upload.exists()
        assert libs.wait_idle(30)
        store.remove_member(bob.id)
        deadline = time.monotonic() + 30
        while (libs.root / str(lib.id)).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not (libs.root / str(lib.id)).exists()  # the indexer's next pass swept it
    finally:
        libs.close()
        store.close()


def test_deleting_a_file_waits_for_an_add_in_progress(home, tmp_path: Path) -> None:
    _, libs, p = home
    lib = libs.visible(p["a"])[0]
    doc = libs.add_file(p["a"], lib.id, "n.txt", _file(tmp_path, "n.txt", "Swimming is on Mondays."))
    with libs._adding:  # an add of the same content is deduplicating onto this very row
        deleting = threading.Thread(target=libs.delete_document, args=(p["a"], lib.id, doc.id))
        deleting.start()
        deleting.join(0.3)
        assert deleting.is_alive()
        assert [d.id for d in libs.documents(p["a"], lib.id)] == [doc.id]
    deleting.join(30)
    assert libs.documents(p["a"], lib.id) == []


def test_an_empty_folder_that_had_files_is_an_unplugged_drive(home, tmp_path: Path) -> None:
    _, libs, p = home
    drive = tmp_path / "usb"
    drive.mkdir()
    _file(drive, "oven.txt", "Bake bread at 200 degrees.")
    _file(drive, "boiler.txt", "Top the boiler up to 1.5 bar.")
    lib = libs.create_household(p["admin"], "USB", folder=str(drive))
    assert libs.wait_idle(30) and len(libs.documents(p["a"], lib.id)) == 2
    for child in drive.iterdir():
        child.unlink()  # unplugged: the mount point is an empty folder
    libs.rescan(lib.id)
    assert len(libs.documents(p["a"], lib.id)) == 2
    assert any("is empty" in e for e in libs.progress(p["admin"], lib.id).errors)
    _file(drive, "oven.txt", "Bake bread at 200 degrees.")  # back, with one file fewer
    libs.rescan(lib.id)
    assert [d.name for d in libs.documents(p["a"], lib.id)] == ["oven.txt"]

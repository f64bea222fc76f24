"""The file index of an image folder (pretrain/data/file_index.py): built once, reused, listed
again when a class folder changes, never half-used, shared by the ranks."""

import json
import os
import shutil
import time

import pytest
from PIL import Image

from pretrain.data import ImageFiles
from pretrain.data import datasets
from pretrain.data.file_index import index_path


def _age(root, seconds=60):
    """Set every directory's time `seconds` into the past: an index trusts no folder changed
    within a couple of seconds of its writing."""
    past = time.time() - seconds
    for folder, _, _ in os.walk(root):
        os.utime(folder, (past, past))


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "images"
    for name, count in (("cat", 3), ("dog", 2)):
        (root / name / "sub").mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(root / name / f"{i}.jpg")
    Image.new("RGB", (8, 8)).save(root / "dog" / "sub" / "deep.png")
    (root / "cat" / "notes.txt").write_text("not an image")
    _age(root)
    return root


@pytest.fixture
def count_walks(monkeypatch):
    walks = []
    real_walk = os.walk
    monkeypatch.setattr(datasets.os, "walk", lambda *a, **k: walks.append(a[0]) or real_walk(*a, **k))
    return walks


def test_the_index_is_built_once_and_reused(folder, tmp_path, count_walks):
    index_dir = tmp_path / "index"
    listed = ImageFiles(str(folder), index_dir=str(index_dir))
    assert count_walks and os.path.isfile(index_path(str(index_dir), str(folder)))
    count_walks.clear()
    reused = ImageFiles(str(folder), index_dir=str(index_dir))
    assert count_walks == []  # not listed again
    assert reused.samples == listed.samples == ImageFiles(str(folder)).samples
    assert reused.classes == ["cat", "dog"] and len(reused.samples) == 6
    assert reused.ignored_files == [str(folder / "cat" / "notes.txt")]


@pytest.mark.parametrize("change", ["add", "remove", "rename", "deep", "new_class"])
def test_a_changed_folder_is_listed_again(folder, tmp_path, count_walks, change):
    index_dir = str(tmp_path / "index")
    ImageFiles(str(folder), index_dir=index_dir)
    if change == "add":
        shutil.copy(folder / "cat" / "0.jpg", folder / "cat" / "new.jpg")
    elif change == "remove":
        os.remove(folder / "dog" / "1.jpg")
    elif change == "rename":
        os.rename(folder / "dog" / "1.jpg", folder / "dog" / "9.jpg")
    elif change == "deep":
        shutil.copy(folder / "cat" / "0.jpg", folder / "dog" / "sub" / "new.jpg")
    else:
        (folder / "eel").mkdir()
        shutil.copy(folder / "cat" / "0.jpg", folder / "eel" / "0.jpg")
    count_walks.clear()
    again = ImageFiles(str(folder), index_dir=index_dir)
    assert count_walks  # listed again
    assert again.samples == ImageFiles(str(folder)).samples


def test_a_folder_changed_just_now_is_not_indexed_until_it_settles(folder, tmp_path):
    index_dir = str(tmp_path / "index")
    shutil.copy(folder / "cat" / "0.jpg", folder / "cat" / "new.jpg")  # the folder's time: now
    ImageFiles(str(folder), index_dir=index_dir)
    assert not os.path.exists(index_path(index_dir, str(folder)))
    _age(folder)
    ImageFiles(str(folder), index_dir=index_dir)
    assert os.path.exists(index_path(index_dir, str(folder)))


@pytest.mark.parametrize("damage", ["truncated", "not json", "other version", "wrong shape"])
def test_a_damaged_index_is_never_used(folder, tmp_path, count_walks, caplog, damage):
    index_dir = str(tmp_path / "index")
    ImageFiles(str(folder), index_dir=index_dir)
    path = index_path(index_dir, str(folder))
    text = open(path).read()
    record = json.loads(text)
    broken = {"truncated": text[:len(text) // 2], "not json": "<html>",
              "other version": json.dumps({**record, "version": 0}),
              "wrong shape": json.dumps({**record, "groups": 5})}[damage]
    with open(path, "w") as f:
        f.write(broken)
    count_walks.clear()
    again = ImageFiles(str(folder), index_dir=index_dir)
    assert count_walks and again.samples == ImageFiles(str(folder)).samples
    if damage != "other version":
        assert "cannot be read" in caplog.text and path in caplog.text
    assert json.loads(open(path).read()) == record  # written again, whole


def test_ranks_share_one_listing(folder, tmp_path):
    from ddp_helpers import image_folder_on_ranks

    index_dir = str(tmp_path / "index")
    ranks = image_folder_on_ranks(str(folder), index_dir, 2, str(tmp_path))
    assert ranks[0]["walked"] > 0 and ranks[1]["walked"] == 0  # rank 1 read rank 0's index
    assert ranks[0]["samples"] == ranks[1]["samples"]
    assert [tuple(s) for s in ranks[0]["samples"]] == ImageFiles(str(folder)).samples


@pytest.mark.parametrize("edit", ["names_a_string", "outside_the_root", "no_such_class",
                                  "directories_a_list"])
def test_a_hand_edited_index_is_listed_again_never_used(folder, tmp_path, count_walks, edit,
                                                        caplog):
    """The index is data to check, not to trust: an entry of the wrong type, a path that leaves
    the root, a label with no class, is named in a warning and the folder listed again."""
    index_dir = str(tmp_path / "index")
    listed = ImageFiles(str(folder), index_dir=index_dir)
    path = index_path(index_dir, str(folder))
    record = json.loads(open(path).read())
    if edit == "names_a_string":
        record["groups"][0][2] = "0.jpg"
    elif edit == "outside_the_root":
        record["groups"][0][0] = "../../etc"
    elif edit == "no_such_class":
        record["groups"][0][1] = 7
    else:
        record["directories"] = list(record["directories"])
    with open(path, "w") as f:
        json.dump(record, f)
    _age(folder)
    count_walks.clear()
    with caplog.at_level("WARNING"):
        again = ImageFiles(str(folder), index_dir=index_dir)
    assert count_walks and again.samples == listed.samples
    assert f"the file index {path} cannot be read" in caplog.text

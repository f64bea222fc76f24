"""Images read from tars by index (pretrain/data/archives.py, shards.py): ImageNet's training
archive (a tar of per-class tars, or of class folders) and WebDataset shards give the samples of
the same folder in its order, train to the same weights, keep their index, and bad data is one
line."""

import io
import json
import os
import shutil
import tarfile

import pytest
import torch

from conftest import REPO
from helpers import load_checkpoint, one_line_error, run


@pytest.fixture(scope="module")
def folder(shared_data):
    return shared_data / "imagenet-sample" / "train"  # 100 full-size JPEGs, 100 classes


def _add(tar, name, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _files(folder):
    """(class, file name, bytes) of the folder, sorted as a listing is."""
    return [(c, f, (folder / c / f).read_bytes()) for c in sorted(os.listdir(folder))
            for f in sorted(os.listdir(folder / c))]


def imagenet_archive(folder, path, extra=()):
    """ILSVRC2012_img_train.tar's layout: one inner tar per class, classes in reverse order (the
    index sorts them); `extra`: (class, name, bytes) members added to their class's tar."""
    files = _files(folder) + list(extra)
    with tarfile.open(path, "w") as outer:
        for label in sorted({c for c, _, _ in files}, reverse=True):
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as tar:
                for c, name, data in files:
                    if c == label:
                        _add(tar, name, data)
            _add(outer, f"{label}.tar", inner.getvalue())
    return path


def class_folder_archive(folder, path):
    with tarfile.open(path, "w") as tar:
        tar.add(folder, arcname=".")  # ./<class>/<image>, directories included
    return path


def plain_shards(folder, out, per_shard=30):
    """WebDataset shards written with tarfile alone: KEY.jpeg + KEY.cls in the folder's order."""
    out.mkdir()
    files, classes = _files(folder), sorted(os.listdir(folder))
    for shard in range(0, len(files), per_shard):
        with tarfile.open(out / f"train-{shard // per_shard:06d}.tar", "w") as tar:
            for c, name, data in files[shard:shard + per_shard]:
                key = f"{c}_{name.split('.')[0]}"
                _add(tar, f"{key}.jpeg", data)
                _add(tar, f"{key}.cls", str(classes.index(c)).encode())
    count = -(-len(files) // per_shard)
    return str(out / f"train-{{000000..{count - 1:06d}}}.tar")


def test_archives_and_shards_hold_the_folders_samples_in_its_order(folder, tmp_path):
    from pretrain.data.layouts import open_images
    from pretrain.data.shards import write_shards

    reference = open_images(str(folder))
    roots = {"archive": str(imagenet_archive(folder, tmp_path / "train.tar")),
             "class folders": str(class_folder_archive(folder, tmp_path / "folders.tar")),
             "plain shards": plain_shards(folder, tmp_path / "plain"),
             "make_shards": write_shards(str(folder), str(tmp_path / "made"), 40,
                                         progress=False)}
    assert roots["make_shards"].endswith("shard-{000000..000002}.tar")
    for layout, root in roots.items():
        images = open_images(root)
        assert len(images) == len(reference) == 100, layout
        assert images.same_classes(reference) and len(images.classes) == 100, layout
        for k in range(len(reference)):
            assert images.label(k) == reference.label(k), (layout, k)
            assert images.read_bytes(k) == reference.read_bytes(k), (layout, k)
        assert images.name(7).startswith(root.split("{")[0].removesuffix(".tar")), layout
    assert open_images(roots["archive"]).classes == reference.classes


def test_webdataset_reads_the_shards_make_shards_writes_and_a_cut_off_run_resumes(
        folder, tmp_path, monkeypatch):
    import webdataset

    from pretrain.data import datasets, layouts, shards

    reference = layouts.open_images(str(folder))
    pattern = shards.write_shards(str(folder), str(tmp_path / "whole"), 40, progress=False)
    samples = list(webdataset.WebDataset(pattern, shardshuffle=False))
    assert [s["jpeg"] for s in samples] == [reference.read_bytes(k) for k in range(100)]
    assert [int(s["cls"]) for s in samples] == [reference.label(k) for k in range(100)]

    # cut off (Ctrl-C) while writing the second shard: the first is whole, the second not there
    real_read = datasets.ImageFiles.read_bytes

    def cut_off_at_55(self, k):
        if k == 55:
            raise KeyboardInterrupt
        return real_read(self, k)

    monkeypatch.setattr(datasets.ImageFiles, "read_bytes", cut_off_at_55)
    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        shards.write_shards(str(folder), str(cut), 40, progress=False)
    assert sorted(os.listdir(cut)) == ["shard-000000.tar", "shard.json"]  # no partial shard
    monkeypatch.setattr(datasets.ImageFiles, "read_bytes", real_read)
    assert shards.write_shards(str(folder), str(cut), 40, progress=False) == pattern.replace(
        "whole", "cut")
    for name in ("shard-000000.tar", "shard-000001.tar", "shard-000002.tar"):
        assert (cut / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()
    with pytest.raises(Exception, match="of another source or shard size"):
        shards.write_shards(str(folder), str(cut), 50, progress=False)


@pytest.fixture
def built(monkeypatch) -> list:
    """The roots whose tar index was built (read from the tars' headers) in this test."""
    from pretrain.data import archives

    roots = []
    real_build = archives.TarIndex.build.__func__
    monkeypatch.setattr(archives.TarIndex, "build", classmethod(
        lambda cls, r: roots.append(r) or real_build(cls, r)))
    return roots


def test_the_tar_index_is_kept_reused_and_rebuilt_when_the_tar_changes(folder, tmp_path, built,
                                                                        caplog):
    from pretrain.data import archives

    root = str(imagenet_archive(folder, tmp_path / "train.tar"))
    index_dir = str(tmp_path / "index")
    first = archives.load_tar_index(root, index_dir)
    second = archives.load_tar_index(root, index_dir)
    assert len(built) == 1 and len(second) == 100
    assert [second.name(k) for k in range(100)] == [first.name(k) for k in range(100)]
    assert (second.offsets == first.offsets).all() and second.classes == first.classes

    os.utime(root, ns=(0, os.stat(root).st_mtime_ns + 10**9))  # another copy of the archive
    archives.load_tar_index(root, index_dir)
    assert len(built) == 2
    path = archives.tar_index_path(index_dir, root)
    with open(path, "r+b") as f:  # damaged
        f.truncate(os.path.getsize(path) // 2)
    assert len(archives.load_tar_index(root, index_dir)) == 100 and len(built) == 3
    assert "cannot be read" in caplog.text


def test_bad_members_follow_the_bad_image_policy_and_are_named(folder, tmp_path):
    from pretrain.data.layouts import open_images
    from ssl2det.errors import DatasetError

    broken = (folder / "n01440764" / "n01440764_tench.JPEG").read_bytes()[:2000]
    root = str(imagenet_archive(folder, tmp_path / "train.tar", extra=[
        ("n01440764", "n01440764_zz_cut.JPEG", broken), ("n01440764", "README.txt", b"x")]))
    report = tmp_path / "report"
    report.mkdir()
    images = open_images(root, report_dir=str(report))
    assert len(images) == 101 and images.name(1).endswith("n01440764.tar/n01440764_zz_cut.JPEG")
    image, label = images.read(1)  # the next readable image, as in a folder
    assert label == images.label(2) and image.size == open_images(root).read(2)[0].size
    listed = (report / "bad_images.txt").read_text()
    assert "n01440764_zz_cut.JPEG" in listed and "README.txt" in listed
    with pytest.raises(DatasetError, match="n01440764.tar/n01440764_zz_cut.JPEG"):
        open_images(root, bad_images="error").read(1)


def test_unusable_archives_and_patterns_are_one_line(folder, tmp_path):
    from pretrain.data.layouts import open_images
    from ssl2det.errors import DatasetError

    whole = imagenet_archive(folder, tmp_path / "train.tar")
    cut = tmp_path / "cut.tar"
    cut.write_bytes(whole.read_bytes()[:os.path.getsize(whole) // 2])
    with pytest.raises(DatasetError, match=r"cut\.tar is cut short: member .* at offset \d+"):
        open_images(str(cut))
    with pytest.raises(DatasetError, match=r"is a compressed tar, .* give the \.tar"):
        open_images(str(tmp_path / "train.tar.gz"))
    (tmp_path / "noise.tar").write_bytes(os.urandom(4096))
    with pytest.raises(DatasetError, match=r"noise\.tar is not a tar: its first 512 bytes"):
        open_images(str(tmp_path / "noise.tar"))
    with pytest.raises(DatasetError, match=r"the pattern .*none-\{000000\.\.000003\}\.tar "
                                           "matches no file"):
        open_images(str(tmp_path / "none-{000000..000003}.tar"))
    shards = tmp_path / "shards"
    shards.mkdir()
    with tarfile.open(shards / "s-000000.tar", "w") as tar:
        _add(tar, "a.txt", b"no image")
        _add(tar, "a.cls", b"0")
    with pytest.raises(DatasetError, match=r"s-000000\.tar holds no image"):
        open_images(str(shards / "s-{000000..000000}.tar"))
    with tarfile.open(shards / "s-000001.tar", "w") as tar:
        _add(tar, "b.jpg", (folder / "n01440764" / "n01440764_tench.JPEG").read_bytes())
    with pytest.raises(DatasetError, match=r"sample b has no b\.cls"):
        open_images(str(shards / "s-{000001..000001}.tar"))
    with pytest.raises(DatasetError, match="1 of its 2 shards are missing"):
        open_images(str(shards / "s-{000001..000002}.tar"))
    # the commands say it in one line, no traceback (the tool in its own process)
    result = run(["python", REPO / "tools" / "make_shards.py", cut, tmp_path / "out"], cwd=REPO)
    one_line_error(result, 1, "cut.tar is cut short")


def _pretrain(root, out, extra=()):
    from pretrain.config import load_config
    from pretrain.engine.run import run_pretraining

    cfg = load_config(str(REPO / "configs/pretrain/infocl_cifar10_simclr.yaml"), [
        "DATA.ROOT", root, "DATA.VAL_ROOT", "", "OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "4",
        "SOLVER.BATCH_SIZE", "16", "INPUT.SIZE", "32", "DATA.NUM_WORKERS", "2",
        "SOLVER.CHECKPOINT_PERIOD", "2", "LOG_PERIOD", "1", "MODEL.CHANNELS_LAST", "False",
        *extra])
    run_pretraining(cfg, resume=True)
    return load_checkpoint(out / "model_final.pth")["model"]


@pytest.mark.slow
def test_a_folder_its_archive_and_shards_train_to_the_same_weights(folder, tmp_path):
    """Full-size JPEGs, 2 loader workers; the shards' run is cut after its checkpoint of
    iteration 2 and resumed."""
    from pretrain.data.shards import write_shards

    roots = {"archive": str(imagenet_archive(folder, tmp_path / "train.tar")),
             "plain shards": plain_shards(folder, tmp_path / "plain"),
             "make_shards": write_shards(str(folder), str(tmp_path / "made"), 40,
                                         progress=False)}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same sums in the same order in every run
    try:
        reference = _pretrain(str(folder), tmp_path / "folder")
        for layout, root in roots.items():
            weights = _pretrain(root, tmp_path / layout)
            assert weights.keys() == reference.keys()
            assert all(torch.equal(weights[k], reference[k]) for k in reference), layout
        out = tmp_path / "make_shards"  # its run again, from its checkpoint of iteration 2
        assert (out / "model_0000001.pth").is_file()
        (out / "last_checkpoint").write_text("model_0000001.pth")  # as if killed after iteration 2
        os.remove(out / "model_final.pth")
        resumed = _pretrain(roots["make_shards"], out)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)


def test_the_decode_on_device_path_reads_archives_and_shards(folder, tmp_path):
    """INPUT.DECODE_ON_DEVICE: workers hand the members' bytes over; the batch is the folder's."""
    from pretrain.config import load_config
    from pretrain.data import build_pretrain_loader

    def first_batch(root):
        cfg = load_config(str(REPO / "configs/pretrain/simclr_r50_imagenet.yaml"), [
            "DATA.ROOT", root, "DATA.VAL_ROOT", "", "OUTPUT_DIR", str(tmp_path / "out"),
            "SOLVER.BATCH_SIZE", "8", "INPUT.SIZE", "64", "DATA.NUM_WORKERS", "0",
            "INPUT.AUGMENT_ON_DEVICE", "True", "INPUT.DECODE_ON_DEVICE", "True"])
        loader, sampler = build_pretrain_loader(cfg, 0, 1, on_device=True)
        sampler.set_epoch(0, 0)
        return next(iter(loader))

    views, labels = first_batch(str(folder))
    for root in (str(imagenet_archive(folder, tmp_path / "train.tar")),
                 plain_shards(folder, tmp_path / "plain")):
        other_views, other_labels = first_batch(root)
        assert torch.equal(other_labels, labels)
        assert all(torch.equal(a, b) for a, b in zip(other_views, views))


def test_the_preflight_counts_archives_and_shards_and_names_what_is_missing(folder, tmp_path):
    from pipeline.checks import Checks

    checks = Checks(spec=None)
    archive = str(imagenet_archive(folder, tmp_path / "train.tar"))
    shards = plain_shards(folder, tmp_path / "plain")
    index_dir = str(tmp_path / "index")
    assert checks.images_problem("DATA.ROOT", archive, index_dir) == ""
    assert checks.images_problem("DATA.ROOT", shards, index_dir) == ""
    assert checks.images == {archive: 100, shards: 100}
    assert len(os.listdir(index_dir)) == 2  # kept for the pretraining that reads them
    problem = checks.images_problem("DATA.VAL_ROOT", str(tmp_path / "val-{000..009}.tar"))
    assert problem.startswith("DATA.VAL_ROOT: the pattern ") and "matches no file" in problem
    problem = checks.images_problem("DATA.ROOT", str(tmp_path / "train.tar.gz"))
    assert problem.startswith("DATA.ROOT: ") and "is a compressed tar" in problem


def test_ranks_share_one_reading_of_the_headers(folder, tmp_path):
    """Under DDP rank 0 reads the tar headers and writes the index; rank 1 reads the index."""
    from ddp_helpers import image_folder_on_ranks
    from pretrain.data.layouts import open_images

    root = str(imagenet_archive(folder, tmp_path / "train.tar"))
    ranks = image_folder_on_ranks(root, str(tmp_path / "index"), 2, str(tmp_path))
    assert ranks[0]["walked"] == 1 and ranks[1]["walked"] == 0
    images = open_images(root)
    assert ranks[0]["samples"] == ranks[1]["samples"] == [
        [images.name(k), images.label(k)] for k in range(len(images))]


def test_a_dry_run_reads_an_archive_without_writing_its_index(folder, tmp_path):
    """--dry-run's pre-flight counts an archive's images and writes nothing (it saved the
    tar index into output_dir: 137 MB and 19 s for ImageNet, then said nothing was written)."""
    import yaml

    from pipeline.preflight import preflight
    from pipeline.spec import load_spec
    from pipeline.stages import build_stages

    archive = imagenet_archive(folder, tmp_path / "train.tar")
    run = tmp_path / "run.yaml"
    run.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "out"), "pretrain": [
        {"name": "a", "config": "configs/demo/simclr_r50_small.yaml",
         "overrides": ["DATA.ROOT", str(archive), "KNN.ENABLED", False]}]}))
    spec = load_spec(str(run))
    assert "(100 images)" in preflight(spec, build_stages(spec), writes=False)
    assert not (tmp_path / "out").exists()
    preflight(spec, build_stages(spec))  # (a run keeps it for the pretraining)
    assert list((tmp_path / "out").rglob("*.tar-index.npz"))


def test_a_damaged_header_midway_is_named_not_the_end_of_the_archive(folder, tmp_path):
    """A header in the middle of the archive with a broken checksum: tarfile took it for the end
    and every class after it vanished; now one line names the file and the offset."""
    from pretrain.data.layouts import open_images
    from ssl2det.errors import DatasetError

    archive = imagenet_archive(folder, tmp_path / "train.tar")
    with tarfile.open(archive) as tar:
        middle = tar.getmembers()[50]
    data = bytearray(archive.read_bytes())
    data[middle.offset + 148:middle.offset + 156] = b"99999999"  # its checksum field
    archive.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=rf"train.tar: the header at offset {middle.offset} "
                                           "is damaged"):
        open_images(str(archive))


def test_what_an_inner_tar_or_a_link_really_is_is_named(folder, tmp_path):
    """An empty class tar is a class without images (it read as "cut short"), a gzip or a text
    file in a tar's place is named as what it is (it read as holding no image), and a link
    member is refused by name (it was dropped in silence)."""
    import gzip

    from pretrain.data.layouts import open_images
    from ssl2det.errors import DatasetError

    def archive(name, members):
        path = tmp_path / name
        with tarfile.open(path, "w") as tar:
            for member, data in members.items():
                _add(tar, member, data)
        return str(path)

    image = (folder / "n01440764" / "n01440764_tench.JPEG").read_bytes()
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w") as tar:
        _add(tar, "a.JPEG", image)
    for members, message in (
            ({"n1.tar": inner.getvalue(), "n2.tar": b""}, "the classes n2 hold no image"),
            ({"n1.tar": gzip.compress(inner.getvalue())}, "n1.tar is gzip-compressed"),
            ({"n1.tar": b"not a tar\n" * 100}, "n1.tar is not a tar: its first 512 bytes")):
        with pytest.raises(DatasetError, match=message):
            open_images(archive("outer.tar", members))
    linked = tmp_path / "linked.tar"
    with tarfile.open(linked, "w") as tar:
        _add(tar, "n1/a.JPEG", image)
        link = tarfile.TarInfo("n1/b.JPEG")
        link.type, link.linkname = tarfile.LNKTYPE, "n1/a.JPEG"
        tar.addfile(link)
    with pytest.raises(DatasetError, match="member n1/b.JPEG is a hard link to n1/a.JPEG"):
        open_images(str(linked))


def test_a_kept_index_is_used_only_as_written_for_the_same_tars(folder, tmp_path, built):
    """A tar replaced by another of the same size and modification time, an index whose arrays
    were edited with values still in range, or whose classes became a string: read again
    (they were used as they stood: a string's letters as classes)."""
    import numpy as np

    from pretrain.data import archives

    root = str(imagenet_archive(folder, tmp_path / "train.tar"))
    index_dir = str(tmp_path / "index")
    archives.load_tar_index(root, index_dir)
    stat = os.stat(root)
    shutil.copy(root, tmp_path / "copy.tar")
    os.replace(tmp_path / "copy.tar", root)  # the same bytes, size and mtime: another file
    os.utime(root, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    archives.load_tar_index(root, index_dir)
    assert len(built) == 2
    path = archives.tar_index_path(index_dir, root)
    for edit in ("labels", "classes"):
        with np.load(path) as stored:
            arrays = dict(stored)
        meta = json.loads(bytes(arrays["meta"]))
        if edit == "labels":
            arrays["labels"] = arrays["labels"][::-1].copy()  # in range, wrong
        else:
            meta["classes"] = "".join(meta["classes"])
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
        np.savez(path, **arrays)
        index = archives.load_tar_index(root, index_dir)
        assert len(index.classes) == 100 and index.labels[0] == 0 and index.labels[-1] == 99
    assert len(built) == 4


def test_class_folders_under_one_top_folder_are_the_classes(folder, tmp_path):
    """`tar cf train.tar train` puts every image under train/: the classes are the folders
    below it (they read as one class named train, all labels 0); an image beside the class
    folders is refused by name."""
    from pretrain.data.layouts import open_images
    from ssl2det.errors import DatasetError

    wrapped = tmp_path / "train.tar"
    with tarfile.open(wrapped, "w") as tar:
        tar.add(folder, arcname="train")
    images = open_images(str(wrapped))
    assert len(images.classes) == 100 and images.classes == sorted(os.listdir(folder))
    assert len({images.label(i) for i in range(len(images))}) == 100
    with tarfile.open(tmp_path / "loose.tar", "w") as tar:
        tar.add(folder, arcname="train")
        _add(tar, "train/stray.JPEG", b"x")
    with pytest.raises(DatasetError, match="train/stray.JPEG sits beside the class folders"):
        open_images(str(tmp_path / "loose.tar"))


def test_numbers_from_data_are_bounded_before_anything_is_made(tmp_path):
    """A brace pattern is counted before it is expanded ({000000..099999999} took 83 s and
    8.7 GB, then a MemoryError); a .cls value bounds nothing by itself (50000000 made 50M class
    names, 99999999999 an OverflowError traceback, '1_0' read as 10)."""
    from pretrain.data.tar_files import brace_count
    from pretrain.data.layouts import open_images
    from ssl2det.errors import DatasetError

    assert brace_count("s-{000000..000146}.tar") == 147
    assert brace_count("{a,b}-{0..9..2}.tar") == 10
    with pytest.raises(DatasetError, match="names 100,000,000 shards, more than the 100,000"):
        open_images(str(tmp_path / "s-{000000..099999999}.tar"))
    for value, message in ((b"50000000", "holds 50000000, beyond the 100,000 classes"),
                           (b"99999999999", "beyond the 100,000 classes"),
                           (b"1_0", "holds b'1_0', not a class index")):
        with tarfile.open(tmp_path / "one.tar", "w") as tar:
            _add(tar, "k0.jpg", (REPO / "datasets/cifar10_tiny/train/bird/0000.jpg").read_bytes())
            _add(tar, "k0.cls", value)
        with pytest.raises(DatasetError, match=message):
            open_images(str(tmp_path / "one.tar"))


def test_make_shards_writes_only_into_out_and_says_how_it_continues(tmp_path):
    """OUT inside SRC (the shards would join the image folder) and a --name that leaves OUT are
    refused in one line, nothing written; Ctrl-C advises the same command, not a --resume it
    does not take."""
    from pretrain.make_shards import main
    from helpers import call, one_line_error

    source = tmp_path / "images"
    shutil.copytree(REPO / "datasets/cifar10_tiny/test", source)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    one_line_error(call(main, [source, source / "shards", "--no-progress"]), 2,
                   "lies inside SRC")
    one_line_error(call(main, [source, tmp_path / "out", "--name", "../../x", "--no-progress"]),
                   2, "must be a file name prefix")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before

    import pretrain.make_shards as module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    real, module.write_shards = module.write_shards, interrupted
    try:
        result = call(main, [source, tmp_path / "out"])
    finally:
        module.write_shards = real
    assert result.returncode == 130 and "--resume" not in result.stderr
    assert "the same command continues with the next one" in result.stderr

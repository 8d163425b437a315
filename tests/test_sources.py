"""Every data source through `prepare`, on tiny data made here in each source's own format."""
import numpy as np
import pandas as pd
import pytest

from fixtures import BAD_KINDS, CONVERTIBLE, make_cifar10, make_imagefolder, make_stl10, make_svhn, trust_torchvision_files
from noisystudent.data import Prepared
from noisystudent.splits import prepare
from noisystudent.params import DataParams, ParamsError, load_params
from noisystudent.sources import DataError


def params(name, root, **kw):
    base = {"name": name, "root": str(root), "image_size": None, "labeled_per_class": 2, "val_per_class": 1, "test_per_class": None}
    return DataParams(**{**base, **kw})


def pixels(d: Prepared, split: str) -> np.ndarray:
    return np.stack([np.asarray(d.images[i]) for i in d.split(split)["id"]])


def assert_disjoint(d: Prepared) -> None:
    ids = [d.split(s)["id"].to_numpy() for s in ("labeled", "unlabeled", "val", "test")]
    allids = np.concatenate(ids)
    assert len(allids) == len(set(allids.tolist()))


def test_cifar10_hides_all_but_n_labels_per_class(tmp_path, monkeypatch):
    trust_torchvision_files(monkeypatch)
    src = make_cifar10(tmp_path / "raw", per_class_train=6, per_class_test=3)
    meta = prepare(tmp_path / "p", params("cifar10", tmp_path / "raw", labeled_per_class=2, val_per_class=1))
    d = Prepared.load(tmp_path / "p")
    assert meta["counts"] == {"labeled": 20, "val": 10, "unlabeled": 30, "test": 30}
    assert d.in_chans == 3 and d.image_size == 32 and meta["class_names"][:2] == ["c0", "c1"]
    lab = d.split("labeled")
    assert np.bincount(lab["label"]).tolist() == [2] * 10
    # images are torchvision's pixels, with their labels
    xtr, ytr = src["train"]
    assert np.array_equal(pixels(d, "labeled"), xtr[lab["id"]]) and np.array_equal(lab["label"], ytr[lab["id"]])
    assert list(d.split("unlabeled").columns) == ["id"]  # hidden...
    truth = pd.read_parquet(tmp_path / "p/unlabeled_truth.parquet")
    assert len(truth) == 30 and np.array_equal(truth["label"], ytr[truth["id"]])  # ...but kept to score pseudo labels
    xte, _ = src["test"]
    assert np.array_equal(pixels(d, "test"), xte)
    assert_disjoint(d)


def test_cifar10_test_cap_per_class(tmp_path, monkeypatch):
    trust_torchvision_files(monkeypatch)
    make_cifar10(tmp_path / "raw", per_class_test=3)
    meta = prepare(tmp_path / "p", params("cifar10", tmp_path / "raw", test_per_class=2))
    assert meta["counts"]["test"] == 20


def test_svhn_uses_extra_as_the_unlabeled_pool(tmp_path, monkeypatch):
    trust_torchvision_files(monkeypatch)
    src = make_svhn(tmp_path / "raw")
    meta = prepare(tmp_path / "p", params("svhn", tmp_path / "raw", labeled_per_class=None, val_per_class=1))
    d = Prepared.load(tmp_path / "p")
    # all of train is labeled (less val); the pool is exactly `extra`
    assert meta["counts"] == {"labeled": 40, "val": 10, "unlabeled": 80, "test": 20}
    xex, yex = src["extra"]
    assert np.array_equal(pixels(d, "unlabeled"), xex)
    truth = pd.read_parquet(tmp_path / "p/unlabeled_truth.parquet")
    assert np.array_equal(truth["label"].to_numpy(), yex)  # the '10 means 0' convention undone by torchvision
    lab = d.split("labeled")
    assert np.array_equal(pixels(d, "labeled"), src["train"][0][lab["id"]])


def test_stl10_unlabeled_split_has_no_labels(tmp_path, monkeypatch):
    trust_torchvision_files(monkeypatch)
    src = make_stl10(tmp_path / "raw", per_class_train=4)
    meta = prepare(tmp_path / "p", params("stl10", tmp_path / "raw", labeled_per_class=2, val_per_class=1))
    d = Prepared.load(tmp_path / "p")
    # the 10 train images not carved out join the 25 of the unlabeled split
    assert meta["counts"] == {"labeled": 20, "val": 10, "unlabeled": 35, "test": 20}
    assert d.image_size == 96 and meta["class_names"][0] == "k0"
    truth = pd.read_parquet(tmp_path / "p/unlabeled_truth.parquet")
    # only the 10 train leftovers have a hidden label; the unlabeled split has none
    assert len(truth) == 10 == meta["unlabeled_with_truth"] and truth["id"].max() < 40
    unl = pixels(d, "unlabeled")
    assert np.array_equal(unl[-25:], src["unlabeled"][0])  # the HWC pixels we wrote, through torchvision's reader
    assert np.array_equal(pixels(d, "test"), src["test"][0])


def test_torchvision_set_missing_names_root_and_download(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"data.root=.*empty: no usable cifar10 there .*data.download: true"):
        prepare(tmp_path / "p", params("cifar10", tmp_path / "empty"))
    assert not (tmp_path / "p").exists()


def test_imagefolder_lists_bad_files_converts_odd_ones(tmp_path):
    root = make_imagefolder(tmp_path / "raw", train=8, test=4, unlabeled=30)
    (root / "train/cat/stray.txt").write_text("x")  # a bad file in a labeled folder
    (root / "train/readme.md").write_text("x")  # a file outside any class folder
    meta = prepare(tmp_path / "p", params("imagefolder", root, labeled_per_class=None, val_per_class=2))
    d = Prepared.load(tmp_path / "p")
    report = pd.read_csv(tmp_path / "p/bad_files.csv")
    reasons = dict(zip(report["path"], report["reason"]))
    for path, why in BAD_KINDS.items():
        assert reasons[path].startswith(why), (path, reasons[path])
    assert reasons["train/cat/stray.txt"].startswith("not an image")
    assert reasons["train/readme.md"] == "not inside a class folder"
    assert len(report) == len(BAD_KINDS) + 2 == meta["bad_files"]
    assert meta["bad_by_reason"] == {"empty file": 1, "not an image": 2, "not inside a class folder": 1,
                                     "too large to decode safely": 1, "truncated or corrupt": 1}
    assert meta["converted_by_mode"] == {m: 1 for m in CONVERTIBLE.values()}
    # 3 classes: 8 train each -> 2 val + 6 labeled; pool: 30 good + 5 converted
    assert meta["counts"] == {"labeled": 18, "val": 6, "unlabeled": 35, "test": 12}
    assert d.in_chans == 3 and meta["class_names"] == ["cat", "dog", "owl"]
    files = pd.read_parquet(tmp_path / "p/files.parquet").set_index("id")["path"]
    pool = set(files[d.split("unlabeled")["id"]])
    assert not pool & set(BAD_KINDS) and set(CONVERTIBLE) <= pool
    assert all(p.count("/") == 3 for p in pool if "batch" in p)  # any nesting is found
    for i in d.split("unlabeled")["id"]:  # every kept image decodes in the model's mode
        im = d.images[int(i)]
        assert im.mode == "RGB" and im.size == (12, 12)
    assert_disjoint(d)


def test_imagefolder_grayscale_and_val_folder(tmp_path):
    root = make_imagefolder(tmp_path / "raw", gray=True, bad=False)
    make_imagefolder(tmp_path / "v", gray=True, bad=False, train=2)
    (tmp_path / "v/train").rename(root / "val")
    meta = prepare(tmp_path / "p", params("imagefolder", root, labeled_per_class=3))
    d = Prepared.load(tmp_path / "p")
    assert d.in_chans == 1 and d.images[0].mode == "L"
    # val comes from val/, so train gives labeled only; the rest joins the pool
    assert meta["counts"] == {"labeled": 9, "unlabeled": 30 + 15, "val": 6, "test": 12}
    assert len(pd.read_parquet(tmp_path / "p/unlabeled_truth.parquet")) == 15  # only train leftovers are known


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda r: [p.unlink() for p in (r / "train").rglob("*.png")], r"train/ holds no image files"),
        (lambda r: [__import__("shutil").rmtree(r / "train" / c) for c in ("dog", "owl")], r"train/ has one class \('cat'\)"),
        (lambda r: __import__("shutil").rmtree(r / "train"), r"train/ not found"),
        (lambda r: __import__("shutil").rmtree(r / "unlabeled"), r"unlabeled/ not found"),
        (lambda r: (r / "test/zebra").mkdir(), r"test/ has classes not in train/: \['zebra'\]"),
        (lambda r: [p.write_bytes(b"") for p in (r / "train/owl").glob("*")], r"no usable image in class\(es\) \['owl'\]"),
    ],
    ids=["empty", "one-class", "no-train", "no-unlabeled", "unknown-test-class", "class-all-bad"],
)
def test_imagefolder_unusable_layout_is_a_clear_error(tmp_path, damage, message):
    root = make_imagefolder(tmp_path / "raw", bad=False)
    damage(root)
    with pytest.raises(DataError, match=message):
        prepare(tmp_path / "p", params("imagefolder", root))
    assert not (tmp_path / "p").exists()  # nothing half-written


def test_params_check_source_settings(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("data: {name: imagefolder, root: nowhere}\niterations: {s1: {teacher: teacher, arch: ns_resnet_s}}\neval: {models: [teacher, s1, baseline, oracle]}\n")
    with pytest.raises(ParamsError, match="data.root: folder 'nowhere' not found"):
        load_params(f)
    f.write_text(f"data: {{name: imagefolder, root: {tmp_path}, download: true}}\niterations: {{s1: {{teacher: teacher, arch: ns_resnet_s}}}}\neval: {{models: [teacher, s1, baseline, oracle]}}\n")
    with pytest.raises(ParamsError, match="cannot be downloaded"):
        load_params(f)
    f.write_text("data: {name: imagenet}\niterations: {s1: {teacher: teacher, arch: ns_resnet_s}}\neval: {models: [teacher, s1, baseline, oracle]}\n")
    with pytest.raises(ParamsError, match="data.name: Input should be 'digits', 'cifar10', 'svhn', 'stl10' or 'imagefolder'"):
        load_params(f)


def test_cifar10_through_every_stage(tmp_path, monkeypatch, tiny_params):
    """No code change between datasets: the same stages on a torchvision set (RGB, 32x32)."""
    from tinyrun import run_all

    trust_torchvision_files(monkeypatch)
    make_cifar10(tmp_path / "raw", per_class_train=8, per_class_test=2)
    p = tiny_params(data__name="cifar10", data__root=str(tmp_path / "raw"), data__image_size=None, data__test_per_class=None,
                    data__labeled_per_class=3, data__val_per_class=2)
    summary = run_all(p, tmp_path / "run")
    assert list(summary["test_acc"]) == ["s1", "s2"]
    sel = __import__("json").loads((tmp_path / "run/metrics/select/s1.json").read_text())
    assert sel["pseudo_labeled"] == 30 and sel["pseudo_label_truth_known"] == 30  # CIFAR's hidden labels score them
    from noisystudent.checkpoint import load_checkpoint

    ckpt = load_checkpoint(tmp_path / "run/models/teacher.pt")
    assert ckpt["in_chans"] == 3 and ckpt["data_config"]["input_size"] == [3, 32, 32]


def test_an_image_replaced_under_its_name_changes_the_prepared_folder(tmp_path):
    """The prepared folder records a digest of the pixels (meta.json `content_sha256`): an image
    replaced in place under the same name changes it, so DVC re-runs every later stage and the
    labeling fingerprint (which holds it) relabels instead of keeping old rows."""
    from PIL import Image

    root = make_imagefolder(tmp_path / "raw", train=4, test=2, unlabeled=6, bad=False)
    kw = dict(labeled_per_class=None, val_per_class=1)
    first = prepare(tmp_path / "p1", params("imagefolder", root, **kw))
    again = prepare(tmp_path / "p2", params("imagefolder", root, **kw))
    assert first["content_sha256"] == again["content_sha256"]  # the same files: the same digest
    victim = next((root / "unlabeled").rglob("*.jpg"))
    Image.new("RGB", (12, 12), (250, 0, 0)).save(victim, "JPEG")
    changed = prepare(tmp_path / "p3", params("imagefolder", root, **kw))
    assert (tmp_path / "p1/files.parquet").read_bytes() == (tmp_path / "p3/files.parquet").read_bytes()  # same names
    assert changed["content_sha256"] != first["content_sha256"]
    assert (tmp_path / "p1/meta.json").read_bytes() != (tmp_path / "p3/meta.json").read_bytes()


def test_links_and_odd_names_are_refused_with_their_own_reason(tmp_path):
    """A link resolving outside data.root, a broken link, a linked folder and a file name that
    is not UTF-8: each is a row in bad_files.csv with its own reason; none enters a split and
    nothing crashes (the non-UTF-8 name used to crash writing files.parquet)."""
    import os

    root = make_imagefolder(tmp_path / "raw", train=4, test=2, unlabeled=6, bad=False)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    good = next((root / "train/cat").glob("*"))
    (outside / "secret.png").write_bytes(good.read_bytes())
    (root / "train/cat/escape.png").symlink_to(outside / "secret.png")
    (root / "train/cat/inside.png").symlink_to(good)  # a link that stays inside the root is an ordinary file
    (root / "unlabeled/broken.png").symlink_to(tmp_path / "gone.png")
    (root / "unlabeled/linked").symlink_to(outside, target_is_directory=True)
    os.rename(next((root / "unlabeled").rglob("*.jpg")), os.fsencode(root / "unlabeled") + b"/caf\xe9.jpg")
    meta = prepare(tmp_path / "p", params("imagefolder", root, labeled_per_class=None, val_per_class=1))
    report = pd.read_csv(tmp_path / "p/bad_files.csv")
    reasons = dict(zip(report["path"], report["reason"]))
    assert reasons == {
        "train/cat/escape.png": f"links outside data.root (to {(outside / 'secret.png').resolve()})",
        "unlabeled/broken.png": "broken symbolic link",
        "unlabeled/linked": "linked folder, not followed",
        "unlabeled/caf\\xe9.jpg": "file name is not valid UTF-8",
    }
    assert meta["bad_by_reason"] == {"broken symbolic link": 1, "file name is not valid UTF-8": 1,
                                     "linked folder, not followed": 1, "links outside data.root": 1}
    files = set(pd.read_parquet(tmp_path / "p/files.parquet")["path"])
    assert "train/cat/inside.png" in files and not any("escape" in f or "secret" in f for f in files)
    assert meta["counts"]["unlabeled"] == 5


def test_a_file_that_cannot_be_read_is_unreadable_not_corrupt(tmp_path, monkeypatch):
    """Permission denied (or an I/O error) is the system's refusal, not a damaged image: its
    own reason. (Tests run as root, where chmod 000 still reads: the open is made to fail.)"""
    import builtins
    import errno

    root = make_imagefolder(tmp_path / "raw", train=4, test=2, unlabeled=6, bad=False)
    victim = next((root / "unlabeled").rglob("*.jpg"))

    real_open = builtins.open

    def guarded_open(path, *a, **kw):
        if str(path) == str(victim):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *a, **kw)

    monkeypatch.setattr(builtins, "open", guarded_open)
    meta = prepare(tmp_path / "p", params("imagefolder", root, labeled_per_class=None, val_per_class=1))
    report = pd.read_csv(tmp_path / "p/bad_files.csv")
    assert list(report["reason"]) == ["unreadable: Permission denied"]
    assert meta["bad_by_reason"] == {"unreadable": 1}

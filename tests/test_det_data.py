"""det_digits, the embedded detection set: exact, deterministic scenes (work in progress: no
detector trains on it yet, issue 21)."""

import numpy as np
import pytest
import torch

from glcan.data.det_digits import DetDigits, compose
from glcan.data.errors import DataError


def test_scenes_have_one_to_six_digits_with_boxes_inside_the_image():
    ds = DetDigits("train")
    counts = []
    for i in range(40):
        image, target = ds[i]
        assert image.shape == (3, 128, 128) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
        boxes, labels = target["boxes"], target["labels"]
        counts.append(len(labels))
        assert boxes.shape == (len(labels), 4) and labels.dtype == torch.int64
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 128).all() and (boxes[:, 2:] > boxes[:, :2]).all()
        assert set(labels.tolist()) <= set(range(10))
    assert min(counts) >= 1 and max(counts) <= 6 and len(set(counts)) > 3


def test_a_scene_is_a_pure_function_of_seed_split_and_index():
    a, b = compose("val", 7), compose("val", 7)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(compose("val", 8)[0], a[0]) and not np.array_equal(compose("val", 7, seed=1)[0], a[0])


def test_a_box_is_no_larger_than_its_digit():
    for i in range(20):
        _, boxes, _ = compose("test", i, min_side=16, max_side=24)
        assert ((boxes[:, 2:] - boxes[:, :2]) <= 24).all()


def test_bad_arguments_are_one_line():
    with pytest.raises(DataError, match="splits train, val, test"):
        compose("training", 0)
    with pytest.raises(DataError, match="min_side"):
        compose("train", 0, min_side=64, max_side=32)


# ---------------------------------------------------------------- a user's COCO folder
import json  # noqa: E402

from PIL import Image  # noqa: E402

from glcan.data.coco_folder import CocoFolder, layout  # noqa: E402


def _coco(folder, annotations=None, categories=((7, "cat"), (3, "dog")), images=(("a.png", 40, 30), ("b.png", 20, 20))):
    folder.mkdir(parents=True, exist_ok=True)
    for name, w, h in images:
        Image.new("RGB", (w, h), (10, 20, 30)).save(folder / name)
    data = {"images": [{"id": i + 1, "file_name": n, "width": w, "height": h} for i, (n, w, h) in enumerate(images)],
            "categories": [{"id": c, "name": n} for c, n in categories],
            "annotations": annotations if annotations is not None else
            [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [2, 3, 10, 5], "area": 50, "iscrowd": 0},
             {"id": 2, "image_id": 1, "category_id": 3, "bbox": [0, 0, 40, 30], "area": 1200, "iscrowd": 0}]}
    (folder / "annotations.json").write_text(json.dumps(data))
    return folder


def test_a_coco_folder_reads_as_xyxy_boxes_with_contiguous_labels(tmp_path):
    ds = CocoFolder(_coco(tmp_path / "d"))
    assert layout(tmp_path / "d") == {"all": tmp_path / "d"}
    assert len(ds) == 2 and ds.names == ["dog", "cat"] and ds.background == ["b.png"]
    image, target = ds[0]
    assert image.shape == (3, 30, 40) and image.dtype == torch.float32
    assert target["boxes"].tolist() == [[2, 3, 12, 8], [0, 0, 40, 30]] and target["labels"].tolist() == [1, 0]
    image, target = ds[1]  # background: kept, with no boxes
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)


@pytest.mark.parametrize("annotations, message", [
    ([{"id": 5, "image_id": 9, "category_id": 7, "bbox": [0, 0, 1, 1]}], "annotation 5 names image_id 9"),
    ([{"id": 5, "image_id": 1, "category_id": 4, "bbox": [0, 0, 1, 1]}], "category_id 4; the file's categories are 3, 7"),
    ([{"id": 5, "image_id": 1, "category_id": 7, "bbox": [35, 0, 10, 5]}], "lies outside its image 'a.png' (40x30)"),
    ([{"id": 5, "image_id": 1, "category_id": 7, "bbox": [0, 0, 0, 5]}], "has no area"),
    ([{"id": 5, "image_id": 1, "category_id": 7, "bbox": [0, 0, 5]}], "bbox must be [x, y, width, height]"),
])
def test_a_bad_coco_file_is_one_line_naming_the_record(tmp_path, annotations, message):
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        CocoFolder(_coco(tmp_path / "d", annotations))


def test_coco_layout_faults(tmp_path):
    with pytest.raises(DataError, match="is not a folder"):
        layout(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="has no annotations.json"):
        layout(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "annotations.json").write_text("{not json")
    with pytest.raises(DataError, match=r"not valid JSON \(line 1"):
        CocoFolder(bad)
    split = tmp_path / "split"
    _coco(split / "train"), _coco(split / "test")
    assert layout(split) == {"train": split / "train", "test": split / "test"}


def test_letterboxing_moves_the_boxes_with_the_image(tmp_path):
    # a.png is 40 x 30: scaled by 64/40 to 64 x 48, then padded by 8 rows above and below
    image, target = CocoFolder(_coco(tmp_path / "d"), size=64)[0]
    assert image.shape == (3, 64, 64)
    s = 64 / 40
    expected = torch.tensor([[2 * s, 3 * s + 8, 12 * s, 8 * s + 8], [0, 8, 64, 56]])
    torch.testing.assert_close(target["boxes"], expected, atol=0.5, rtol=0)
    assert float(image[:, :7].abs().sum()) == 0.0  # the padding is black


@pytest.mark.slow  # a whole fit (and W&B) on 2 cores: ~10-25 s
def test_a_detector_trains_on_a_coco_folder_and_writes_its_map(tmp_path, monkeypatch):
    from glcan.cli import main

    root = tmp_path / "coco"
    _coco(root / "train", images=tuple((f"t{i}.png", 48, 40) for i in range(4)))
    _coco(root / "test", images=(("u.png", 40, 48),))
    run = tmp_path / "run"
    assert main(["fit", "--config", "configs/det_digits_fcos_glcan_k4.yaml", "--data.name", "coco", "--data.root",
                 str(root), "--data.image_size", "64", "--data.batch_size", "2", "--data.val_fraction", "0.25",
                 "--trainer.max_epochs", "1", "--logger", "false", "--trainer.enable_progress_bar", "false",
                 "--run_dir", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["num_blocks"] == 4 and summary["test_map50"] is not None and len(summary["block_map50"]) == 4
    # the deployed detector is torchvision's FCOS with the trained weights, and detects as the run does
    from torchvision.models.detection import FCOS

    from glcan.lit import GLCanModule

    model = GLCanModule.load_from_checkpoint(run / "checkpoints" / "last.ckpt").eval()
    detector = model.deployable()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ours, theirs = model(x), detector(list(x))
    assert type(detector) is FCOS and len(theirs) == 2
    torch.testing.assert_close(ours[0]["scores"], theirs[0]["scores"])
    # predict: COCO-format detections in each file's own pixels, and the images with their boxes
    out = tmp_path / "pred"
    monkeypatch.chdir(tmp_path / "coco")
    assert main(["predict", "--ckpt_path", str(run / "checkpoints" / "last.ckpt"), "--images", str(root / "test"),
                 "--out", str(out)]) == 0
    assert not (tmp_path / "coco" / "runs").exists()  # nothing written where the command was run
    records = json.loads((out / "detections.json").read_text())
    assert records and {r["category_id"] for r in records} <= {3, 7} and all(r["file_name"].endswith("u.png") for r in records)
    assert all(0 <= r["bbox"][0] and r["bbox"][0] + r["bbox"][2] <= 40 + 1e-3 and r["bbox"][1] + r["bbox"][3] <= 48 + 1e-3
               for r in records)  # u.png is 40 x 48
    assert (out / "u_boxes.png").is_file()


def test_predict_maps_the_letterbox_back_to_the_files_pixels(tmp_path):
    from glcan.data.coco_folder import PredictImages

    folder = _coco(tmp_path / "d")  # a.png 40 x 30, b.png 20 x 20
    images = PredictImages(sorted(folder.glob("*.png")), size=64)
    assert images[0][0].shape == (3, 64, 64)
    assert images.geometry(0) == pytest.approx((0, 8, 1.6, 1.6, 40, 30))
    assert images.geometry(1) == pytest.approx((0, 0, 3.2, 3.2, 20, 20))


def _voc(root):
    """A two-image Pascal VOC 2012 tree (the layout torchvision reads)."""
    base = root / "VOCdevkit" / "VOC2012"
    for d in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (base / d).mkdir(parents=True, exist_ok=True)
    for name, objects in (("a", [("dog", (2, 3, 20, 15))]), ("b", [("cat", (1, 1, 9, 9)), ("person", (5, 6, 30, 25))])):
        Image.new("RGB", (40, 30), (90, 90, 90)).save(base / "JPEGImages" / f"{name}.jpg")
        xml = "".join(f"<object><name>{n}</name><difficult>0</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
                      f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for n, b in objects)
        (base / "Annotations" / f"{name}.xml").write_text(
            f"<annotation><filename>{name}.jpg</filename><size><width>40</width><height>30</height><depth>3</depth>"
            f"</size>{xml}</annotation>")
    for split in ("train", "val"):
        (base / "ImageSets" / "Main" / f"{split}.txt").write_text("a\nb\n")
    return root


def test_voc_reads_as_0_based_labels_with_letterboxed_boxes(tmp_path):
    from glcan.data.voc import CLASSES, VocSet

    ds = VocSet(str(_voc(tmp_path / "voc")), "train", size=80)
    image, target = ds[1]
    assert image.shape == (3, 80, 80)
    assert [CLASSES[i] for i in target["labels"]] == ["cat", "person"]
    torch.testing.assert_close(target["boxes"][0], torch.tensor([2.0, 12.0, 18.0, 28.0]))  # x2, then 10 rows of padding


def test_voc_missing_is_one_line_that_says_how_to_get_it(tmp_path):
    from glcan.data.voc import VocSet

    with pytest.raises(DataError, match="no Pascal VOC 2012 'train' set there.*--data.download true"):
        VocSet(str(tmp_path), "train", size=64)


def test_coco_2017_as_it_unpacks_is_read_with_val2017_as_the_test_set(tmp_path):
    root = tmp_path / "coco"
    for split in ("train2017", "val2017"):
        _coco(root / split)
        (root / "annotations").mkdir(exist_ok=True)
        (root / split / "annotations.json").rename(root / "annotations" / f"instances_{split}.json")
    assert layout(root) == {"train": root / "train2017", "test": root / "val2017"}
    assert len(CocoFolder(root / "val2017", size=32)) == 2


def test_testing_on_another_coco_folder_evaluates_every_image_of_it(tmp_path):
    from glcan.data import GLCanDataModule

    whole = _coco(tmp_path / "other", images=(("a.png", 40, 30), ("b.png", 20, 20), ("c.png", 30, 30)))
    dm = GLCanDataModule(name="coco", root=str(whole), image_size=32)
    dm.evaluate_every_photo(trained_on=str(tmp_path / "trained_here"))
    dm.setup("test")
    assert len(dm.test_set) == 3  # no split: all of it
    same = GLCanDataModule(name="coco", root=str(whole), image_size=32, val_fraction=0.34)
    same.evaluate_every_photo(trained_on=str(whole))  # the training folder: its own test split only
    same.setup("test")
    assert len(same.test_set) == 1

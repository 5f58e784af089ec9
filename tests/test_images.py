import logging

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile, JpegImagePlugin

from progeo.data.images import ImageFileDataset, decode_image, iter_image_batches, load_image
from progeo.errors import ConfigError, ImageDecodeError


def _stripes(width: int, height: int) -> Image.Image:
    """Left quarter red, middle half green, right quarter blue."""
    array = np.zeros((height, width, 3), dtype=np.uint8)
    array[:, : width // 4, 0] = 255
    array[:, width // 4 : 3 * width // 4, 1] = 255
    array[:, 3 * width // 4 :, 2] = 255
    return Image.fromarray(array)


@pytest.fixture
def image_folder(tmp_path):
    paths = []
    for i in range(5):
        path = tmp_path / f"img_{i}.jpg"
        _stripes(320, 240).save(path, quality=90)
        paths.append(path)
    good = tmp_path / "good.jpg"
    _stripes(320, 240).save(good, quality=90)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("this is not an image\n")
    return paths, truncated, not_image


def test_jpeg_draft_decoding_gives_requested_size(tmp_path, monkeypatch):
    path = tmp_path / "big.jpg"
    _stripes(800, 800).save(path, quality=95)
    drafted = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        result = original(self, mode, size)
        drafted.append(self.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    fast = decode_image(path, (100, 150))
    assert fast.shape == (3, 100, 150) and fast.dtype == torch.uint8
    assert drafted == [(200, 200)]  # 1/4 DCT scaling: the largest scale still >= 150 x 100
    slow = decode_image(path, (100, 150), fast_jpeg=False)
    assert slow.shape == fast.shape
    assert (fast.float() - slow.float()).abs().mean() < 6.0


def test_resize_modes(tmp_path):
    path = tmp_path / "wide.png"
    _stripes(800, 400).save(path)
    resized = decode_image(path, 100, resize_mode="resize")
    cropped = decode_image(path, 100, resize_mode="center-crop")
    assert resized.shape == cropped.shape == (3, 100, 100)
    assert resized[0, 50, 5] > 200 and resized[2, 50, 95] > 200  # stretched: red and blue kept
    assert cropped[1, 50, 5] > 200 and cropped[1, 50, 95] > 200  # cropped: only green centre
    with pytest.raises(ConfigError, match="resize_mode"):
        decode_image(path, 100, resize_mode="squash")


def test_grayscale_and_exif_orientation(tmp_path):
    gray = tmp_path / "gray.png"
    Image.new("L", (40, 30), 128).save(gray)
    assert decode_image(gray, None).shape == (3, 30, 40)
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, displayed portrait
    _stripes(200, 100).save(rotated, exif=exif)
    assert load_image(rotated, None).size == (100, 200)
    assert decode_image(rotated, (50, 25)).shape == (3, 50, 25)


def test_batches_in_order(image_folder):
    paths, _, _ = image_folder
    batches = iter_image_batches(paths, (64, 96), batch_size=2)
    assert len(batches) == 3 and not batches.pin_memory
    seen = [(images.shape, indices.tolist()) for images, indices in batches]
    assert seen == [((2, 3, 64, 96), [0, 1]), ((2, 3, 64, 96), [2, 3]), ((1, 3, 64, 96), [4])]


@pytest.fixture
def workers_for_small_sets(monkeypatch):
    """Start decoding workers even for a couple of batches, so the worker path is exercised."""
    import progeo.data.images

    monkeypatch.setattr(progeo.data.images, "BATCHES_PER_WORKER", 1)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_bad_image_fail(image_folder, num_workers, workers_for_small_sets):
    paths, truncated, not_image = image_folder
    for bad in (truncated, not_image):
        batches = iter_image_batches([paths[0], bad, paths[1]], 32, batch_size=2, num_workers=num_workers)
        with pytest.raises(ImageDecodeError, match="--on-bad-image skip") as info:
            list(batches)
        assert str(bad) in str(info.value) and "\n" not in str(info.value)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize("num_workers", [0, 2])
def test_bad_image_skip(image_folder, num_workers, caplog, workers_for_small_sets):
    paths, truncated, not_image = image_folder
    inputs = [paths[0], truncated, paths[1], paths[2], not_image, paths[3]]
    batches = iter_image_batches(inputs, 32, batch_size=2, num_workers=num_workers, on_bad_image="skip")
    assert batches.effective_workers == num_workers
    with caplog.at_level(logging.WARNING, logger="progeo.data.images"):
        got = [(images.shape[0], indices.tolist()) for images, indices in batches]
    assert got == [(1, [0]), (2, [2, 3]), (1, [5])]
    assert batches.skipped_indices == [1, 4]
    assert batches.skipped_paths == [str(truncated), str(not_image)]
    logged = caplog.text
    assert str(truncated) in logged and str(not_image) in logged


def test_skipped_image_message_does_not_suggest_skipping(image_folder, caplog):
    paths, truncated, _ = image_folder
    with caplog.at_level(logging.WARNING, logger="progeo.data.images"):
        list(iter_image_batches([paths[0], truncated], 32, batch_size=2, on_bad_image="skip"))
    logged = caplog.text
    assert f"left out (--on-bad-image skip): cannot decode image {truncated}" in logged
    assert "replace or delete the file to include it" in logged and "pass --on-bad-image skip" not in logged


def test_fail_message_suggests_skip_only_where_the_command_has_the_flag(image_folder):
    from progeo.data.images import decode_image
    from progeo.train.class_batches import ImageSource, PreloadedImages

    paths, truncated, _ = image_folder
    with pytest.raises(ImageDecodeError, match="pass --on-bad-image skip"):  # eval / index build / localize
        list(iter_image_batches([paths[0], truncated], 32, batch_size=2))
    for load in (lambda: decode_image(truncated, 32),  # training: no --on-bad-image flag there
                 lambda: ImageSource([truncated], 32).load(np.array([0])),
                 lambda: PreloadedImages([paths[0], truncated], 32, np.array([0, 1]), progress=False)):
        with pytest.raises(ImageDecodeError) as err:
            load()
        assert str(truncated) in str(err.value) and "replace or delete the file" in str(err.value)
        assert "--on-bad-image" not in str(err.value)


def test_workers_are_started_only_for_enough_batches(image_folder):
    from progeo.data.images import BATCHES_PER_WORKER

    paths = image_folder[0]
    assert iter_image_batches(paths, 32, batch_size=1, num_workers=4).effective_workers == len(paths) // BATCHES_PER_WORKER
    many = paths * (3 * BATCHES_PER_WORKER)  # 3 workers' worth of batches per image ...
    assert iter_image_batches(many, 32, batch_size=1, num_workers=2).effective_workers == 2  # ... capped by the ask
    assert iter_image_batches(many, 32, batch_size=1, num_workers=0).effective_workers == 0


def test_all_bad_batch_is_not_yielded(image_folder):
    _, truncated, not_image = image_folder
    batches = iter_image_batches([truncated, not_image], 32, batch_size=2, on_bad_image="skip")
    assert list(batches) == [] and batches.skipped_indices == [0, 1]


def test_dataset_item_and_options(image_folder):
    paths, truncated, _ = image_folder
    dataset = ImageFileDataset([paths[0], truncated], 16)
    image, index, error = dataset[0]
    assert image.shape == (3, 16, 16) and index == 0 and error is None
    image, index, error = dataset[1]
    assert image is None and index == 1 and str(truncated) in error
    with pytest.raises(ConfigError, match="on_bad_image"):
        iter_image_batches(paths, 16, on_bad_image="ignore")
    with pytest.raises(ConfigError, match="image size"):
        ImageFileDataset(paths, (0, 16))
    with pytest.raises(ImageDecodeError, match="missing.jpg"):
        decode_image(paths[0].parent / "missing.jpg", 16)

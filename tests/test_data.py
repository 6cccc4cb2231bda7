"""Input pipeline on real images: decoding, paper 001 preprocessing, Mixup/CutMix."""
import glob
import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import shared_path, undecodable_files
from efficientnet_ipu import config as config_lib
from efficientnet_ipu import data


def test_train_preprocess_crops_and_resizes_real_jpeg(imagenet_images):
    augment = config_lib.base_config().augment
    encoded = tf.io.read_file(imagenet_images[0])
    full = tf.io.decode_jpeg(encoded, channels=3)
    outs = [data.train_preprocess(encoded, 96, augment, [7, i]).numpy() for i in range(4)]
    for out in outs:
        assert out.shape == (96, 96, 3) and out.dtype == np.float32
        assert 0 <= out.min() and out.max() <= 255 and out.std() > 1
    assert not np.allclose(outs[0], outs[1])  # crops of different seeds differ
    # The seed fixes the crop and the flip.
    np.testing.assert_array_equal(data.train_preprocess(encoded, 96, augment, [7, 0]), outs[0])
    # Decoded (uint8) input gives the same crop as encoded bytes (decoded in the window).
    np.testing.assert_allclose(data.train_preprocess(full, 96, augment, [7, 0]), outs[0],
                               atol=1e-3)


def test_eval_preprocess_is_resize_then_centre_crop(imagenet_images):
    encoded = tf.io.read_file(imagenet_images[1])
    full = tf.cast(tf.io.decode_jpeg(encoded, channels=3), tf.float32)
    out = data.eval_preprocess(encoded, 224).numpy()
    h, w = full.shape[:2]
    scale = 256 / min(h, w)
    nh, nw = round(h * scale), round(w * scale)
    expected = tf.image.resize(full, (nh, nw))[(nh - 224) // 2:(nh - 224) // 2 + 224,
                                               (nw - 224) // 2:(nw - 224) // 2 + 224]
    np.testing.assert_allclose(out, np.clip(expected.numpy(), 0, 255), atol=1e-3)


def test_grayscale_jpeg_becomes_three_channels():
    folder = shared_path("imagenet_samples")
    gray = [p for p in sorted(glob.glob(os.path.join(folder, "*.JPEG")))
            if tf.io.decode_jpeg(tf.io.read_file(p)).shape[-1] == 1]
    assert gray, "the sample set has grayscale JPEGs"
    encoded = tf.io.read_file(gray[0])
    assert data.eval_preprocess(encoded, 64).shape == (64, 64, 3)
    assert data.train_preprocess(encoded, 64, config_lib.base_config().augment,
                                 [0, 0]).shape == (64, 64, 3)


def test_mixup_and_cutmix_mix_images_and_labels_consistently():
    rng = np.random.default_rng(0)
    images = tf.constant(rng.uniform(0, 255, (6, 16, 16, 3)).astype(np.float32))
    labels = tf.constant([0, 1, 2, 3, 4, 5])
    mixed, soft = data.mix_batch(images, labels, 10, mixup_alpha=0.2, cutmix_lambda=0.0,
                                 seed=[0, 1])
    soft = soft.numpy()
    np.testing.assert_allclose(soft.sum(-1), 1.0, rtol=1e-6)
    m = soft[0, 0]
    assert 0.5 <= m <= 1.0
    np.testing.assert_allclose(mixed.numpy()[0], m * images.numpy()[0] + (1 - m) *
                               images.numpy()[5], rtol=1e-4, atol=1e-3)
    cut, soft = data.mix_batch(images, labels, 10, mixup_alpha=0.0, cutmix_lambda=0.75,
                               cutmix_sampling="fixed", seed=[0, 2])
    pasted = np.mean(np.any(cut.numpy()[0] != images.numpy()[0], axis=-1))
    assert pasted == pytest.approx(0.25, abs=0.01)           # (1 - lambda) of the area
    assert soft.numpy()[0, 4] == pytest.approx(pasted, abs=1e-6)  # batch rolled by 2


def test_digits_source_is_real_and_split():
    source = data.open_source(_dataset("digits"))
    assert (source.num_train, source.num_eval, source.num_classes) == (1437, 360, 10)
    images, labels, keys = next(iter(source.train().batch(1437)))
    assert len(set(keys.numpy())) == 1437  # each example named for warnings
    assert images.shape == (1437, 8, 8, 3) and images.dtype == tf.uint8
    assert set(np.unique(labels.numpy())) == set(range(10))


def _dataset(name, **fields):
    c = config_lib.base_config()
    c.dataset.name = name
    for key, value in fields.items():
        c.dataset[key] = value
    return c.dataset


def test_unknown_and_unprepared_datasets_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="not a known dataset"):
        data.open_source(_dataset("no_such_dataset_xyz"))
    with pytest.raises(ValueError, match="not prepared.*never downloads.*tfds build cifar10"):
        data.open_source(_dataset("cifar10", data_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="manual_dir"):
        data.open_source(_dataset("imagenet2012", data_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="does not exist"):
        data.open_source(_dataset("image_folder:" + str(tmp_path / "missing")))


def test_image_folder_on_real_cifar10_jpegs():
    root = shared_path("cifar10_jpg")
    source = data.open_source(_dataset("image_folder:" + root, train_split="test",
                                       eval_split="test"))
    assert source.num_classes == 10 and source.class_names[0] == "airplane"
    with pytest.raises(ValueError, match="not a split"):
        data.open_source(_dataset("image_folder:" + root, train_split="train"))


def test_undecodable_images_are_dropped_in_order_and_named(tmp_path):
    """Real CIFAR-10 JPEGs with bad files among them, over two chunks of ``map_images``:
    exactly the good images come out, in the source's order, and each bad one is named."""
    cifar = os.path.join(shared_path("cifar10_jpg"), "test", "ship")
    folder = tmp_path / "val" / "ship"
    folder.mkdir(parents=True)
    names = sorted(os.listdir(cifar))[:40]
    for name in names:
        (folder / name).write_bytes(open(os.path.join(cifar, name), "rb").read())
    jpeg = open(os.path.join(cifar, names[0]), "rb").read()
    bad = {"%s_%s" % (prefix, name): content for prefix, (name, content)
           in zip("abcd", undecodable_files(jpeg).items())}
    bad["e_cut.jpg"] = jpeg[:300]
    for name, content in bad.items():
        (folder / name).write_bytes(content)
    dataset = _dataset("image_folder:" + str(tmp_path), train_split="val", eval_split="val")
    config = config_lib.base_config()
    config.dataset = dataset
    config.image_size.eval = 24
    source = data.open_source(dataset)
    order = [key.decode() for _, _, key in source.eval().as_numpy_iterator()]
    good = [key for key in order if os.path.basename(key) in names]
    images = np.concatenate([x for x, _ in data.eval_dataset(source, config, 16)])
    expected = np.stack([data.eval_preprocess(tf.io.read_file(k), 24) for k in good])
    np.testing.assert_array_equal(images, expected)
    log = source.bad_images.summary()
    assert log["skipped"] == 5
    assert set(log["files"]) == {"val: %s" % (folder / name) for name in bad}
    assert log["files"]["val: %s" % (folder / "c_empty.jpg")] == "Input is empty."
    strict = data.open_source(_dataset("image_folder:" + str(tmp_path), train_split="val",
                                       eval_split="val", strict=True))
    with pytest.raises(data.BadImageError, match=r"undecodable image .*/[a-e]_[a-z]+\.jpg "
                       r"in the val split .*config\.dataset\.strict=True"):
        with data.bad_image_errors(strict):
            for _ in data.eval_dataset(strict, config, 16):
                pass

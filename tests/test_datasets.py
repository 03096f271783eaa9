"""Dataset loaders: real parsing code on files the tests write, and the real Fashion-MNIST."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest

from conftest import FASHION_DIR, require_fashion_mnist, write_cifar_dataset, write_idx, write_idx_dataset
from fedconv.data.datasets import DatasetError, _fingerprint, load_dataset


def idx_cfg(directory: Path, cache: str, name: str = "mnist") -> dict:
    return {"name": name, "data_dir": str(directory), "download": False, "cache_dir": cache}


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path: Path, cache_dir: str, gz: bool) -> None:
    arrays = write_idx_dataset(tmp_path / "mnist", gz=gz)
    ds = load_dataset(idx_cfg(tmp_path / "mnist", cache_dir))
    assert ds.train_x.shape == (60, 1, 28, 28) and ds.train_x.dtype == np.uint8
    assert ds.train_y.dtype == np.int64 and ds.test_x.shape == (20, 1, 28, 28)
    np.testing.assert_array_equal(ds.train_x[:, 0], arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(ds.test_y, arrays["t10k-labels-idx1-ubyte"])
    assert ds.num_classes == 10 and ds.input_shape == (1, 28, 28)


def test_normalization_stats_come_from_the_training_set(tmp_path: Path, cache_dir: str) -> None:
    arrays = write_idx_dataset(tmp_path / "d")
    ds = load_dataset(idx_cfg(tmp_path / "d", cache_dir))
    x = arrays["train-images-idx3-ubyte"] / 255.0
    assert ds.mean[0] == pytest.approx(x.mean(), rel=1e-9)
    assert ds.std[0] == pytest.approx(x.std(), rel=1e-6)


def test_parsed_once_then_memory_mapped(tmp_path: Path, cache_dir: str) -> None:
    write_idx_dataset(tmp_path / "d")
    load_dataset(idx_cfg(tmp_path / "d", cache_dir))
    again = load_dataset(idx_cfg(tmp_path / "d", cache_dir))
    assert isinstance(again.train_x, np.memmap)
    assert len(list(Path(cache_dir).glob("mnist-*/train_x.npy"))) == 1


def test_bad_magic_names_the_file(tmp_path: Path, cache_dir: str) -> None:
    write_idx_dataset(tmp_path / "d")
    bad = tmp_path / "d" / "train-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(bad.read_bytes()))
    raw[2] = 0x0D  # float type code instead of unsigned byte
    bad.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DatasetError, match=r"train-labels-idx1-ubyte.gz: bad IDX magic number"):
        load_dataset(idx_cfg(tmp_path / "d", cache_dir))


def test_truncated_file_names_the_file(tmp_path: Path, cache_dir: str) -> None:
    write_idx_dataset(tmp_path / "d", gz=False)
    bad = tmp_path / "d" / "t10k-images-idx3-ubyte"
    bad.write_bytes(bad.read_bytes()[:-100])
    with pytest.raises(DatasetError, match=r"t10k-images-idx3-ubyte: wrong length"):
        load_dataset(idx_cfg(tmp_path / "d", cache_dir))


def test_truncated_gzip_names_the_file(tmp_path: Path, cache_dir: str) -> None:
    write_idx_dataset(tmp_path / "d")
    bad = tmp_path / "d" / "train-images-idx3-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:50])
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte.gz"):
        load_dataset(idx_cfg(tmp_path / "d", cache_dir))


def test_image_label_count_mismatch(tmp_path: Path, cache_dir: str) -> None:
    write_idx_dataset(tmp_path / "d")
    write_idx(tmp_path / "d" / "train-labels-idx1-ubyte", np.zeros(59, np.uint8))
    with pytest.raises(DatasetError, match=r"59 labels for 60 images"):
        load_dataset(idx_cfg(tmp_path / "d", cache_dir))


def test_label_out_of_range(tmp_path: Path, cache_dir: str) -> None:
    write_idx_dataset(tmp_path / "d")
    write_idx(tmp_path / "d" / "t10k-labels-idx1-ubyte", np.full(20, 12, np.uint8))
    with pytest.raises(DatasetError, match=r"t10k-labels-idx1-ubyte.gz: label 12 out of range"):
        load_dataset(idx_cfg(tmp_path / "d", cache_dir))


def test_missing_dataset_says_where_it_looked_and_how_to_get_it(tmp_path: Path, cache_dir: str, monkeypatch) -> None:
    monkeypatch.setenv("FEDCONV_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(DatasetError) as err:
        load_dataset({"name": "mnist", "data_dir": str(tmp_path / "empty"), "cache_dir": cache_dir})
    msg = str(err.value)
    assert str(tmp_path / "empty") in msg and "FEDCONV_DATA" in msg and "dataset.download=true" in msg


def test_env_var_is_searched(tmp_path: Path, cache_dir: str, monkeypatch) -> None:
    write_idx_dataset(tmp_path / "store" / "mnist")
    monkeypatch.setenv("FEDCONV_DATA", str(tmp_path / "store"))
    assert load_dataset({"name": "mnist", "cache_dir": cache_dir}).train_x.shape[0] == 60


def test_unknown_dataset_name() -> None:
    with pytest.raises(DatasetError, match="dataset.name: unknown dataset 'svhn'"):
        load_dataset({"name": "svhn"})


def test_cifar_pickle_batches(tmp_path: Path, cache_dir: str) -> None:
    written = write_cifar_dataset(tmp_path / "c")
    ds = load_dataset({"name": "cifar10", "data_dir": str(tmp_path / "c"), "cache_dir": cache_dir})
    assert ds.train_x.shape == (100, 3, 32, 32) and ds.test_x.shape == (20, 3, 32, 32)
    assert ds.input_shape == (3, 32, 32) and len(ds.mean) == 3
    data, labels = written["data_batch_2"]
    np.testing.assert_array_equal(ds.train_x[20:40].reshape(20, -1), data)
    np.testing.assert_array_equal(ds.train_y[20:40], labels)


def test_cifar_refuses_arbitrary_pickles(tmp_path: Path, cache_dir: str) -> None:
    write_cifar_dataset(tmp_path / "c")
    evil = tmp_path / "c" / "cifar-10-batches-py" / "test_batch"
    evil.write_bytes(pickle.dumps({b"data": print, b"labels": []}))
    with pytest.raises(DatasetError, match=r"test_batch: not a valid CIFAR-10 python batch .*forbidden global"):
        load_dataset({"name": "cifar10", "data_dir": str(tmp_path / "c"), "cache_dir": cache_dir})


def test_cifar_wrong_shape(tmp_path: Path, cache_dir: str) -> None:
    write_cifar_dataset(tmp_path / "c")
    bad = tmp_path / "c" / "cifar-10-batches-py" / "data_batch_3"
    bad.write_bytes(pickle.dumps({b"data": np.zeros((5, 100), np.uint8), b"labels": [0] * 5}))
    with pytest.raises(DatasetError, match=r"data_batch_3: CIFAR-10 batch has data shape \(5, 100\)"):
        load_dataset({"name": "cifar10", "data_dir": str(tmp_path / "c"), "cache_dir": cache_dir})


def test_digits_is_real_and_split_80_20() -> None:
    ds = load_dataset({"name": "digits", "test_fraction": 0.2, "split_seed": 0})
    assert len(ds.train_y) + len(ds.test_y) == 1797
    assert len(ds.test_y) == 359
    assert ds.input_shape == (1, 8, 8) and ds.train_x.max() == 255
    again = load_dataset({"name": "digits", "test_fraction": 0.2, "split_seed": 0})
    np.testing.assert_array_equal(ds.test_y, again.test_y)


def test_digits_are_scikit_learns_own() -> None:
    """fedconv reads scikit-learn's file without importing scikit-learn: the same 1,797 images
    and labels as ``load_digits`` (pixels 0..16 scaled to 0..255), each once."""
    from collections import Counter

    from sklearn.datasets import load_digits

    bunch = load_digits()
    ds = load_dataset({"name": "digits", "test_fraction": 0.2, "split_seed": 3})
    pixels = np.concatenate([ds.train_x, ds.test_x])[:, 0].astype(np.float64)
    assert set(np.unique(pixels)) <= {round(v * 255 / 16) for v in range(17)}
    ours = Counter((np.rint(img * 16 / 255).astype(np.uint8).tobytes(), int(y))
                   for img, y in zip(pixels, np.concatenate([ds.train_y, ds.test_y]), strict=True))
    theirs = Counter((img.astype(np.uint8).tobytes(), int(y)) for img, y in zip(bunch.images, bunch.target, strict=True))
    assert ours == theirs and sum(ours.values()) == 1797


def test_real_fashion_mnist(cache_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    require_fashion_mnist()
    monkeypatch.delenv("FEDCONV_DATA", raising=False)  # only the Debian location is left to search
    ds = load_dataset({"name": "fashion_mnist", "data_dir": "", "cache_dir": cache_dir})
    assert ds.train_x.shape == (60000, 1, 28, 28) and ds.test_x.shape == (10000, 1, 28, 28)
    assert ds.train_x.dtype == np.uint8 and ds.train_y.dtype == np.int64
    assert np.bincount(ds.train_y).tolist() == [6000] * 10
    assert np.bincount(ds.test_y).tolist() == [1000] * 10
    assert 0.27 < ds.mean[0] < 0.30 and 0.34 < ds.std[0] < 0.37
    # found through the Debian location: the cache entry is keyed by the files it was parsed from
    debian_files = sorted(FASHION_DIR.glob("*-ubyte.gz"))
    assert len(debian_files) == 4
    [entry] = [p.name for p in Path(cache_dir).iterdir()]
    assert entry == f"fashion_mnist-{_fingerprint(debian_files)}"


def test_idx_writer_bytes(tmp_path: Path) -> None:
    """The IDX writer every test and device folder uses, against a file spelled out by hand:
    magic 0x00000802 (unsigned bytes, 2 dims), dims 2 and 3 big-endian, then the bytes."""
    from fedconv.data.datasets import encode_idx

    array = np.array([[1, 2, 3], [4, 5, 255]], dtype=np.uint8)
    assert encode_idx(array) == bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4, 5, 255])
    path = write_idx(tmp_path / "x-idx2-ubyte", array)
    assert gzip.decompress(path.read_bytes()) == encode_idx(array)

"""sklearn_cim.datasets: idx files, coloured digits/MNIST, Waterbirds and CelebA folders."""

import os

import numpy as np
import pytest
from PIL import Image

from sklearn_cim.datasets import (
    PALETTE,
    add_nuisance,
    load_celeba,
    load_colored_mnist,
    load_waterbirds,
    make_colored_digits,
    read_idx,
)

BUNCH_KEYS = {
    "X_train", "y_train", "nuisance_train", "groups_train", "X_test_id", "nuisance_test_id",
    "groups_test_id", "X_test_ood", "nuisance_test_ood", "groups_test_ood", "y_test",
    "X_train_clean", "X_test_clean", "nuisance", "p_train", "shift", "DESCR",
}
REAL_MNIST = "/work/shared/data/mnist"


@pytest.fixture
def write_mnist(write_idx):
    def write(root, split, n, pixel, gz=False, stems=("images", "labels")):
        """n images (10 per class when n=100) of constant value ``pixel``."""
        labels = np.arange(n) % 10
        images = np.full((n, 28, 28), pixel, dtype=np.uint8)
        ext = ".gz" if gz else ""
        if "images" in stems:
            write_idx(os.path.join(root, f"{split}-images-idx3-ubyte{ext}"), images, gz)
        if "labels" in stems:
            write_idx(os.path.join(root, f"{split}-labels-idx1-ubyte{ext}"), labels, gz)
    return write


# -- read_idx ----------------------------------------------------------------
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trip(tmp_path, gz, write_idx):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / ("x-idx3-ubyte" + (".gz" if gz else ""))
    write_idx(path, images, gz)
    out = read_idx(path)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, images)
    out[0, 0, 0] = 99  # a writable copy, not a view of the file's bytes


def test_read_idx_other_dtypes(tmp_path, idx_bytes):
    values = np.array([[1.5, -2.0], [3.25, 0.0]])
    (tmp_path / "f").write_bytes(idx_bytes(values, code=0x0D, dtype=">f4"))
    out = read_idx(tmp_path / "f")
    assert out.dtype == np.float32 and out.dtype.byteorder in "=|<"
    np.testing.assert_array_equal(out, values)


def test_read_idx_bad_magic_and_truncation(tmp_path, idx_bytes):
    (tmp_path / "png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(20))
    with pytest.raises(ValueError, match="not an idx file"):
        read_idx(tmp_path / "png")
    (tmp_path / "short").write_bytes(idx_bytes(np.zeros((5, 4), np.uint8))[:-3])
    with pytest.raises(ValueError, match=r"truncated.*\(5, 4\)"):
        read_idx(tmp_path / "short")


# -- load_colored_mnist -------------------------------------------------------
@pytest.mark.parametrize("gz", [False, True])
def test_load_colored_mnist_t10k_only_is_split(tmp_path, gz, write_mnist):
    write_mnist(tmp_path, "t10k", 100, pixel=0, gz=gz)
    data = load_colored_mnist(tmp_path)
    assert set(data) == BUNCH_KEYS
    assert data.X_train.shape == (80, 3, 28, 28) and data.X_test_id.shape == (20, 3, 28, 28)
    assert data.X_train.dtype == np.float32
    np.testing.assert_array_equal(np.bincount(data.y_test), [2] * 10)  # stratified
    assert len(data.groups_test_ood) == len(data.y_test) == 20


def test_load_colored_mnist_train_and_t10k(tmp_path, write_mnist):
    write_mnist(tmp_path, "train", 50, pixel=255, gz=True)
    write_mnist(tmp_path, "t10k", 30, pixel=0)
    data = load_colored_mnist(tmp_path)
    assert len(data.y_train) == 50 and len(data.y_test) == 30
    # The training set comes from the train files (white), the test set from t10k (black).
    assert (data.X_train_clean == 1).all() and (data.X_test_clean == 0.5).all()
    sub = load_colored_mnist(tmp_path, n_train=20)
    np.testing.assert_array_equal(np.bincount(sub.y_train), [2] * 10)
    assert len(sub.y_test) == 30
    with pytest.raises(ValueError, match=r"n_train must be an integer in \[1, 50\]"):
        load_colored_mnist(tmp_path, n_train=51)


def test_load_colored_mnist_missing_files(tmp_path, write_mnist):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_colored_mnist(tmp_path / "nowhere")
    write_mnist(tmp_path, "train", 20, pixel=0)
    with pytest.raises(FileNotFoundError) as info:
        load_colored_mnist(tmp_path)
    message = str(info.value)
    assert "t10k-images-idx3-ubyte[.gz]" in message and str(tmp_path) in message
    assert "train-labels-idx1-ubyte" in message  # lists all expected names
    write_mnist(tmp_path, "t10k", 20, pixel=0)
    os.remove(tmp_path / "train-labels-idx1-ubyte")
    with pytest.raises(FileNotFoundError, match="train-labels-idx1-ubyte.*must come together"):
        load_colored_mnist(tmp_path)


@pytest.mark.skipif(not os.path.isdir(REAL_MNIST), reason="MNIST t10k files not present")
def test_load_colored_mnist_real_t10k():
    labels = read_idx(os.path.join(REAL_MNIST, "t10k-labels-idx1-ubyte.gz"))
    np.testing.assert_array_equal(
        np.bincount(labels), [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])
    data = load_colored_mnist(REAL_MNIST, n_train=500)
    assert data.X_train.shape == (500, 3, 28, 28)
    assert data.X_test_ood.shape == (2000, 3, 28, 28)
    assert set(data.y_test) == set(range(10)) and abs(np.mean(data.y_test == 1) - 0.1135) < 0.01
    assert 0 <= data.X_train.min() and data.X_train.max() <= 1


# -- add_nuisance -------------------------------------------------------------
def test_add_nuisance_background_corner_none():
    grey = np.zeros((4, 10, 10), np.float32)
    grey[:, 4:6, 4:6] = 1.0  # a white stroke
    y = np.array([0, 1, 2, 13])
    X, index = add_nuisance(grey, y, p_agree=1.0)
    assert X.shape == (4, 3, 10, 10) and X.dtype == np.float32
    np.testing.assert_array_equal(index, [0, 1, 2, 3])  # y % 10
    np.testing.assert_allclose(X[:, :, 0, 0], PALETTE[index])
    assert (X[:, :, 4:6, 4:6] == 1).all()

    X, index = add_nuisance(grey, y, nuisance="corner", p_agree=1.0)
    np.testing.assert_allclose(X[:, :, :2, :2], np.broadcast_to(
        PALETTE[index][:, :, None, None], (4, 3, 2, 2)))  # side 10 // 5
    np.testing.assert_array_equal(X[:, :, 2:], np.repeat(grey[:, None, 2:], 3, axis=1))
    np.testing.assert_array_equal(X[:, :, :, 2:], np.repeat(grey[:, None, :, 2:], 3, axis=1))

    X, index = add_nuisance(grey, y, nuisance="none")
    assert (index == 0).all() and (X[:, :, 0, 0] == 0.5).all() and (X[:, :, 4, 4] == 1).all()


def test_add_nuisance_shifts():
    grey = np.zeros((2000, 5, 5), np.float32)
    y = np.arange(2000) % 10
    _, index = add_nuisance(grey, y, p_agree=0.0, shift="reversed", random_state=0)
    assert not (index == y).any() and set(index) == set(range(10))
    _, index = add_nuisance(grey, y, p_agree=0.0, shift="random", random_state=0)
    assert abs(np.mean(index == y) - 0.1) < 0.03
    _, index = add_nuisance(grey, y % 4, p_agree=0.0, shift="reversed", n_nuisances=4,
                            random_state=0)
    assert not (index == y % 4).any() and set(index) == {0, 1, 2, 3}


@pytest.mark.parametrize("kwargs, match", [
    (dict(nuisance="stripes"), "nuisance must be one of"),
    (dict(shift="up"), "shift must be one of"),
    (dict(p_agree=1.5), r"p_agree must be a number in \[0, 1\]"),
    (dict(n_nuisances=11), r"n_nuisances must be an integer in \[2, 10\]"),
])
def test_add_nuisance_bad_params(kwargs, match):
    with pytest.raises(ValueError, match=match):
        add_nuisance(np.zeros((2, 5, 5)), [0, 1], **kwargs)


def test_add_nuisance_bad_data():
    with pytest.raises(ValueError, match=r"shape \(n, H, W\).*grey\[:, 0\]"):
        add_nuisance(np.zeros((2, 1, 5, 5)), [0, 1])
    with pytest.raises(ValueError, match="divide 8-bit pixels by 255"):
        add_nuisance(np.full((2, 5, 5), 255.0), [0, 1])
    with pytest.raises(ValueError, match="LabelEncoder"):
        add_nuisance(np.zeros((2, 5, 5)), ["a", "b"])
    with pytest.raises(ValueError, match=r"one label per image"):
        add_nuisance(np.zeros((2, 5, 5)), [0, 1, 2])


# -- make_colored_digits ------------------------------------------------------
@pytest.fixture(scope="module")
def digits():
    return make_colored_digits(image_size=16)


def test_make_colored_digits_shapes(digits):
    assert set(digits) == BUNCH_KEYS
    assert digits.X_train.shape == (1257, 3, 16, 16)
    for key in ("X_test_id", "X_test_ood", "X_test_clean"):
        assert digits[key].shape == (540, 3, 16, 16)
    for key in ("X_train", "X_test_id", "X_test_ood", "X_train_clean", "X_test_clean"):
        X = digits[key]
        assert X.dtype == np.float32 and X.min() >= 0 and X.max() <= 1
    for key in ("y_train", "groups_train", "groups_test_id", "groups_test_ood", "y_test"):
        assert digits[key].dtype.kind == "i"
    assert digits.nuisance == "background" and digits.p_train == 0.95
    assert "groups = y * 10" in digits.DESCR
    assert make_colored_digits().X_train.shape == (1257, 3, 32, 32)


def test_make_colored_digits_groups_and_agreement(digits):
    for X, y, groups in [(digits.X_train, digits.y_train, digits.groups_train),
                         (digits.X_test_id, digits.y_test, digits.groups_test_id),
                         (digits.X_test_ood, digits.y_test, digits.groups_test_ood)]:
        np.testing.assert_array_equal(groups // 10, y)
        # The digits' corner pixel is 0, so it shows the background colour.
        np.testing.assert_allclose(X[:, :, 0, 0], PALETTE[groups % 10], atol=1e-6)
    # Fixed seed: these fractions are deterministic; the tolerances are ~4 std.
    assert abs(np.mean(digits.groups_train % 10 == digits.y_train) - 0.95) < 0.03
    assert abs(np.mean(digits.groups_test_id % 10 == digits.y_test) - 0.95) < 0.04
    assert abs(np.mean(digits.groups_test_ood % 10 == digits.y_test) - 0.1) < 0.05
    reversed_ = make_colored_digits(image_size=8, shift="reversed", p_train=1.0)
    assert (reversed_.groups_train % 10 == reversed_.y_train).all()
    assert not (reversed_.groups_test_ood % 10 == reversed_.y_test).any()


def test_make_colored_digits_clean_has_no_nuisance(digits):
    for X in (digits.X_train_clean, digits.X_test_clean):
        assert (X[:, 0] == X[:, 1]).all() and (X[:, 1] == X[:, 2]).all()  # no colour
        assert (X[:, :, 0, 0] == 0.5).all()  # mid-grey background
    # The same digits as the coloured images: where those are white, so are these.
    white = digits.X_train.min(axis=1) == 1
    assert white.any() and (digits.X_train_clean[:, 0][white] == 1).all()


def test_nuisance_is_the_attribute_and_groups_the_cells(digits):
    for split in ("train", "test_id", "test_ood"):
        nuisance = digits[f"nuisance_{split}"]
        y = digits.y_train if split == "train" else digits.y_test
        np.testing.assert_array_equal(digits[f"groups_{split}"], y * 10 + nuisance)
        assert nuisance.min() >= 0 and nuisance.max() < 10


def test_make_colored_digits_corner():
    data = make_colored_digits(nuisance="corner", image_size=20, test_size=0.5)
    side = 20 // 5
    np.testing.assert_allclose(
        data.X_train[:, :, :side, :side],
        np.broadcast_to(PALETTE[data.groups_train % 10][:, :, None, None],
                        (len(data.y_train), 3, side, side)))
    # Outside the patch, and everywhere in the clean images, the grey digit on 3 channels.
    clean = data.X_train_clean
    assert (clean[:, 0] == clean[:, 1]).all() and (clean[:, 1] == clean[:, 2]).all()
    np.testing.assert_array_equal(data.X_train[:, :, side:], clean[:, :, side:])
    np.testing.assert_array_equal(data.X_train[:, :, :, side:], clean[:, :, :, side:])
    assert not np.allclose(data.X_train[:, :, :side, :side], clean[:, :, :side, :side])


def test_marks_are_squares_of_the_nuisance_colour_off_the_digit_at_many_places():
    data = make_colored_digits(nuisance="mark", image_size=20, test_size=0.5)
    side = 20 // 5
    X, clean, colour = data.X_train, data.X_train_clean, data.groups_train % 10
    marked = np.abs(X - clean).max(axis=1) > 0
    corners, under = [], []
    for i in range(len(X)):
        rows, cols = np.nonzero(marked[i])
        r, c = rows.min(), cols.min()
        corners.append((r, c))
        # one side x side square (a mark colour may match a dark pixel's grey: at most)
        assert rows.max() < r + side and cols.max() < c + side
        np.testing.assert_allclose(X[i, :, r:r + side, c:c + side],
                                   np.broadcast_to(PALETTE[colour[i]][:, None, None],
                                                   (3, side, side)))
        under.append(clean[i, 0, r:r + side, c:c + side].max())
    # off the digit (an image with no dark square gets its darkest one)
    assert np.mean(np.array(under) <= 0.05) > 0.95 and max(under) < 0.2
    assert len(set(corners)) > 20  # it moves
    # the test split's marks are drawn the same way; the clean images carry none
    assert (np.abs(data.X_test_ood - data.X_test_clean).max(axis=1) > 0).any(axis=(1, 2)).all()


def test_make_colored_digits_none_and_seeds():
    data = make_colored_digits(nuisance="none", image_size=8)
    np.testing.assert_array_equal(data.groups_train, data.y_train * 10)
    np.testing.assert_array_equal(data.X_train, data.X_train_clean)
    a = make_colored_digits(image_size=8, random_state=3)
    b = make_colored_digits(image_size=8, random_state=3)
    c = make_colored_digits(image_size=8, random_state=4)
    for key in BUNCH_KEYS - {"nuisance", "p_train", "shift", "DESCR"}:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a.groups_train, c.groups_train)


def test_make_colored_digits_bad_params():
    with pytest.raises(ValueError, match="image_size must be an integer >= 8"):
        make_colored_digits(image_size=4)
    with pytest.raises(ValueError, match=r"p_train must be a number in \[0, 1\]"):
        make_colored_digits(p_train=-0.1)
    with pytest.raises(ValueError, match="shift must be one of"):
        make_colored_digits(shift="flip")


# -- Waterbirds ---------------------------------------------------------------
WATERBIRDS = [  # filename, y, split, place, colour
    ("001.Albatross/a.png", 1, 0, 1, (255, 0, 0)),
    ("001.Albatross/b.jpg", 1, 0, 0, (0, 255, 0)),
    ("002.Sparrow/c.png", 0, 1, 1, (0, 0, 255)),
    ("002.Sparrow/d.png", 0, 2, 0, (255, 255, 0)),
    ("002.Sparrow/e.jpg", 0, 2, 1, (0, 255, 255)),
]


@pytest.fixture
def waterbirds(tmp_path):
    lines = ["img_id,img_filename,y,split,place,place_filename"]
    for i, (name, y, split, place, colour) in enumerate(WATERBIRDS):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        Image.new("RGB", (30 + i, 20), colour).save(tmp_path / name)
        lines.append(f"{i + 1},{name},{y},{split},{place},/x/{i}.jpg")
    (tmp_path / "metadata.csv").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_load_waterbirds(waterbirds):
    data = load_waterbirds(waterbirds, size=16)
    assert data.X.shape == (5, 3, 16, 16) and data.X.dtype == np.uint8
    np.testing.assert_array_equal(data.y, [1, 1, 0, 0, 0])
    np.testing.assert_array_equal(data.groups, [3, 2, 1, 0, 1])
    np.testing.assert_array_equal(data.split, [0, 0, 1, 2, 2])
    assert list(data.filenames) == [row[0] for row in WATERBIRDS]
    # Solid images keep their colour through the resize (JPEG within its loss).
    np.testing.assert_array_equal(data.X[0], np.broadcast_to([[[255]], [[0]], [[0]]],
                                                             (3, 16, 16)))
    assert np.abs(data.X[1].astype(int) - [[[0]], [[255]], [[0]]]).max() <= 3

    assert list(load_waterbirds(waterbirds, size=8, splits=0).filenames) == \
        [r[0] for r in WATERBIRDS[:2]]
    test = load_waterbirds(waterbirds, size=8, splits=["val", "test"])
    np.testing.assert_array_equal(test.split, [1, 2, 2])
    assert test.X.shape == (3, 3, 8, 8)


def test_load_waterbirds_errors(waterbirds, tmp_path_factory):
    with pytest.raises(FileNotFoundError, match="metadata.csv.*img_filename, y, split, place"):
        load_waterbirds(tmp_path_factory.mktemp("empty"))
    with pytest.raises(ValueError, match="Unknown split 'dev'"):
        load_waterbirds(waterbirds, splits="dev")
    with pytest.raises(ValueError, match="size must be a positive integer"):
        load_waterbirds(waterbirds, size=0)
    os.remove(waterbirds / WATERBIRDS[3][0])
    with pytest.raises(FileNotFoundError, match="d.png"):
        load_waterbirds(waterbirds)
    (waterbirds / "metadata.csv").write_text("img_filename,y,split\na.png,0,0\n")
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['place'\]"):
        load_waterbirds(waterbirds)


# -- CelebA -------------------------------------------------------------------
CELEBA_ATTRS = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips "
    "Big_Nose Black_Hair Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin "
    "Eyeglasses Goatee Gray_Hair Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open "
    "Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose Receding_Hairline "
    "Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat "
    "Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young"
).split()
CELEBA = [  # Blond_Hair, Male, Smiling, split
    (1, 1, 1, 0), (1, -1, -1, 0), (-1, 1, 1, 0), (-1, -1, 1, 1), (1, -1, -1, 2), (-1, 1, 1, 2),
]


@pytest.fixture
def celeba(tmp_path):
    (tmp_path / "img_align_celeba").mkdir()
    attr_lines, part_lines = [str(len(CELEBA)), " ".join(CELEBA_ATTRS) + " "], []
    for i, (blond, male, smiling, split) in enumerate(CELEBA):
        name = f"{i + 1:06d}.jpg"
        Image.new("RGB", (178, 218), (10 * i, 0, 0)).save(tmp_path / "img_align_celeba" / name)
        values = [-1] * 40
        for attr, v in (("Blond_Hair", blond), ("Male", male), ("Smiling", smiling)):
            values[CELEBA_ATTRS.index(attr)] = v
        attr_lines.append(name + " " + " ".join(f"{v:2d}" for v in values))  # " 1", "-1"
        part_lines.append(f"{name} {split}")
    (tmp_path / "list_attr_celeba.txt").write_text("\n".join(attr_lines) + "\n")
    (tmp_path / "list_eval_partition.txt").write_text("\n".join(part_lines) + "\n")
    return tmp_path


def test_load_celeba(celeba):
    data = load_celeba(celeba, size=12)
    assert data.X.shape == (6, 3, 12, 12) and data.X.dtype == np.uint8
    np.testing.assert_array_equal(data.y, [1, 1, 0, 0, 1, 0])
    np.testing.assert_array_equal(data.groups, [3, 2, 1, 0, 2, 1])
    np.testing.assert_array_equal(data.split, [0, 0, 0, 1, 2, 2])
    assert data.filenames[0] == "000001.jpg"
    assert abs(int(data.X[5, 0].mean()) - 50) <= 3 and data.X[5, 1:].max() <= 3  # red 50

    smiling = load_celeba(celeba, target="Smiling", group_attr="Blond_Hair", size=8,
                          splits="train")
    np.testing.assert_array_equal(smiling.y, [1, 0, 1])
    np.testing.assert_array_equal(smiling.groups, [3, 1, 2])
    first = load_celeba(celeba, size=8, splits=[0, 2], max_samples=4)
    np.testing.assert_array_equal(first.split, [0, 0, 0, 2])
    assert first.X.shape == (4, 3, 8, 8)


def test_load_celeba_errors(celeba):
    with pytest.raises(ValueError, match="Unknown target attribute 'Blonde'.*Blond_Hair"):
        load_celeba(celeba, target="Blonde")
    with pytest.raises(ValueError, match="Unknown group_attr attribute 'male'.*Young"):
        load_celeba(celeba, group_attr="male")
    with pytest.raises(ValueError, match="max_samples must be a positive integer"):
        load_celeba(celeba, max_samples=0)
    os.remove(celeba / "img_align_celeba" / "000003.jpg")
    with pytest.raises(FileNotFoundError, match="000003.jpg"):
        load_celeba(celeba)
    os.remove(celeba / "list_eval_partition.txt")
    with pytest.raises(FileNotFoundError, match="list_eval_partition.txt.*img_align_celeba"):
        load_celeba(celeba)


def test_agreement_groups_by_hand():
    from sklearn_cim.datasets import agreement_groups

    y = np.array([0, 0, 3, 3, 9])
    groups = np.array([0, 7, 33, 31, 99])  # nuisance 0 (agrees), 7, 3 (agrees), 1, 9 (agrees)
    assert agreement_groups(y, groups).tolist() == [1, 0, 7, 6, 19]
    data = make_colored_digits(random_state=0)
    coarse = agreement_groups(data.y_train, data.groups_train)
    agree = coarse % 2 == 1
    assert agree.mean() == pytest.approx(data.p_train, abs=0.02)

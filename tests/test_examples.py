"""Each example in examples/ runs end to end with its --quick settings.

The examples are loaded from their files (they are scripts, not a package) and
their ``main(argv)`` is called in-process; the data roots they can take are
replaced by tiny files written here.
"""

import csv
import gzip
import importlib.util
import pathlib
import struct

import numpy as np
import pytest
import sklearn
from threadpoolctl import threadpool_limits

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def load_example(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def table_rows(printed):
    """First cells of the markdown table rows after the header and separator."""
    lines = [line for line in printed.splitlines() if line.startswith("| ")]
    return [line.split(" | ")[0][2:] for line in lines[1:]]


@pytest.fixture(autouse=True)
def _needs_matplotlib():
    pytest.importorskip("matplotlib")


@pytest.fixture(autouse=True)
def _single_threaded_blas():
    # The examples' logistic regressions are tiny; a multi-threaded OpenBLAS fit
    # of them on 2 busy cores took seconds instead of milliseconds.
    with threadpool_limits(1, user_api="blas"):
        yield


def write_idx(path, array):
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def test_every_example_is_tested():
    tested = {"plot_nuisance_background_mnist", "plot_color_shift_ood",
              "plot_subgroups_waterbirds_celeba", "plot_cim_vib_vs_vib",
              "plot_grid_search_worst_group", "plot_cim_then_cnn"}
    assert {p.stem for p in EXAMPLES.glob("*.py")} == tested


def test_nuisance_background_without_root_uses_digits(tmp_path, capsys):
    out = tmp_path / "masks.png"
    rows = load_example("plot_nuisance_background_mnist").main(["--quick", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "no --root given: using make_colored_digits" in printed
    assert table_rows(printed) == ["ERM (LR on pixels)", "CIM -> LR", "oracle (no nuisance)"]
    assert [r[0] for r in rows] == table_rows(printed)
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_nuisance_background_reads_mnist_idx_root(tmp_path, capsys):
    # A fake MNIST: 300 8x8 "digits" (a bright square whose position is the label).
    rng = np.random.RandomState(0)
    y = np.arange(300) % 10
    images = (rng.rand(300, 8, 8) * 40).astype(np.uint8)
    for i, label in enumerate(y):
        images[i, label % 4 * 2:label % 4 * 2 + 2, label // 4 * 2:label // 4 * 2 + 3] = 255
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", y)
    example = load_example("plot_nuisance_background_mnist")
    rows = example.main(["--quick", "--root", str(tmp_path), "--out", str(tmp_path / "m.png")])
    printed = capsys.readouterr().out
    assert "no --root" not in printed
    assert "200 train / 60 test images of shape (3, 8, 8)" in printed
    assert len(rows) == 3 and all(0 <= r[1] <= 1 for r in rows)


def test_color_shift_scores_both_shifts(tmp_path, capsys):
    out = tmp_path / "shift.png"
    results = load_example("plot_color_shift_ood").main(["--quick", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "shift='reversed': colour agrees with the label for 0.0% of images" in printed
    assert table_rows(printed) == list(results)
    for name in ("ERM (LR on pixels)", "CIM -> LR"):
        scores = results[name]
        assert set(scores) == {"in-distribution", "OOD random", "worst-group random",
                               "OOD reversed", "worst-group reversed"}
        assert all(0 <= v <= 1 for v in scores.values())
    oracle = results["oracle (no nuisance)"]
    assert oracle["in-distribution"] == oracle["OOD random"] == oracle["OOD reversed"]
    assert out.exists()


def test_subgroups_without_root_says_what_it_needs(capsys):
    assert load_example("plot_subgroups_waterbirds_celeba").main([]) is None
    printed = capsys.readouterr().out
    assert "--waterbirds ROOT" in printed and "--celeba ROOT" in printed


def _fake_images(folder, names, rng):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.fromarray((rng.rand(10, 10, 3) * 255).astype(np.uint8)).save(folder / name)


def test_subgroups_on_fake_waterbirds(tmp_path, capsys):
    rng = np.random.RandomState(0)
    rows = [dict(img_filename=f"birds/{i:03d}.png", y=i % 2, place=(i // 2) % 2,
                 split=2 if i >= 48 else 0) for i in range(80)]
    _fake_images(tmp_path / "birds", [r["img_filename"][6:] for r in rows], rng)
    with open(tmp_path / "metadata.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["img_filename", "y", "split", "place"])
        writer.writeheader()
        writer.writerows(rows)
    results = load_example("plot_subgroups_waterbirds_celeba").main(
        ["--quick", "--waterbirds", str(tmp_path)])
    printed = capsys.readouterr().out
    assert "Waterbirds: 48 train / 32 test images (3, 8, 8)" in printed
    assert table_rows(printed) == ["LR on pixels", "CIM -> LR"]
    assert "| model | landbird, land | landbird, water | waterbird, land | waterbird, water |" \
        in printed
    for acc in results.values():
        assert acc["worst"] == min(acc[g] for g in range(4)) <= acc["mean"]


def test_subgroups_on_fake_celeba(tmp_path, capsys):
    rng = np.random.RandomState(1)
    names = [f"{i:06d}.jpg" for i in range(60)]
    _fake_images(tmp_path / "img_align_celeba", names, rng)
    blond, male = np.arange(60) % 2 * 2 - 1, (np.arange(60) // 2) % 2 * 2 - 1
    with open(tmp_path / "list_attr_celeba.txt", "w") as f:
        f.write("60\nBlond_Hair Male\n")
        f.writelines(f"{n} {b} {m}\n" for n, b, m in zip(names, blond, male))
    with open(tmp_path / "list_eval_partition.txt", "w") as f:
        f.writelines(f"{n} {0 if i < 40 else 2}\n" for i, n in enumerate(names))
    load_example("plot_subgroups_waterbirds_celeba").main(["--quick", "--celeba", str(tmp_path)])
    printed = capsys.readouterr().out
    assert "CelebA: 40 train / 20 test" in printed
    assert "Blond_Hair=1, Male=1" in printed
    assert table_rows(printed) == ["LR on pixels", "CIM -> LR"]


def test_cim_vib_vs_vib(tmp_path, capsys):
    out = tmp_path / "history.png"
    fitted = load_example("plot_cim_vib_vs_vib").main(["--quick", "--out", str(out)])
    printed = capsys.readouterr().out
    assert table_rows(printed) == ["VIB (pixels)", "CIM -> VIB (two-stage)",
                                   "CIM+VIB (joint) -> VIB"]
    joint = fitted["CIM+VIB (joint) -> VIB"].named_steps["cim"]
    assert joint.head == "vib" and "train_kl" in joint.history_[-1]
    assert fitted["CIM -> VIB (two-stage)"].named_steps["cim"].head == "cnn"
    assert out.exists()


def test_cim_then_skorch_cnn(capsys):
    """A skorch CNN takes the CIM's 4-D output in one pipeline."""
    results = load_example("plot_cim_then_cnn").main(["--quick"])
    printed = capsys.readouterr().out
    assert table_rows(printed) == ["CNN on pixels (ERM)", "group CIM -> CNN",
                                   "oracle CNN (no mark)"]
    assert all(0 <= v <= 1 for pair in results.values() for v in pair)
    assert "removal check" in printed


def test_grid_search_routes_groups_to_the_scorer(tmp_path, capsys):
    search = load_example("plot_grid_search_worst_group").main(
        ["--quick", "--margins", "0.1", "--out", str(tmp_path / "grid.png")])
    printed = capsys.readouterr().out
    assert len(search.cv_results_["params"]) == 2
    worst = np.asarray(search.cv_results_["mean_test_worst_group"])
    assert np.isfinite(worst).all()
    assert (worst <= np.asarray(search.cv_results_["mean_test_accuracy"]) + 1e-12).all()
    assert search.best_params_["cim__triplet_weight"] in (0.0, 1.0)
    assert search.best_estimator_.named_steps["cim"].group_aware_
    assert "best by worst-group accuracy" in printed
    # The example enables metadata routing only inside a config_context.
    assert sklearn.get_config()["enable_metadata_routing"] is False


def test_grid_search_trunk_probe_needs_no_lucky_first_rows():
    # The full (non --quick) run probes the pretrained trunk with a one-epoch fit
    # before the search; that probe once took the first 8 images, which need not
    # hold 2 of any class, and the triplet check failed with a ValueError instead
    # of telling whether the trunk is available.
    example = load_example("plot_grid_search_worst_group")
    rng = np.random.RandomState(0)
    X = rng.rand(12, 3 * 8 * 8).astype(np.float32)
    y = np.array([0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 0, 1])  # no class twice in the first 8
    assert example.pretrained_trunk_available(X, y, (3, 8, 8)) in (True, False)

"""Each example in examples/ runs end to end with its --quick settings and
shows what it claims: every net it trains has finite losses, and its models
score well above chance (on 10 digits, 0.1; on 2 classes, 0.5).

The examples are loaded from their files (they are scripts, not a package) and
their ``main(argv)`` is called in-process; the data roots they can take are
replaced by tiny files written here.
"""

import csv
import functools
import importlib.util
import pathlib
import re

import numpy as np
import pytest
import sklearn
from skorch import NeuralNet
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


def table(printed):
    """The printed markdown table as {first cell: [the other cells as floats]}."""
    lines = [line for line in printed.splitlines() if line.startswith("| ")]
    return {cells[0]: [float(c) for c in cells[1:]]
            for cells in (line.strip("| ").split(" | ") for line in lines[1:])}


@pytest.fixture
def trained():
    """Every skorch net (the estimators' own nets, and the examples' skorch
    CNNs) that trains during the test, in order of its first training call."""
    nets = []
    real = NeuralNet.partial_fit

    @functools.wraps(real)
    def partial_fit(self, *args, **kwargs):
        if not any(net is self for net in nets):
            nets.append(self)
        return real(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(NeuralNet, "partial_fit", partial_fit)
        yield nets


def assert_trained(nets, count):
    """``count`` nets were trained, each for at least one epoch, with a finite
    loss in every epoch (skorch's NLLLoss on logits gave NaN from the first)."""
    assert len(nets) == count, [type(net).__name__ for net in nets]
    for net in nets:
        losses = net.history[:, "train_loss"]
        assert losses and np.isfinite(losses).all(), (type(net).__name__, losses)


@pytest.fixture(autouse=True)
def _needs_matplotlib():
    pytest.importorskip("matplotlib")


@pytest.fixture(autouse=True)
def _single_threaded_blas():
    # The examples' logistic regressions are tiny; a multi-threaded OpenBLAS fit
    # of them on 2 busy cores took seconds instead of milliseconds.
    with threadpool_limits(1, user_api="blas"):
        yield


def test_every_example_is_tested():
    tested = {"plot_nuisance_background_mnist", "plot_color_shift_ood",
              "plot_subgroups_waterbirds_celeba", "plot_cim_vib_vs_vib",
              "plot_grid_search_worst_group", "plot_cim_then_cnn"}
    assert {p.stem for p in EXAMPLES.glob("*.py")} == tested


def test_nuisance_background_without_root_uses_digits(tmp_path, capsys, trained):
    out = tmp_path / "masks.png"
    rows = load_example("plot_nuisance_background_mnist").main(["--quick", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "no --root given: using make_colored_digits" in printed
    assert table_rows(printed) == ["ERM (LR on pixels)", "CIM -> LR", "oracle (no nuisance)"]
    assert [r[0] for r in rows] == table_rows(printed)
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert_trained(trained, 1)  # the CIM
    (_, erm_id, erm_ood, *_), (_, cim_id, cim_ood, *_), (_, oracle_id, oracle_ood, *_) = rows
    assert min(erm_id, cim_id, oracle_id) > 0.8, rows  # 10 digits: chance is 0.1
    assert erm_ood < erm_id - 0.3, rows  # what the example shows: ERM leans on the colour
    assert cim_ood > 0.25 and oracle_ood == oracle_id, rows


def test_nuisance_background_reads_mnist_idx_root(tmp_path, capsys, trained, write_idx):
    # A fake MNIST: 300 8x8 "digits" (a bright square whose position is the label).
    rng = np.random.RandomState(0)
    y = np.arange(300) % 10
    images = (rng.rand(300, 8, 8) * 40).astype(np.uint8)
    for i, label in enumerate(y):
        images[i, label % 4 * 2:label % 4 * 2 + 2, label // 4 * 2:label // 4 * 2 + 3] = 255
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images, gz=True)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", y, gz=True)
    example = load_example("plot_nuisance_background_mnist")
    rows = example.main(["--quick", "--root", str(tmp_path), "--out", str(tmp_path / "m.png")])
    printed = capsys.readouterr().out
    assert "no --root" not in printed
    assert "200 train / 60 test images of shape (3, 8, 8)" in printed
    assert len(rows) == 3 and all(0 <= r[1] <= 1 for r in rows)
    assert_trained(trained, 1)
    assert min(r[1] for r in rows) > 0.5, rows  # the square's place is learnt (chance: 0.1)


def test_color_shift_scores_both_shifts(tmp_path, capsys, trained):
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
    assert_trained(trained, 1)
    assert min(scores["in-distribution"] for scores in results.values()) > 0.8, results
    erm = results["ERM (LR on pixels)"]  # misled by the colour under both shifts
    assert max(erm["OOD random"], erm["OOD reversed"]) < erm["in-distribution"] - 0.3, erm
    assert results["CIM -> LR"]["OOD random"] > 0.25, results


def test_subgroups_without_root_says_what_it_needs(capsys):
    assert load_example("plot_subgroups_waterbirds_celeba").main([]) is None
    printed = capsys.readouterr().out
    assert "--waterbirds ROOT" in printed and "--celeba ROOT" in printed


def _fake_images(folder, names, labels, rng):
    """Noise images whose brightness tells the label (0 dark, 1 bright)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for name, label in zip(names, labels):
        pixels = rng.rand(10, 10, 3) * 100 + 130 * label
        Image.fromarray(pixels.astype(np.uint8)).save(folder / name)


def test_subgroups_on_fake_waterbirds(tmp_path, capsys, trained):
    rng = np.random.RandomState(0)
    rows = [dict(img_filename=f"birds/{i:03d}.png", y=i % 2, place=(i // 2) % 2,
                 split=2 if i >= 48 else 0) for i in range(80)]
    _fake_images(tmp_path / "birds", [r["img_filename"][6:] for r in rows],
                 [r["y"] for r in rows], rng)
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
        assert acc["mean"] > 0.8, results  # 2 classes: chance is 0.5
    assert_trained(trained, 1)


def test_subgroups_on_fake_celeba(tmp_path, capsys, trained):
    rng = np.random.RandomState(1)
    names = [f"{i:06d}.jpg" for i in range(60)]
    blond, male = np.arange(60) % 2 * 2 - 1, (np.arange(60) // 2) % 2 * 2 - 1
    _fake_images(tmp_path / "img_align_celeba", names, blond > 0, rng)
    with open(tmp_path / "list_attr_celeba.txt", "w") as f:
        f.write("60\nBlond_Hair Male\n")
        f.writelines(f"{n} {b} {m}\n" for n, b, m in zip(names, blond, male))
    with open(tmp_path / "list_eval_partition.txt", "w") as f:
        f.writelines(f"{n} {0 if i < 40 else 2}\n" for i, n in enumerate(names))
    results = load_example("plot_subgroups_waterbirds_celeba").main(
        ["--quick", "--celeba", str(tmp_path)])
    printed = capsys.readouterr().out
    assert "CelebA: 40 train / 20 test" in printed
    assert "Blond_Hair=1, Male=1" in printed
    assert table_rows(printed) == ["LR on pixels", "CIM -> LR"]
    assert all(acc["mean"] > 0.8 for acc in results.values()), results  # chance: 0.5
    assert_trained(trained, 1)


def test_cim_vib_vs_vib(tmp_path, capsys, trained):
    out = tmp_path / "history.png"
    fitted = load_example("plot_cim_vib_vs_vib").main(["--quick", "--out", str(out)])
    printed = capsys.readouterr().out
    assert table_rows(printed) == ["VIB (pixels)", "CIM -> VIB (two-stage)",
                                   "CIM+VIB (joint) -> VIB"]
    joint = fitted["CIM+VIB (joint) -> VIB"].named_steps["cim"]
    assert joint.head == "vib" and "train_kl" in joint.history_[-1]
    assert fitted["CIM -> VIB (two-stage)"].named_steps["cim"].head == "cnn"
    assert out.exists()
    assert_trained(trained, 5)  # 3 VIBs, 2 CIMs
    scores = table(printed)
    assert min(row[0] for row in scores.values()) > 0.5, scores  # in distribution; chance: 0.1


def test_cim_then_skorch_cnn(capsys, trained):
    """A skorch CNN takes the CIM's 4-D output in one pipeline, and learns: with
    skorch's default criterion (NLLLoss) on the CNN's logits the losses were NaN
    and every model predicted one class (0.106)."""
    results = load_example("plot_cim_then_cnn").main(["--quick"])
    printed = capsys.readouterr().out
    assert table_rows(printed) == ["CNN on pixels (ERM)", "group CIM -> CNN",
                                   "oracle CNN (no mark)"]
    assert table(printed) == {name: [round(v, 3) for v in pair]
                              for name, pair in results.items()}
    assert "removal check" in printed
    assert_trained(trained, 4)  # the ERM CNN, the CIM and its CNN, the oracle CNN
    assert all(acc > 0.6 for acc, _ in results.values()), results  # OOD; chance: 0.1


def test_grid_search_routes_groups_to_the_scorer(tmp_path, capsys, trained):
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
    assert_trained(trained, 5)  # 2 candidates x 2 folds, and the refit
    accuracy = np.asarray(search.cv_results_["mean_test_accuracy"])
    assert (accuracy > 0.8).all(), accuracy  # chance: 0.1
    ood = float(re.search(r"chosen model, OOD test: accuracy ([\d.]+)", printed).group(1))
    assert ood > 0.25, printed


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

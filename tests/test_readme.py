"""README and documentation snippets run as written (tiny CPU settings swapped in
for the defaults, which need the pretrained LPIPS trunk and minutes of training).

Python blocks are taken from README.md (```python fences) and from the docs'
reStructuredText pages (``.. code-block:: python``); each test picks one block by
strings only it contains, so a block that changes its wording fails loudly here
instead of silently going untested.
"""

import re
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()
README_BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)
TINY_CIM = ('CIMTransformer(image_shape=(3, 32, 32), distance="l2", max_epochs=1, '
            'batch_size=64, tn_width=4, tn_depth=1, head_width=4, device="cpu", '
            'random_state=0)')


def _rst_blocks(text):
    """Bodies of the ``.. code-block:: python`` directives of an rst page."""
    blocks = []
    for match in re.finditer(r"^( *)\.\. code-block:: python\n((?:\1 +\S.*\n|\s*\n)+)",
                             text, re.M):
        blocks.append(textwrap.dedent(match.group(2)).strip("\n") + "\n")
    return blocks


DOCS_BLOCKS = {path.relative_to(ROOT).as_posix(): _rst_blocks(path.read_text())
               for path in sorted((ROOT / "docs").rglob("*.rst"))}


def _tiny(block):
    return re.sub(r"CIMTransformer\(image_shape=\(3, 32, 32\)(, max_epochs=\d+)?\)", TINY_CIM,
                  block)


def _snippet(blocks, *needles):
    (block,) = [b for b in blocks if all(n in b for n in needles)]
    assert TINY_CIM not in block
    return _tiny(block)


def _docs_snippet(page, *needles):
    return _snippet(DOCS_BLOCKS[page], *needles)


def test_rst_blocks_are_found():
    # The parser must see the pages' python blocks, or the tests below test nothing.
    assert len(DOCS_BLOCKS["docs/getting_started.rst"]) == 2
    assert "GridSearchCV(pipe" in DOCS_BLOCKS["docs/user_guide/vib.rst"][0]


@pytest.mark.slow
def test_readme_quick_start_runs():
    scope = {}
    exec(_snippet(README_BLOCKS, "make_colored_digits", "cim__groups"), scope)
    d, pipe = scope["d"], scope["pipe"]
    cim = pipe.named_steps["cim"]
    assert cim.group_aware_ and cim.distance == "l2"  # the tiny settings were swapped in
    assert scope["m"].shape == (len(d.X_test_ood), 32 * 32)
    assert 0 <= scope["m"].min() and scope["m"].max() <= 1


def test_vib_snippet_runs():
    scope = {}
    exec(_docs_snippet("docs/user_guide/vib.rst", "VIBClassifier", "GridSearchCV(pipe"), scope)
    assert scope["search"].estimator is scope["pipe"]
    assert scope["pipe"].named_steps["cim"].distance == "l2"


@pytest.mark.slow
def test_getting_started_snippet_runs(capsys):
    scope = {}
    exec(_docs_snippet("docs/getting_started.rst", "make_colored_digits", "print("), scope)
    assert scope["pipe"].named_steps["cim"].group_aware_
    assert "OOD accuracy:" in capsys.readouterr().out


@pytest.mark.slow
def test_datasets_snippet_runs(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)  # the snippet saves masks.png
    scope = {}
    exec(_docs_snippet("docs/user_guide/data_and_metrics.rst", "make_colored_digits",
                       "plot_masks"), scope)
    assert (tmp_path / "masks.png").exists()
    assert len(scope["pipe"].predict(scope["flat"](scope["d"].X_test_ood))) == len(
        scope["d"].y_test)


@pytest.mark.slow
def test_removal_check_snippet_runs(capsys):
    scope = {}
    exec(_docs_snippet("docs/user_guide/method.rst", "removal_score", "GridSearchCV(pipe"),
         scope)
    search = scope["search"]
    assert search.best_estimator_.named_steps["cim"].distance == "l2"  # tiny settings
    scores = search.cv_results_["mean_test_score"]
    assert len(scores) == 3 and search.best_index_ == int(scores.argmax())
    assert "balanced_accuracy" in capsys.readouterr().out


@pytest.mark.slow
def test_routing_snippet_runs():
    """The data page's search under metadata routing runs as written (it raised
    UnsetMetadataPassedError before fit asked for groups by default)."""
    scope = {}
    exec(_docs_snippet("docs/user_guide/data_and_metrics.rst", "make_worst_group_scorer()",
                       "enable_metadata_routing"), scope)
    search = scope["search"]
    assert search.best_estimator_.named_steps["cim"].group_aware_
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))


def test_own_images_snippet_runs(tmp_path, monkeypatch, capsys):
    """The "Your own images" page: a folder of JPEGs of mixed sizes, one folder per
    class, the nuisance in the file name, to a pickled group-aware pipeline."""
    from PIL import Image

    rng = np.random.RandomState(0)
    for label, shade in (("cow", 200), ("camel", 60)):
        (tmp_path / "photos" / label).mkdir(parents=True)
        for i in range(12):
            place = ("beach", "grass")[i % 2]
            pixels = rng.randint(0, 40, (30 + i, 40, 3)) + shade
            pixels[..., 1] += 40 * (place == "grass")
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(
                tmp_path / "photos" / label / f"{place}_{i:04d}.jpg")
    monkeypatch.chdir(tmp_path)
    block = _docs_snippet("docs/user_guide/own_images.rst", "Path(\"photos\")", "joblib.dump")
    tiny = TINY_CIM.replace("(3, 32, 32)", "(3, 64, 64)")[:-1] + ", verbose=1)"
    page_cim = "CIMTransformer(image_shape=(3, 64, 64), max_epochs=15, verbose=1)"
    assert block.count(page_cim) == 1
    scope = {}
    exec(block.replace(page_cim, tiny), scope)
    assert scope["X"].shape == (24, 64, 64, 3) and set(scope["groups"]) == {"beach", "grass"}
    out, err = capsys.readouterr()
    assert "retained" in out
    assert "CIMNet" in err and "loss=" in err  # verbose=1: the fit's progress bar
    # the LR after the CIM gets values in [0, 1] (psi(x) keeps X's units)
    psi = scope["pipe"].named_steps["cim"].transform(scope["X_rows"])
    assert psi.dtype == np.float32 and 0 <= psi.min() and psi.max() <= 1
    import joblib
    loaded = joblib.load(tmp_path / "robust.joblib")
    assert loaded.named_steps["cim"].group_aware_
    np.testing.assert_array_equal(loaded.predict(scope["X_rows"]), scope["pipe"].predict(
        scope["X_rows"]))


def test_getting_started_template_runs_on_its_stated_inputs():
    """The first block names its inputs in comments (X, y, nuisance); given those, it runs."""
    from sklearn_cim.datasets import make_colored_digits

    d = make_colored_digits(random_state=0)
    block = _docs_snippet("docs/getting_started.rst", "pipe.score(X_test, y_test)")
    rows = lambda a: a.reshape(len(a), -1)  # noqa: E731
    scope = dict(X_train=rows(d.X_train), y_train=d.y_train, nuisance=d.nuisance_train,
                 X_test=rows(d.X_test_ood), y_test=d.y_test)
    exec(block, scope)
    cim = scope["cim"]
    assert cim.group_aware_ and cim.masks(scope["X_test"]).shape == (len(d.y_test), 32 * 32)


def test_offline_snippet_builds_what_it_says():
    """Each line builds the estimator its comment names (constructors only: nothing
    is downloaded or trained)."""
    from sklearn_cim import CIMTransformer

    block = _docs_snippet("docs/user_guide/offline.rst", "pretrained=False", "distance=\"ssim\"")
    built = [eval(line.split("#")[0], {"CIMTransformer": CIMTransformer})
             for line in block.splitlines()
             if line.startswith("CIMTransformer(")]
    assert [(c.distance, c.pretrained) for c in built] == [
        ("lpips-alex", False), ("ssim", True), ("l2", True)]
    assert all(isinstance(c, CIMTransformer) for c in built)


def test_resume_snippet_resumes(tmp_path, monkeypatch):
    """The persistence page's checkpoint block, run twice: the second run finds
    the first's last checkpoint and returns its model without training."""
    from sklearn_cim.datasets import make_colored_digits

    d = make_colored_digits(random_state=0)
    monkeypatch.chdir(tmp_path)
    block = _docs_snippet("docs/user_guide/persistence.rst", 'checkpoint="cim-checkpoints"')
    page_cim = ('CIMTransformer(image_shape=(3, 32, 32), max_epochs=30, random_state=0,\n'
                '                     checkpoint="cim-checkpoints")')
    assert block.count(page_cim) == 1
    tiny = TINY_CIM[:-1] + ', max_epochs=2, checkpoint="cim-checkpoints")'
    tiny = tiny.replace("max_epochs=1, ", "")
    runs = []
    for _ in range(2):
        scope = dict(X_train=d.X_train, y_train=d.y_train, nuisance=d.nuisance_train)
        exec(block.replace(page_cim, tiny), scope)
        runs.append(scope["cim"])
    (slot,) = (tmp_path / "cim-checkpoints").iterdir()
    assert [p.name for p in slot.iterdir()] == ["epoch-000002"]
    assert runs[1].history_[:, "dur"] == runs[0].history_[:, "dur"]  # loaded, not retrained
    np.testing.assert_array_equal(runs[1].transform(d.X_train[:8]),
                                  runs[0].transform(d.X_train[:8]))


#: Every python block of the docs is run by one of the tests above, or is listed
#: here with the reason it cannot run in CI (page, a string only it contains).
RUN = [("docs/getting_started.rst", "pipe.score(X_test, y_test)"),
       ("docs/getting_started.rst", "OOD accuracy:"),
       ("docs/user_guide/data_and_metrics.rst", "plot_masks"),
       ("docs/user_guide/data_and_metrics.rst", "enable_metadata_routing"),
       ("docs/user_guide/method.rst", "removal_score"),
       ("docs/user_guide/offline.rst", "distance=\"ssim\""),
       ("docs/user_guide/own_images.rst", "joblib.dump"),
       ("docs/user_guide/persistence.rst", "checkpoint="),
       ("docs/user_guide/vib.rst", "VIBClassifier")]
NOT_RUN = {("docs/user_guide/scaling.rst", "LocalCUDACluster"): "dask_cuda and GPUs",
           ("docs/user_guide/scaling.rst", "nprocs=4"): "4 GPUs (fit_distributed itself: "
                                                         "tests/test_distributed.py)",
           ("docs/user_guide/scaling.rst", "init_process_group(\"nccl\")"): "torchrun, NCCL"}


def test_every_docs_block_is_run_or_listed_with_a_reason():
    listed = RUN + list(NOT_RUN)
    for page, blocks in DOCS_BLOCKS.items():
        for block in blocks:
            owners = [key for key in listed if key[0] == page and key[1] in block]
            assert len(owners) == 1, (page, block[:200], owners)
    assert len(listed) == sum(map(len, DOCS_BLOCKS.values()))

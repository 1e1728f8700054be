"""README snippets run as written (tiny CPU settings swapped in for the defaults,
which need the pretrained LPIPS trunk and minutes of training)."""

import re
from pathlib import Path

import pytest

README = (Path(__file__).parents[1] / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)
TINY_CIM = ('CIMTransformer(image_shape=(3, 32, 32), distance="l2", max_epochs=1, '
            'batch_size=64, tn_width=4, tn_depth=1, head_width=4, device="cpu", '
            'random_state=0)')


def _snippet(*needles):
    (block,) = [b for b in BLOCKS if all(n in b for n in needles)]
    return block.replace("CIMTransformer(image_shape=(3, 32, 32))", TINY_CIM)


def test_vib_snippet_runs():
    scope = {}
    exec(_snippet("VIBClassifier", "GridSearchCV(pipe"), scope)
    assert scope["search"].estimator is scope["pipe"]


@pytest.mark.slow
def test_datasets_snippet_runs(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)  # the snippet saves masks.png
    scope = {}
    exec(_snippet("make_colored_digits", "plot_masks"), scope)
    assert (tmp_path / "masks.png").exists()
    assert len(scope["pipe"].predict(scope["flat"](scope["d"].X_test_ood))) == len(
        scope["d"].y_test)

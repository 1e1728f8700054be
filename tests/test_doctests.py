"""The docstring examples of the package run and print what they show.

``python -m pytest -q tests`` runs them through this file (the README's test
command collects only ``tests``); ``python -m pytest --doctest-modules
sklearn_cim`` runs the same examples directly, with the option flags set in
pyproject.toml. Every public estimator and function (the ``__all__`` of the
package and of its public modules, and the functions of ``demo``) must have an
``Examples`` section whose examples run, except the few listed in
``SKIPPED_EXAMPLES`` that need data files or minutes of training.
"""

import doctest
import importlib
import inspect
import pkgutil

import pytest

import sklearn_cim

try:
    import matplotlib
except ImportError:  # the optional "plot" extra: only sklearn_cim.plotting's examples skip
    matplotlib = None
else:
    matplotlib.use("Agg")  # plotting examples draw without a display

FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
PUBLIC_MODULES = ["sklearn_cim", "sklearn_cim.datasets", "sklearn_cim.demo",
                  "sklearn_cim.distributed", "sklearn_cim.metrics", "sklearn_cim.plotting"]
# Public functions whose examples are all marked +SKIP: they read datasets that
# are not here, or run the whole demo (minutes); their tests cover them.
SKIPPED_EXAMPLES = {
    "sklearn_cim.datasets.load_celeba", "sklearn_cim.datasets.load_colored_mnist",
    "sklearn_cim.datasets.load_waterbirds", "sklearn_cim.demo.main", "sklearn_cim.demo.run",
}
# Modules whose examples draw with matplotlib.
NEEDS_MATPLOTLIB = {"sklearn_cim.plotting"}


def _all_modules():
    names = ["sklearn_cim"]
    for info in pkgutil.walk_packages(sklearn_cim.__path__, "sklearn_cim."):
        names.append(info.name)
    return sorted(names)


def _public(module_name):
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None)
    if names is None:  # demo: its functions
        names = [n for n, v in vars(module).items() if not n.startswith("_")
                 and inspect.isfunction(v) and v.__module__ == module_name]
    return [(f"{module_name}.{n}", getattr(module, n)) for n in names
            if inspect.isclass(getattr(module, n)) or callable(getattr(module, n))]


@pytest.mark.parametrize("module_name", _all_modules())
def test_examples_run(module_name):
    if matplotlib is None and module_name in NEEDS_MATPLOTLIB:
        pytest.skip("matplotlib is not installed (pip install \"sklearn-cim[plot]\")")
    module = importlib.import_module(module_name)
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    for test in finder.find(module, module_name):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} example(s) of {module_name} failed (above)"


@pytest.mark.parametrize("name,obj", [item for m in PUBLIC_MODULES for item in _public(m)],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_public_names_have_running_examples(name, obj):
    doc = inspect.getdoc(obj) or ""
    assert "Examples\n--------" in doc, f"{name} has no Examples section"
    examples = doctest.DocTestParser().get_examples(doc)
    assert examples, f"{name}: its Examples section holds no >>> example"
    short = name.rpartition(".")[2]
    uses = [e for e in examples if short in e.source
            and not e.source.startswith(("from ", "import "))]
    running = [e for e in uses if not e.options.get(doctest.SKIP)]
    assert uses, f"{name}: no example uses {short}"
    if name in SKIPPED_EXAMPLES:
        assert not running, f"{name} now has running examples: drop it from SKIPPED_EXAMPLES"
    else:
        assert running, f"{name}: every example using it is skipped"

"""The mutation check's list stays in step with the code: every mutant's text
occurs exactly once where it says, and every test it names exists. (Running the
mutants is ``python maint_tools/mutation_check.py``, which CI does.)"""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("mutation_check",
                                              ROOT / "maint_tools" / "mutation_check.py")
mutation_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mutation_check)
MUTANTS = mutation_check.MUTANTS


def test_at_least_fifteen_distinct_mutants():
    assert len(MUTANTS) >= 15
    assert len({m.name for m in MUTANTS}) == len(MUTANTS)


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.name)
def test_mutant_applies_and_names_real_tests(mutant):
    text = (ROOT / "sklearn_cim" / mutant.file).read_text()
    for old, new in mutant.edits:
        assert text.count(old) == 1, f"{old!r} should occur once in {mutant.file}"
        assert old != new
    for node in mutant.tests:
        path, _, name = node.partition("::")
        source = (ROOT / "tests" / path).read_text()
        assert not name or f"def {name}(" in source, f"no test {node}"

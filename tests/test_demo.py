"""The ``sklearn-cim demo`` command: a tiny in-process run and the CLI's help."""

import os
import re
import subprocess
import sys

import pytest

from sklearn_cim import demo
from sklearn_cim.__main__ import main


def test_demo_quick_prints_every_model_and_saves_masks(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "masks.png"
    assert main(["demo", "--quick", "--seed", "1", "--out", str(out)]) == 0
    printed, progress = capsys.readouterr()
    # never silent while it fits: one bar per CIM and VIB fit (verbose=1, on stderr),
    # a line per CIM when it is done
    assert len(re.findall(r"CIMNet: +0%", progress)) == 3
    assert len(re.findall(r"VIBNet: +0%", progress)) == 2
    for name in ("group CIM", "inferred-group CIM", "CIM"):
        assert re.search(rf"^  fitted {name} \(\d+\.\d s; \d+ s since the start\)$", printed,
                         re.M)
    table = [line for line in printed.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| model | in-distribution acc | OOD acc | "
                               "OOD worst-group acc | fit s |")
    assert [line.split(" | ")[0][2:] for line in table[1:]] == list(demo.MODEL_NAMES)
    for line in table[1:]:
        cells = [float(c) for c in line.strip("| ").split(" | ")[1:]]
        assert all(0 <= c <= 1 for c in cells[:3]) and cells[3] >= 0
    assert out.stat().st_size > 1000 and out.read_bytes()[:4] == b"\x89PNG"
    assert f"mask figure: {out}" in printed


def test_demo_main_returns_rows_and_corner_nuisance(tmp_path):
    pytest.importorskip("matplotlib")
    rows = demo.main(["--quick", "--nuisance", "corner", "--epochs", "1",
                      "--out", str(tmp_path / "m.png")])
    assert [r["model"] for r in rows] == list(demo.MODEL_NAMES)
    oracle = rows[-1]
    assert oracle["id_acc"] == oracle["ood_acc"]


def test_without_matplotlib_the_demo_names_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(demo, "_have_matplotlib", lambda: False)
    out = tmp_path / "masks.png"
    demo._save_masks(None, None, str(out))
    printed = capsys.readouterr().out
    assert printed.count("\n") == 1 and 'pip install "sklearn-cim[plot]"' in printed
    assert not out.exists()


def test_lpips_fallback_without_cached_trunk(monkeypatch, tmp_path):
    from sklearn_cim import _distances

    missing = str(tmp_path / "alexnet.pth")
    monkeypatch.setattr(_distances, "_trunk_weight_file", lambda trunk: missing)
    params = dict(demo.DEMO_CIM_PARAMS, distance="lpips-alex", pretrained=True)
    new, message = demo.lpips_fallback(params)
    assert new["pretrained"] is False and params["pretrained"] is True
    assert {k: v for k, v in new.items() if k != "pretrained"} == \
        {k: v for k, v in params.items() if k != "pretrained"}
    assert "pretrained=False" in message and missing in message and "\n" not in message

    open(missing, "wb").close()
    assert demo.lpips_fallback(params) == (params, None)
    no_lpips = dict(params, distance="l2")
    assert demo.lpips_fallback(no_lpips) == (no_lpips, None)


def test_cli_help_lists_demo():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run([sys.executable, "-m", "sklearn_cim", "--help"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "demo" in proc.stdout and "usage: sklearn-cim" in proc.stdout


def test_cli_needs_a_command(capsys):
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
    assert "COMMAND" in capsys.readouterr().err

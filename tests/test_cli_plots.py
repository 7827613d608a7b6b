"""The command line and the per-precision plot."""
import os

import pytest

import lowbit as lb
from lowbit import cli


def test_compare_prints_table_and_writes_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    png = tmp_path / "cmp.png"
    rc = cli.main(["compare", "--model", "simple_cnn", "--precisions", "fp32,fixed8", "--epochs", "2",
                   "--limit", "2000", "--quiet", "--plot", str(png)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "fp32" in out and "fixed8" in out and "test acc %" in out and "uJ/img (est.)" in out
    assert png.exists() and os.path.getsize(png) > 10_000
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_train_command_and_errors(tmp_path, capsys):
    w = tmp_path / "w.npz"
    assert cli.main(["train", "--model", "simple_cnn", "--epochs", "1", "--limit", "1000", "--quiet",
                     "--save", str(w), "-o", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "final test accuracy" in out and w.exists() and (tmp_path / "run" / "results.json").exists()
    assert cli.main(["train", "--dataset", "mnist", "--data-root", str(tmp_path / "none"), "--quiet",
                     "-o", str(tmp_path / "failed")]) == 2
    assert not (tmp_path / "failed").exists()  # a failed run leaves no output folder
    assert "lowbit: error" in capsys.readouterr().err


def test_plot_histories_validates():
    with pytest.raises(ValueError, match="no runs"):
        lb.plots.plot_histories({})

"""``ternref ptq minilm``: the table on the tiny model folder, and the refusals."""

import json

import pytest

from ternref.cli import main
from ternref.data.text import find_janeaustenr


@pytest.mark.skipif(find_janeaustenr() is None, reason="r-cran-janeaustenr is not installed")
def test_the_verb_prints_and_writes_the_table(tiny_dir, tmp_path, capsys):
    out = tmp_path / "res"
    argv = ["ptq", "minilm", "--model-path", str(tiny_dir), "--sentences", "12",
            "--projections", "twn,inq", "--packed-sentences", "12", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "| twn | tensor |" in text and "| twn | channel |" in text and "| inq | tensor |" in text
    assert "sentences/s" in text
    report = json.loads((out / "results.json").read_text())
    assert len(report["rows"]) == 3 and report["settings"]["sentences"] == 12
    assert (out / "table.md").read_text().startswith("| projection |")


def test_refusals(capsys, tmp_path):
    assert main(["ptq", "minilm", "--projections", "nope"]) == 2
    assert "not a registered weight projection" in capsys.readouterr().err
    assert main(["ptq", "minilm", "--granularities", "group"]) == 2
    assert "--granularities" in capsys.readouterr().err
    assert main(["ptq", "minilm", "--packed", "twn/group"]) == 2
    assert "granularities tensor, channel" in capsys.readouterr().err
    assert main(["ptq", "minilm", "--model-path", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err  # without the extra it says what to install instead
    assert "not a folder" in err or "ternref[pretrained]" in err

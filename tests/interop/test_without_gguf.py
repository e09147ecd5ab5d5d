"""Without the optional gguf package: importing works, using says what to install."""

import sys

import numpy as np
import pytest

from ternref import nn
from ternref.cli import main


@pytest.fixture
def no_gguf(monkeypatch):
    monkeypatch.setitem(sys.modules, "gguf", None)  # `import gguf` now raises ImportError


def test_save_and_load_say_what_to_install(no_gguf, tmp_path):
    import ternref.interop as interop

    model = nn.mlp([4, 3], rng=np.random.default_rng(0))
    for call in (
        lambda: interop.save_gguf(model, tmp_path / "m.gguf"),
        lambda: interop.load_gguf(tmp_path / "m.gguf"),
        lambda: interop.read_tensors(tmp_path / "m.gguf"),
    ):
        with pytest.raises(ImportError, match=r'pip install "ternref\[gguf\]"'):
            call()
    assert not (tmp_path / "m.gguf").exists()


def test_the_export_verb_says_what_to_install(no_gguf, tmp_path, capsys):
    from ternref import packed

    path = tmp_path / "m.npz"
    packed.save(path, packed.export(nn.mlp([4, 3], rng=np.random.default_rng(0))))
    assert main(["export", str(path), "--to", "gguf", str(tmp_path / "m.gguf")]) == 2
    assert "pip install" in capsys.readouterr().err

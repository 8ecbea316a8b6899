"""Shared test set-up: offline, and a fixed thread count so timings and reductions are stable."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def fashion_pretrained():
    """Tiny CLIP and MERU pretrained on built-in Fashion-MNIST with a shortened recipe
    (half the default steps, about a minute each), shared by the end-to-end tests."""
    from vlunlearn.data import Tokenizer, load_builtin
    from vlunlearn.training.pretrain import PretrainConfig, pretrain

    train = load_builtin("fashion-mnist", "train")
    models = {}
    for geometry in ("euclidean", "lorentz"):
        models[geometry], _ = pretrain(PretrainConfig(geometry=geometry, steps=234), train, tokenizer=Tokenizer(), progress=False)
    return models

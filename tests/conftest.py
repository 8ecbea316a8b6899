"""Shared test set-up: offline, huge pages as the ``vlunlearn`` command uses them, and a fixed
thread count so timings and reductions are stable.

The count comes from the environment variable ``VLUNLEARN_TEST_THREADS`` (default 2). It is set
when pytest imports this file, before any test runs: with ``torch.set_num_threads`` here and as
``OMP_NUM_THREADS`` for the ``vlunlearn`` processes tests start, whose results some tests compare
bit for bit with this process's."""

import os

TEST_THREADS = int(os.environ.get("VLUNLEARN_TEST_THREADS", "2"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["OMP_NUM_THREADS"] = str(TEST_THREADS)
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # huge pages for large CPU tensors, as the CLI sets them


import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(TEST_THREADS)


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


@pytest.fixture(scope="session")
def meru_vit_s():
    """A random MERU ViT-S (85M parameters, seed 0) in eval mode, built once for the tests of the
    model layout and of checkpoints; a test that changes it puts it back."""
    from vlunlearn.models import build_model

    torch.manual_seed(0)
    return build_model("meru-vit-s").eval()

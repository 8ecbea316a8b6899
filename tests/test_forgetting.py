"""End to end: the default AC (CLIP) and HAC (MERU) really forget a built-in concept."""

import pytest
import torch

from vlunlearn import unlearn
from vlunlearn.data import Tokenizer, UnlearningRequest, load_builtin, make_splits
from vlunlearn.evaluation import evaluate_splits


@pytest.mark.slow  # two 234-step pretrains: `make test-slow`
@pytest.mark.parametrize(("geometry", "method"), [("euclidean", "ac"), ("lorentz", "hac")])
def test_default_method_forgets_sneaker_and_keeps_the_rest(fashion_pretrained, geometry, method):
    tokenizer = Tokenizer()
    splits = make_splits(
        load_builtin("fashion-mnist", "train"), load_builtin("fashion-mnist", "test"), UnlearningRequest(concepts=("sneaker",))
    )
    original = fashion_pretrained[geometry]
    weights = {name: value.clone() for name, value in original.state_dict().items()}
    before = evaluate_splits(original, splits, tokenizer)
    unlearned, record = unlearn(original, splits, method, tokenizer=tokenizer, progress=False)
    after = evaluate_splits(unlearned, splits, tokenizer)
    assert before["zs_test_forget"] > 60, "the pretrained model should know sneakers before unlearning"
    assert after["zs_test_forget"] <= before["zs_test_forget"] - 50
    assert abs(after["zs_test_retain"] - before["zs_test_retain"]) <= 5
    assert all(torch.equal(value, weights[name]) for name, value in original.state_dict().items()), \
        "unlearning modified the original model"
    assert record.steps == record.config["steps"]

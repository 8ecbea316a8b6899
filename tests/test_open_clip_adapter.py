"""The open_clip adapter: ContrastiveModel's interface over an open_clip-style model, every
Euclidean method and metric through it, the lazy import and the no-download loader."""

import json
import math
import subprocess
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vlunlearn import unlearn
from vlunlearn.data import Tokenizer, UnlearningRequest, load_builtin, make_splits
from vlunlearn.errors import VlunlearnError
from vlunlearn.evaluation.suite import evaluate_unlearning
from vlunlearn.geometry import EUCLIDEAN
from vlunlearn.methods import available_methods
from vlunlearn.models import OpenClipAdapter, load_open_clip

CONTEXT = 24
MEAN, STD = (0.2, 0.4, 0.6), (0.5, 0.25, 0.125)


class FakeVisual(nn.Module):
    """Patchify-and-project image tower on exactly 3x28x28 inputs (7x7 patches)."""

    image_size = 28

    def __init__(self, width: int, embed_dim: int) -> None:
        super().__init__()
        self.patch = nn.Linear(3 * 7 * 7, width)
        self.proj = nn.Linear(width, embed_dim)
        self.preprocess_cfg = {"size": 28, "mean": MEAN, "std": STD}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1:] != (3, 28, 28):
            raise RuntimeError(f"expected (B, 3, 28, 28), got {tuple(x.shape)}")
        patches = x.unfold(2, 7, 7).unfold(3, 7, 7).permute(0, 2, 3, 1, 4, 5).reshape(len(x), 16, -1)
        return self.proj(F.gelu(self.patch(patches)).mean(dim=1))


class FakeOpenClip(nn.Module):
    """open_clip's CLIP interface in miniature: the text tower takes exactly ``context_length``
    CLIP-vocabulary ids, mixes them causally and pools at the end-of-text id (the argmax)."""

    def __init__(self, context_length: int = CONTEXT, width: int = 32, embed_dim: int = 16) -> None:
        super().__init__()
        self.context_length = context_length
        self.vocab_size = Tokenizer.vocab_size
        self.visual = FakeVisual(width, embed_dim)
        self.token_embedding = nn.Embedding(Tokenizer.vocab_size, width)
        self.positional_embedding = nn.Parameter(0.01 * torch.randn(context_length, width))
        self.text_projection = nn.Linear(width, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return self.visual(image)

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(text) + self.positional_embedding  # fails unless text is (B, context_length)
        x = torch.tanh(x.cumsum(dim=1) / torch.arange(1, x.shape[1] + 1).view(1, -1, 1))
        return self.text_projection(x[torch.arange(len(text)), text.argmax(dim=-1)])


@pytest.fixture
def adapter():
    torch.manual_seed(0)
    return OpenClipAdapter(FakeOpenClip(), name="open_clip:fake")


@pytest.fixture(scope="module")
def digits_splits():
    train, test = load_builtin("digits", "train").subset(range(300)), load_builtin("digits", "test").subset(range(120))
    return make_splits(train, test, UnlearningRequest(concepts=("seven",)))


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer()


def test_adapter_exposes_the_contrastive_model_interface(adapter):
    config = adapter.config
    assert (config.name, config.geometry, config.hyperbolic) == ("open_clip:fake", "euclidean", False)
    assert (config.context_length, config.image_size, config.in_channels) == (CONTEXT, 28, 3)
    assert (config.pixel_mean, config.pixel_std) == (MEAN, STD)
    assert json.loads(json.dumps(config.to_dict()))["geometry"] == "euclidean"
    assert adapter.geometry is EUCLIDEAN and adapter.curvature() is None
    assert adapter.logit_scale is adapter.inner.logit_scale
    assert set(adapter.state_dict()) == {f"inner.{key}" for key in adapter.inner.state_dict()}
    assert sum(p.numel() for p in adapter.parameters()) == sum(p.numel() for p in adapter.inner.parameters())


def test_settings_fall_back_to_legacy_attributes_then_open_clip_defaults():
    inner = FakeOpenClip()
    del inner.visual.preprocess_cfg
    inner.visual.image_mean, inner.visual.image_std = (0.1, 0.1, 0.1), (0.3, 0.3, 0.3)
    config = OpenClipAdapter(inner).config
    assert (config.image_size, config.pixel_mean, config.pixel_std) == (28, (0.1,) * 3, (0.3,) * 3)
    bare = OpenClipAdapter(nn.Module()).config
    assert (bare.context_length, bare.image_size) == (77, 224)
    custom_text = nn.Module()  # open_clip's CustomTextCLIP keeps the context length on its text tower
    custom_text.text = nn.Module()
    custom_text.text.context_length = 32
    assert OpenClipAdapter(custom_text).config.context_length == 32
    assert bare.pixel_mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert OpenClipAdapter(inner, image_size=(32, 32)).config.image_size == 32
    with pytest.raises(ValueError, match="square"):
        OpenClipAdapter(inner, image_size=(32, 48))
    inner.vocab_size = 32000  # a SigLIP-style vocabulary: our tokenizer's ids would be meaningless
    with pytest.raises(VlunlearnError, match="32000"):
        OpenClipAdapter(inner)


def test_grey_images_are_repeated_to_rgb_and_normalised_with_the_model_statistics(adapter):
    seen = []
    adapter.inner.visual.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    grey = torch.rand(2, 1, 28, 28)
    features = adapter.encode_input(grey, project=False)
    expected = torch.cat([(grey - m) / s for m, s in zip(MEAN, STD)], dim=1)
    torch.testing.assert_close(seen[0], expected)
    torch.testing.assert_close(features, adapter.inner.encode_image(expected))
    embedded = adapter.encode_input(grey)
    torch.testing.assert_close(embedded.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(embedded, F.normalize(features, dim=-1))


def test_images_of_another_size_are_resized_to_the_input_size(adapter):
    seen = []
    adapter.inner.visual.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    adapter.encode_input(torch.full((1, 3, 14, 14), 0.5))
    assert seen[0].shape == (1, 3, 28, 28)
    expected = torch.tensor([(0.5 - m) / s for m, s in zip(MEAN, STD)]).view(1, 3, 1, 1).expand(1, 3, 28, 28)
    torch.testing.assert_close(seen[0], expected)  # a constant image stays constant
    with pytest.raises(ValueError, match="3-channel"):
        adapter.encode_input(torch.rand(1, 2, 28, 28))


def test_text_is_padded_to_the_context_length_and_wider_input_is_rejected(adapter, tokenizer):
    tokens = tokenizer(["a photo of a seven.", "a digit"], CONTEXT)
    assert tokens.shape[1] < CONTEXT
    with pytest.raises(RuntimeError):  # why the adapter pads: the tower needs exactly CONTEXT ids
        adapter.inner.encode_text(tokens)
    seen = []
    adapter.inner.token_embedding.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    features = adapter.encode_text(tokens, project=False)
    assert seen[0].shape == (2, CONTEXT)
    assert torch.equal(seen[0][:, : tokens.shape[1]], tokens) and not seen[0][:, tokens.shape[1] :].any()
    torch.testing.assert_close(features, adapter.inner.encode_text(F.pad(tokens, (0, CONTEXT - tokens.shape[1]))))
    embedded = adapter.encode_text(tokens)
    torch.testing.assert_close(embedded.norm(dim=-1), torch.ones(2))
    assert not torch.allclose(embedded[0], embedded[1])
    with pytest.raises(ValueError, match=f"exceed the context length {CONTEXT}"):
        adapter.encode_text(torch.ones(1, CONTEXT + 1, dtype=torch.long))
    image_emb, text_emb = adapter(torch.rand(2, 1, 28, 28), tokens)
    assert image_emb.shape == text_emb.shape == (2, 16)


def test_clamp_scalars_caps_the_logit_scale_at_ln_100(adapter):
    with torch.no_grad():
        adapter.inner.logit_scale.fill_(10.0)
    adapter.clamp_scalars_()
    assert adapter.inner.logit_scale.item() == pytest.approx(math.log(100.0))
    with torch.no_grad():
        adapter.inner.logit_scale.fill_(1.0)
    adapter.clamp_scalars_()
    assert adapter.inner.logit_scale.item() == 1.0


@pytest.mark.parametrize("method", available_methods())
def test_every_euclidean_method_unlearns_through_the_adapter(method, adapter, digits_splits, tokenizer):
    settings = dict(tokenizer=tokenizer, progress=False, steps=3, retain_batch_size=16, forget_batch_size=8)
    if method == "hac":
        with pytest.raises(ValueError, match="hyperbolic"):
            unlearn(adapter, digits_splits, method, **settings)
        return
    before = {k: v.clone() for k, v in adapter.state_dict().items()}
    unlearned, record = unlearn(adapter, digits_splits, method, **settings)
    assert isinstance(unlearned, OpenClipAdapter) and unlearned is not adapter
    assert record.steps == 3 and record.faults == []
    assert record.history and all(math.isfinite(v) for entry in record.history for v in entry.values())
    assert all(torch.equal(before[k], v) for k, v in adapter.state_dict().items()), "the input model was modified"
    changed = [k for k, v in unlearned.state_dict().items() if not torch.equal(before[k], v)]
    assert any(k.startswith("inner.visual.") for k in changed) and any(k.startswith("inner.token_") for k in changed)


def test_every_metric_is_finite_through_the_adapter(adapter, digits_splits, tokenizer):
    metrics, artifacts = evaluate_unlearning(adapter, digits_splits, tokenizer, retain_sample=100)
    assert {"zs_test_forget", "zs_train_retain", "mia_auc", "alignment_gap", "retrieval_forget_i2t_r1"} <= set(metrics)
    assert not any(key.startswith(("entailment", "forget_input_d0")) for key in metrics)
    assert all(math.isfinite(value) for value in metrics.values())
    matrix = torch.tensor(artifacts["alignment_matrix"])
    assert matrix.shape[0] == matrix.shape[1] > artifacts["alignment_forget_rows"] and torch.isfinite(matrix).all()


def test_importing_the_adapter_imports_no_optional_dependency():
    code = (
        "import sys, vlunlearn, vlunlearn.models, vlunlearn.models.open_clip_adapter\n"
        "print([m for m in sys.modules if m.split('.')[0] in ('open_clip', 'torchvision', 'timm')])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_load_open_clip_without_open_clip_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)  # makes `import open_clip` fail
    with pytest.raises(VlunlearnError, match=r"pip install 'vlunlearn\[open_clip\]'"):
        load_open_clip("ViT-B-32")


@pytest.fixture
def fake_open_clip(monkeypatch):
    """A stand-in ``open_clip`` module that records ``create_model`` calls."""
    module = types.ModuleType("open_clip")
    module.calls = []
    module.configs = {"Fake": {"text_cfg": {}}, "Fake-HF": {"text_cfg": {"hf_tokenizer_name": "x/y"}}}
    module.get_model_config = lambda name: module.configs.get(name)

    def create_model(name, pretrained=None, **kwargs):
        module.calls.append((name, pretrained, kwargs))
        return FakeOpenClip()

    module.create_model = create_model
    monkeypatch.setitem(sys.modules, "open_clip", module)
    return module


def test_load_open_clip_wraps_open_clip_and_never_downloads_by_default(fake_open_clip, tmp_path):
    model = load_open_clip("Fake", device="cpu")
    assert isinstance(model, OpenClipAdapter) and model.config.name == "open_clip:Fake"
    assert fake_open_clip.calls == [("Fake", None, {"device": "cpu"})]
    weights = tmp_path / "weights.pt"
    weights.write_bytes(b"")
    load_open_clip("Fake", weights)
    assert fake_open_clip.calls[-1][1] == str(weights)
    with pytest.raises(VlunlearnError, match="allow_download"):
        load_open_clip("Fake", "laion2b_s34b_b79k")
    with pytest.raises(VlunlearnError, match="allow_download"):
        load_open_clip("hf-hub:someone/model")
    assert len(fake_open_clip.calls) == 2, "a refused load reached open_clip"
    load_open_clip("Fake", "laion2b_s34b_b79k", allow_download=True)
    assert fake_open_clip.calls[-1][:2] == ("Fake", "laion2b_s34b_b79k")
    with pytest.raises(VlunlearnError, match="'x/y' tokenizer"):
        load_open_clip("Fake-HF")
    assert len(fake_open_clip.calls) == 3


def test_a_real_open_clip_model_gives_unit_embeddings(tokenizer):
    pytest.importorskip("open_clip")
    torch.manual_seed(0)
    model = load_open_clip("ViT-B-32").eval()
    assert (model.config.context_length, model.config.image_size, model.config.in_channels) == (77, 224, 3)
    with torch.no_grad():
        images = model.encode_input(torch.rand(2, 3, 224, 224))
        grey = model.encode_input(torch.rand(2, 1, 28, 28))  # resized and repeated like the built-in data
        texts = model.encode_text(tokenizer(["a photo of a seven.", "a sneaker"], 77))
    for embedding in (images, grey, texts):
        assert embedding.shape == (2, 512) and torch.isfinite(embedding).all()
        torch.testing.assert_close(embedding.norm(dim=-1), torch.ones(2))

"""Checkpoints: MERU's .pth layout (import/export), the native directory format, atomic writes."""

from __future__ import annotations

import json
import os
from typing import Iterator

import pytest
import torch

from vlunlearn.errors import CheckpointError
from vlunlearn.io import atomic_path, atomic_write_bytes, atomic_write_text
from vlunlearn.models import (
    ContrastiveModel,
    build_model,
    export_meru_checkpoint,
    import_meru_checkpoint,
    load_any,
    load_model,
    model_config,
    read_metadata,
    save_model,
)

EOT = 49407


class NotAWeight:  # pickled into a checkpoint to check that code-bearing files are refused
    def __init__(self) -> None:
        self.payload = "anything"


def random_tokens(batch: int, length: int, vocab: int = 49408, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, vocab - 2, (batch, length), generator=generator)
    tokens[:, -1] = vocab - 1  # EOT, the largest id
    return tokens


def embeddings(model: ContrastiveModel, images: torch.Tensor, tokens: torch.Tensor, project: bool = True):
    with torch.no_grad():
        return model.encode_image(images, project), model.encode_text(tokens, project)


def assert_same_outputs(a: ContrastiveModel, b: ContrastiveModel, images, tokens):
    for x, y in zip(embeddings(a, images, tokens), embeddings(b, images, tokens)):
        assert torch.equal(x, y)


@pytest.fixture(scope="module")
def big_models(meru_vit_s) -> Iterator[dict[str, ContrastiveModel]]:
    """The session's MERU ViT-S and a CLIP ViT-S, with scalars that are not the defaults, so that
    loading them is really checked; the MERU model's scalars are put back afterwards."""
    torch.manual_seed(0)
    models = {"meru-vit-s": meru_vit_s, "clip-vit-s": build_model("clip-vit-s").eval()}
    values = {"curv": -2.2, "visual_alpha": -2.0, "textual_alpha": -2.5}
    defaults = {name: getattr(meru_vit_s, name).detach().clone() for name in values}
    with torch.no_grad():
        for name, value in values.items():
            getattr(meru_vit_s, name).fill_(value)
        models["clip-vit-s"].logit_scale.fill_(4.6)
    yield models
    with torch.no_grad():
        for name, default in defaults.items():
            getattr(meru_vit_s, name).copy_(default)


@pytest.fixture(scope="module")
def big_inputs():
    torch.manual_seed(1)
    return torch.rand(1, 3, 224, 224), random_tokens(2, 12)


@pytest.fixture()
def tiny_lorentz() -> ContrastiveModel:
    torch.manual_seed(3)
    model = build_model("tiny", "lorentz").eval()
    with torch.no_grad():
        model.curv.fill_(-1.5)
        model.pixel_mean.copy_(torch.tensor([0.3, 0.4, 0.5]).view(3, 1, 1))
    return model


@pytest.fixture()
def tiny_inputs():
    torch.manual_seed(4)
    return torch.rand(3, 3, 28, 28), random_tokens(3, 10, seed=5)


# --------------------------------------------------------------------------- MERU layout


@pytest.mark.parametrize("name, geometry", [("meru-vit-s", "lorentz"), ("clip-vit-s", "euclidean")])
def test_meru_layout_round_trip_with_inferred_config(tmp_path, big_models, big_inputs, name, geometry):
    model = big_models[name]
    path = tmp_path / f"{name}.pth"
    torch.save({"model": model.state_dict(), "iteration": 120000}, path)  # MERU's own layout
    loaded = import_meru_checkpoint(path)
    assert loaded.config.name == name and loaded.config.geometry == geometry
    assert loaded.config.vision_heads == 12 and loaded.config.text_heads == 8
    assert not loaded.training
    assert_same_outputs(model, loaded, *big_inputs)
    assert all(not t.is_meta for t in loaded.state_dict().values())
    assert not loaded.visual.pos_embed.requires_grad
    if geometry == "lorentz":
        assert loaded.curv.item() == pytest.approx(-2.2) and loaded.curv.requires_grad


def test_module_prefixed_bare_state_dict_loads(tmp_path, tiny_lorentz, tiny_inputs):
    path = tmp_path / "ddp.pt"
    torch.save({f"module.{k}": v for k, v in tiny_lorentz.state_dict().items()}, path)
    loaded = import_meru_checkpoint(path, tiny_lorentz.config)
    assert_same_outputs(tiny_lorentz, loaded, *tiny_inputs)
    assert_same_outputs(tiny_lorentz, import_meru_checkpoint(path), *tiny_inputs)  # inferred config


def test_root_key_is_kept(tmp_path):
    torch.manual_seed(0)
    model = build_model("tiny", "euclidean")
    root = torch.randn(128)
    path = tmp_path / "clip_vit_s.pth"
    torch.save({"model": model.state_dict(), "root": root, "scaler": {"scale": 1.0}}, path)
    loaded = import_meru_checkpoint(path)
    assert torch.equal(loaded.root_embedding, root)
    assert "root" not in loaded.state_dict() and set(loaded.state_dict()) == set(model.state_dict())
    # carried through export and the native format
    exported = tmp_path / "again.pth"
    export_meru_checkpoint(loaded, exported)
    assert torch.equal(torch.load(exported, weights_only=True)["root"], root)
    assert torch.equal(import_meru_checkpoint(exported).root_embedding, root)


def test_tiny_model_round_trips_through_meru_layout(tmp_path, tiny_lorentz, tiny_inputs):
    # Bare {"model": sd}: the heads are not in any shape, so they come from the named config.
    bare = tmp_path / "bare.pth"
    torch.save({"model": tiny_lorentz.state_dict()}, bare)
    loaded = import_meru_checkpoint(bare)
    assert loaded.config.name == "tiny" and loaded.config.vision_heads == 4
    assert_same_outputs(tiny_lorentz, loaded, *tiny_inputs)
    # pixel statistics come from the checkpoint's buffers, not from the named config
    assert loaded.config.pixel_mean == pytest.approx((0.3, 0.4, 0.5))
    assert torch.allclose(loaded.pixel_mean.flatten(), torch.tensor([0.3, 0.4, 0.5]))
    # Our exporter also records the config, which MERU's loader would ignore.
    exported = export_meru_checkpoint(tiny_lorentz, tmp_path / "out" / "tiny.pth")
    payload = torch.load(exported, map_location="cpu", weights_only=True)
    assert set(payload) == {"model", "vlunlearn_config"}
    assert set(payload["model"]) == set(tiny_lorentz.state_dict())
    again = import_meru_checkpoint(exported)
    assert again.config == tiny_lorentz.config.replace(pixel_mean=loaded.config.pixel_mean)
    assert_same_outputs(tiny_lorentz, again, *tiny_inputs)
    assert [p.name for p in exported.parent.iterdir()] == ["tiny.pth"]  # no temporary left behind


def test_explicit_config_must_match(tmp_path, tiny_lorentz):
    path = tmp_path / "tiny.pth"
    torch.save({"model": tiny_lorentz.state_dict()}, path)
    with pytest.raises(CheckpointError, match=r"unexpected keys 3: curv, visual_alpha, textual_alpha"):
        import_meru_checkpoint(path, model_config("tiny", "euclidean"))
    with pytest.raises(CheckpointError, match=r"shape mismatches 97: visual.cls_token: checkpoint \(1, 1, 128\) "
                                              r"vs model \(1, 1, 384\)"):
        import_meru_checkpoint(path, "meru-vit-s")
    with pytest.raises(ValueError, match="unknown model"):
        import_meru_checkpoint(path, "resnet-50")
    torch.manual_seed(0)
    clip = build_model("tiny", "euclidean")
    torch.save({"model": clip.state_dict()}, path)
    with pytest.raises(CheckpointError, match=r"missing keys 3: curv, visual_alpha, textual_alpha"):
        import_meru_checkpoint(path, model_config("tiny", "lorentz"))


def test_missing_and_unexpected_keys_are_named(tmp_path, tiny_lorentz):
    state = tiny_lorentz.state_dict()
    del state["visual.norm.weight"]
    state["visual.head.weight"] = torch.zeros(10, 128)
    path = tmp_path / "bad.pth"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError) as info:
        import_meru_checkpoint(path, tiny_lorentz.config)
    message = str(info.value)
    assert "missing keys 1: visual.norm.weight" in message
    assert "unexpected keys 1: visual.head.weight" in message
    assert str(path) in message


def test_many_missing_keys_are_summarised(tmp_path, tiny_lorentz):
    state = {k: v for k, v in tiny_lorentz.state_dict().items() if not k.startswith("textual.resblocks.")}
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"missing keys 36: textual\.resblocks\.0\.ln_1\.weight, .*\(26 more\)"):
        import_meru_checkpoint(path, tiny_lorentz.config)


def test_truncated_file_is_reported(tmp_path, tiny_lorentz):
    path = tmp_path / "cut.pth"
    torch.save({"model": tiny_lorentz.state_dict()}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated") as info:
        import_meru_checkpoint(path)
    assert "cut.pth" in str(info.value)
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_any(tmp_path / "empty.pth")


def test_file_needing_code_is_refused(tmp_path, tiny_lorentz):
    path = tmp_path / "pickled.pth"
    torch.save({"model": tiny_lorentz.state_dict(), "extra": NotAWeight()}, path)
    with pytest.raises(CheckpointError, match="refused .* needs unpickling of code .*NotAWeight"):
        import_meru_checkpoint(path)


def test_missing_file_and_non_dict_payload(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        import_meru_checkpoint(tmp_path / "nope.pth")
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="not a dict"):
        import_meru_checkpoint(tmp_path / "list.pth")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="cannot infer the architecture"):
        import_meru_checkpoint(tmp_path / "other.pth")


# --------------------------------------------------------------------------- native format


def test_native_round_trip(tmp_path, tiny_lorentz, tiny_inputs):
    directory = save_model(tiny_lorentz, tmp_path / "run" / "model", metadata={"seed": 3, "note": "ok"})
    assert sorted(p.name for p in directory.iterdir()) == ["config.json", "model.safetensors"]
    header = json.loads((directory / "config.json").read_text())
    assert header["format"] == "vlunlearn-model" and header["version"] == 1
    assert header["config"]["geometry"] == "lorentz" and header["metadata"] == {"seed": 3, "note": "ok"}
    assert read_metadata(directory) == {"seed": 3, "note": "ok"}
    loaded = load_model(directory)
    assert loaded.config == tiny_lorentz.config.replace(pixel_mean=(0.3, 0.4, 0.5))
    assert loaded.config.pixel_std == (0.229, 0.224, 0.225)
    assert loaded.root_embedding is None
    assert_same_outputs(tiny_lorentz, loaded, *tiny_inputs)
    for key, value in tiny_lorentz.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert_same_outputs(tiny_lorentz, load_any(directory), *tiny_inputs)
    assert_same_outputs(tiny_lorentz, load_any(directory / "model.safetensors"), *tiny_inputs)
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["model"]  # no temporary left behind


def test_native_root_embedding_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build_model("tiny", "euclidean")
    model.root_embedding = torch.randn(128)
    loaded = load_model(save_model(model, tmp_path / "m"))
    assert torch.equal(loaded.root_embedding, model.root_embedding)


def test_save_refuses_non_empty_directory(tmp_path, tiny_lorentz, tiny_inputs):
    target = tmp_path / "model"
    target.mkdir()
    save_model(tiny_lorentz, target)  # an empty directory is fine
    with pytest.raises(CheckpointError, match="not empty"):
        save_model(tiny_lorentz, target)
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("precious")
    with pytest.raises(CheckpointError, match="overwrite=True"):
        save_model(tiny_lorentz, other)
    assert (other / "keep.txt").read_text() == "precious"
    torch.manual_seed(9)
    replacement = build_model("tiny", "lorentz").eval()
    save_model(replacement, target, overwrite=True)
    assert_same_outputs(replacement, load_model(target), *tiny_inputs)
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="not a directory"):
        save_model(tiny_lorentz, tmp_path / "file", overwrite=True)
    with pytest.raises(ValueError, match="JSON"):
        save_model(tiny_lorentz, tmp_path / "bad-meta", metadata={"x": object()})
    assert not (tmp_path / "bad-meta").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "model", "other"]


def test_native_errors(tmp_path, tiny_lorentz):
    directory = save_model(tiny_lorentz, tmp_path / "m")
    weights = directory / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="model.safetensors.*corrupt or truncated"):
        load_model(directory)
    (directory / "config.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CheckpointError, match="not a 'vlunlearn-model'"):
        load_model(directory)
    with pytest.raises(CheckpointError, match="config.json is missing"):
        load_model(tmp_path)
    with pytest.raises(CheckpointError, match="no model"):
        load_any(tmp_path / "absent")
    (tmp_path / "weights.bin").write_bytes(b"0")
    with pytest.raises(CheckpointError, match="do not know how to load"):
        load_any(tmp_path / "weights.bin")


def test_native_key_mismatch_is_named(tmp_path, tiny_lorentz):
    from safetensors.torch import load_file, save_file

    directory = save_model(tiny_lorentz, tmp_path / "m")
    state = load_file(directory / "model.safetensors")
    del state["logit_scale"]
    state["extra.bias"] = torch.zeros(2)
    save_file(state, directory / "model.safetensors")
    with pytest.raises(CheckpointError, match="missing keys 1: logit_scale.*unexpected keys 1: extra.bias"):
        load_model(directory)


def test_load_any_dispatches_on_pth(tmp_path, tiny_lorentz, tiny_inputs):
    path = export_meru_checkpoint(tiny_lorentz, tmp_path / "x.pt")
    assert_same_outputs(tiny_lorentz, load_any(path), *tiny_inputs)


# --------------------------------------------------------------------------- atomic writes


def test_atomic_writes(tmp_path):
    target = tmp_path / "sub" / "data.npy"
    atomic_write_bytes(target, b"one")
    assert target.read_bytes() == b"one"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(target) as tmp:
            assert tmp.parent == target.parent and tmp.name.endswith("data.npy") and tmp != target
            tmp.write_bytes(b"partial")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"one"
    assert os.listdir(target.parent) == ["data.npy"]
    atomic_write_text(tmp_path / "t.json", "héllo\n")
    assert (tmp_path / "t.json").read_text(encoding="utf-8") == "héllo\n"
    with pytest.raises(FileNotFoundError, match="nothing was written"):
        with atomic_path(tmp_path / "never"):
            pass
    assert not (tmp_path / "never").exists()

"""Graphs as the non-text side of pairs: GraphSet storage, PairDataset with graphs, graph models."""

from __future__ import annotations

import pytest
import torch

from vlunlearn.data import PairDataset
from vlunlearn.data.graphs import GraphSet, concat_inputs
from vlunlearn.errors import CheckpointError, DataError
from vlunlearn.evaluation.memo import MemoEncoder
from vlunlearn.models import ContrastiveModel, export_meru_checkpoint, load_model, model_config, save_model

NODE_VOCAB, EDGE_VOCAB = (5, 3), (4,)


def chain(length: int, kind: int = 0) -> dict:
    """A path graph of ``length`` nodes with node features ``(i % 5, kind)``."""
    return {"nodes": [[i % 5, kind] for i in range(length)], "edges": [[i, i + 1] for i in range(length - 1)],
            "edge_features": [[i % 4] for i in range(length - 1)]}


def graph_set(graphs: list[dict], node_vocab=NODE_VOCAB, edge_vocab=EDGE_VOCAB) -> GraphSet:
    nodes = [row for g in graphs for row in g["nodes"]]
    edges = [row for g in graphs for row in g["edges"]]
    features = [row for g in graphs for row in g["edge_features"]]
    node_offsets = torch.tensor([0] + [len(g["nodes"]) for g in graphs]).cumsum(0)
    edge_offsets = torch.tensor([0] + [len(g["edges"]) for g in graphs]).cumsum(0)
    return GraphSet(torch.tensor(nodes, dtype=torch.int64).view(-1, len(node_vocab)),
                    torch.tensor(edges, dtype=torch.int64).view(-1, 2),
                    torch.tensor(features, dtype=torch.int64).view(-1, len(edge_vocab)),
                    node_offsets, edge_offsets, node_vocab, edge_vocab)


GRAPHS = [chain(3), chain(1), chain(5, 1), chain(2, 2)]


def test_indexing_keeps_each_graph_and_flat_links_both_directions():
    graphs = graph_set(GRAPHS)
    assert len(graphs) == 4 and graphs.shape == (4,)
    part = graphs[torch.tensor([2, 0])]
    assert part.node_offsets.tolist() == [0, 5, 8] and part.edge_offsets.tolist() == [0, 4, 6]
    assert torch.equal(part.node_features[:5], graphs.node_features[4:9])
    assert torch.equal(graphs[1:3].node_features, graphs[torch.tensor([False, True, True, False])].node_features)
    flat = part.flat()
    assert flat.graph_index.tolist() == [0] * 5 + [1] * 3 and flat.num_graphs == 2
    # graph 0's bonds (local 0-1 .. 3-4), then graph 1's shifted by 5, each in both directions
    pairs = set(map(tuple, flat.edges.T.tolist()))
    assert pairs == {(0, 1), (1, 2), (2, 3), (3, 4), (5, 6), (6, 7)} | {(1, 0), (2, 1), (3, 2), (4, 3), (6, 5), (7, 6)}
    assert flat.edge_features.shape == (12, 1)


def test_concat_and_keys_identify_graphs_by_content():
    graphs = graph_set(GRAPHS)
    joined = concat_inputs([graphs[torch.tensor([0, 1])], graphs[torch.tensor([2, 3])]])
    assert torch.equal(joined.node_features, graphs.node_features) and torch.equal(joined.edge_offsets, graphs.edge_offsets)
    keys = graphs.graph_keys()
    assert len(set(keys)) == 4 and graphs[torch.tensor([2])].graph_keys() == [keys[2]]
    assert graph_set([chain(3)]).graph_keys() == [keys[0]] and graph_set([chain(3, 1)]).graph_keys() != [keys[0]]


@pytest.mark.parametrize("change, message", [
    (lambda g: g.update(nodes=[]), "no nodes"),
    (lambda g: g.update(nodes=[[5, 0], [0, 0], [0, 0]]), "node feature 0 must lie in \\[0, 5\\)"),
    (lambda g: g.update(edge_features=[[4], [0]]), "edge feature 0"),
    (lambda g: g.update(edges=[[0, 3], [1, 2]]), "outside its graph"),
])
def test_bad_graphs_are_refused_with_the_reason(change, message):
    first = chain(3)
    change(first)
    if not first["nodes"]:
        first["edges"], first["edge_features"] = [], []
    with pytest.raises(DataError, match=message):
        graph_set([first, chain(2)])


def pairs_of_graphs(n: int = 4) -> PairDataset:
    return PairDataset(name="graphs", inputs=graph_set(GRAPHS[:n]), captions=[(f"graph {i}.",) for i in range(n)],
                       concepts=[frozenset({"a" if i % 2 else "b"}) for i in range(n)],
                       labels=torch.tensor([i % 2 for i in range(n)]), ids=[f"g{i}" for i in range(n)],
                       class_names=("b", "a"))


def test_a_pair_dataset_of_graphs_subsets_batches_and_hashes_its_graphs():
    data = pairs_of_graphs()
    assert data.modality == "graph" and "graphs" in repr(data)
    batch = data.input_batch([3, 1])
    assert isinstance(batch, GraphSet) and batch.node_offsets.tolist() == [0, 2, 3]
    assert data.subset([2]).inputs.node_features.shape == (5, 2)
    assert data.content_hash() == pairs_of_graphs().content_hash()
    other = pairs_of_graphs()
    other.inputs.node_features[0, 0] = 4
    assert other.content_hash() != data.content_hash()


def tiny_graph_model(geometry: str) -> ContrastiveModel:
    config = model_config("tiny-graph", geometry).replace(node_vocab=NODE_VOCAB, edge_vocab=EDGE_VOCAB, graph_width=16,
                                                          graph_depth=2, text_width=16, text_heads=2, text_depth=1,
                                                          embed_dim=8, vocab_size=100, context_length=8)
    torch.manual_seed(0)
    return ContrastiveModel(config).eval()


@pytest.mark.parametrize("geometry", ["euclidean", "lorentz"])
def test_graph_models_encode_each_graph_alone_as_in_a_batch(geometry):
    model = tiny_graph_model(geometry)
    graphs = graph_set(GRAPHS)
    with torch.no_grad():
        together = model.encode_input(graphs)
        alone = torch.cat([model.encode_input(graphs[torch.tensor([i])]) for i in range(4)])
    assert together.shape == (4, 8)
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)
    assert sorted(n for n, _ in model.named_parameters() if not n.startswith(("graph.", "textual."))) == sorted(
        ["graph_proj.weight", "textual_proj.weight", "logit_scale"]
        + (["curv", "graph_alpha", "textual_alpha"] if geometry == "lorentz" else []))
    assert {model.parameter_tower(n) for n, _ in model.named_parameters()} == {"graph", "text", "shared"}


def test_a_model_refuses_the_other_modality():
    with pytest.raises(ValueError, match="encodes graphs, not images"):
        tiny_graph_model("euclidean").encode_input(torch.zeros(1, 1, 28, 28))
    image_model = ContrastiveModel(model_config("tiny"))
    with pytest.raises(ValueError, match="encodes images, not graphs"):
        image_model.encode_input(graph_set(GRAPHS))


def test_graph_models_save_and_load_but_not_in_meru_layout(tmp_path):
    model = tiny_graph_model("lorentz")
    save_model(model, tmp_path / "model")
    loaded = load_model(tmp_path / "model")
    assert loaded.config == model.config
    graphs = graph_set(GRAPHS)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_input(graphs), model.encode_input(graphs))
    with pytest.raises(CheckpointError, match="MERU's layout holds image models"):
        export_meru_checkpoint(model, tmp_path / "model.pth")


def test_memoized_graph_embeddings_equal_fresh_ones():
    model = tiny_graph_model("euclidean")
    memo = MemoEncoder(model)
    graphs = graph_set(GRAPHS)
    first = memo.encode_input(graphs[torch.tensor([0, 1])])
    both = memo.encode_input(graphs)
    assert memo.misses == 4 and memo.hits == 2
    with torch.no_grad():
        torch.testing.assert_close(both, model.encode_input(graphs), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(both[:2], first)

"""Graph tower: invariance to node and edge order, isolation of the graphs of a batch,
gradients (with and without checkpointing) and input validation."""

from __future__ import annotations

import pytest
import torch

from vlunlearn.errors import ConfigError, DataError
from vlunlearn.models.graph import GraphEncoder

NODE_VOCAB = (7, 3, 4)
EDGE_VOCAB = (4, 2)
Graph = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # nodes, edges (2, E) local, edge features


def random_graph(n_nodes: int, extra_bonds: int, seed: int) -> Graph:
    """A connected graph: a random tree plus extra bonds, each bond in both directions with one
    feature row shared by the two directions."""
    gen = torch.Generator().manual_seed(seed)
    nodes = torch.stack([torch.randint(v, (n_nodes,), generator=gen) for v in NODE_VOCAB], dim=1)
    bonds = [(int(torch.randint(i, (), generator=gen)), i) for i in range(1, n_nodes)]
    for _ in range(extra_bonds):
        a, b = torch.randperm(n_nodes, generator=gen)[:2].tolist()
        bonds.append((a, b))
    bond_features = torch.stack([torch.randint(v, (len(bonds),), generator=gen) for v in EDGE_VOCAB], dim=1)
    pairs = torch.tensor(bonds, dtype=torch.int64).reshape(-1, 2).T
    edges = torch.cat([pairs, pairs.flip(0)], dim=1)
    return nodes, edges, torch.cat([bond_features, bond_features])


def collate(graphs: list[Graph]) -> dict:
    """Flat batch (forward's keyword arguments) with global node indices."""
    offsets = torch.tensor([0] + [g[0].shape[0] for g in graphs]).cumsum(0)
    return dict(
        nodes=torch.cat([g[0] for g in graphs]),
        edges=torch.cat([g[1] + offsets[i] for i, g in enumerate(graphs)], dim=1),
        edge_features=torch.cat([g[2] for g in graphs]),
        graph_index=torch.cat([torch.full((g[0].shape[0],), i) for i, g in enumerate(graphs)]),
        num_graphs=len(graphs),
    )


def encoder(dtype: torch.dtype = torch.float64, depth: int = 3, seed: int = 0) -> GraphEncoder:
    torch.manual_seed(seed)
    return GraphEncoder(NODE_VOCAB, EDGE_VOCAB, width=16, depth=depth).to(dtype).eval()


GRAPHS = [random_graph(9, 2, seed=1), random_graph(4, 0, seed=2), random_graph(13, 3, seed=3), random_graph(1, 0, seed=4)]


def tight(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- invariances


def test_output_shape_and_dtype() -> None:
    for dtype in (torch.float32, torch.float64):
        out = encoder(dtype)(**collate(GRAPHS))
        assert out.shape == (len(GRAPHS), 16) and out.dtype == dtype and out.isfinite().all()


def test_depth_zero_is_layer_norm_of_mean_node_embedding() -> None:
    model = encoder(depth=0)
    expected = []
    for nodes, _, _ in GRAPHS:
        embedded = sum(model.node_embed[k].weight[nodes[:, k]] for k in range(len(NODE_VOCAB)))
        expected.append(torch.nn.functional.layer_norm(embedded.mean(0), (16,), eps=1e-5))
    tight(model(**collate(GRAPHS)), torch.stack(expected))


def test_node_permutation_invariance() -> None:
    model = encoder()
    nodes, edges, edge_features = GRAPHS[2]
    perm = torch.randperm(nodes.shape[0], generator=torch.Generator().manual_seed(0))  # new node i = old perm[i]
    assert not torch.equal(perm, torch.arange(len(perm)))
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(len(perm))
    permuted = (nodes[perm], inverse[edges], edge_features)
    batch, batch_permuted = collate([GRAPHS[0], GRAPHS[2]]), collate([GRAPHS[0], permuted])
    assert not torch.equal(batch["nodes"], batch_permuted["nodes"])
    tight(model(**batch), model(**batch_permuted))


def test_edge_order_invariance() -> None:
    model = encoder()
    batch = collate(GRAPHS)
    order = torch.randperm(batch["edges"].shape[1], generator=torch.Generator().manual_seed(0))
    shuffled = dict(batch, edges=batch["edges"][:, order], edge_features=batch["edge_features"][order])
    tight(model(**batch), model(**shuffled))


def test_graph_alone_equals_graph_in_batch() -> None:
    model = encoder()
    together = model(**collate(GRAPHS))
    for i, graph in enumerate(GRAPHS):
        tight(model(**collate([graph]))[0], together[i])


def test_changing_one_graph_leaves_the_others() -> None:
    model = encoder()
    changed = list(GRAPHS)
    changed[1] = random_graph(6, 1, seed=99)
    before, after = model(**collate(GRAPHS)), model(**collate(changed))
    assert (before[1] - after[1]).abs().max() > 1e-3
    for i in (0, 2, 3):
        tight(before[i], after[i])


def test_different_graphs_differ() -> None:
    model = encoder()
    nodes, edges, edge_features = GRAPHS[0]
    other_atom = nodes.clone()
    other_atom[0, 0] = (other_atom[0, 0] + 1) % NODE_VOCAB[0]
    other_bond = edge_features.clone()
    other_bond[[0, edges.shape[1] // 2], 0] = (other_bond[0, 0] + 1) % EDGE_VOCAB[0]  # both directions of bond 0
    out = model(**collate([GRAPHS[0], (other_atom, edges, edge_features), (nodes, edges, other_bond)]))
    assert (out[0] - out[1]).abs().max() > 1e-3
    assert (out[0] - out[2]).abs().max() > 1e-3


# --------------------------------------------------------------------------- gradients


def weighted_sum(out: torch.Tensor) -> torch.Tensor:
    # A plain sum of LayerNorm outputs has zero gradient before the norm (sum of the
    # normalised vector is identically 0), so weight the outputs with fixed random numbers.
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(5)).to(out.dtype)
    return (out * weights).sum()


def test_gradients_reach_every_parameter() -> None:
    model = encoder().train()
    weighted_sum(model(**collate(GRAPHS))).backward()
    names = [name for name, _ in model.named_parameters()]
    assert "node_embed.2.weight" in names and "layers.2.edge_embed.1.weight" in names and "layers.0.eps" in names
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_grad_checkpointing_same_gradients() -> None:
    batch = collate(GRAPHS)
    grads = []
    for enabled in (False, True):
        model = encoder(torch.float32).train()
        model.grad_checkpointing = enabled
        calls = []
        model.layers[0].register_forward_pre_hook(lambda *_: calls.append(1))
        weighted_sum(model(**batch)).backward()
        assert len(calls) == (2 if enabled else 1)  # checkpointing re-runs the layer in backward
        grads.append({name: p.grad for name, p in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-6, atol=1e-7, msg=name)


# --------------------------------------------------------------------------- validation


def base() -> dict:
    """A valid batch of three graphs (9, 4 and 13 nodes)."""
    return collate(GRAPHS[:3])


def _set(key: str, value) -> dict:
    return dict(base(), **{key: value})


def _edit(key: str, index: tuple, value: int) -> dict:
    batch = base()
    tensor = batch[key].clone()
    tensor[index] = value
    return dict(batch, **{key: tensor})


N_NODES = sum(g[0].shape[0] for g in GRAPHS[:3])
BAD_BATCHES = {
    "float nodes": (lambda: _set("nodes", base()["nodes"].float()), r"nodes must be an int64 tensor.*float32"),
    "int32 edges": (lambda: _set("edges", base()["edges"].int()), r"edges must be an int64 tensor.*int32"),
    "missing node feature": (lambda: _set("nodes", base()["nodes"][:, :2]), r"nodes must have shape \(n_nodes, 3\)"),
    "edges not (2, E)": (
        lambda: _set("edges", base()["edges"].T.contiguous()),
        r"edges must have shape \(2, n_edges\)",
    ),
    "edge feature rows": (lambda: _set("edge_features", base()["edge_features"][1:]), r"edge_features must have shape"),
    "graph_index length": (lambda: _set("graph_index", base()["graph_index"][:-1]), r"graph_index must have shape"),
    "num_graphs not int": (lambda: _set("num_graphs", 3.0), r"num_graphs must be a positive int"),
    "node index too big": (
        lambda: _edit("nodes", (5, 1), 3),
        r"node feature 1 has index 3 at node 5, outside its vocabulary of size 3",
    ),
    "node index negative": (
        lambda: _edit("nodes", (2, 0), -1),
        r"node feature 0 has index -1 at node 2, outside its vocabulary of size 7",
    ),
    "edge index too big": (
        lambda: _edit("edge_features", (4, 0), 4),
        r"edge feature 0 has index 4 at edge 4, outside its vocabulary of size 4",
    ),
    "graph id too big": (lambda: _set("num_graphs", 2), r"graph_index is 2 at node 13, outside \[0, num_graphs=2\)"),
    "empty graph": (lambda: _set("num_graphs", 4), r"graph 3 of the batch has no nodes"),
    "dangling edge": (
        lambda: _edit("edges", (1, 3), N_NODES),
        rf"edge 3 references node {N_NODES}, but the batch has {N_NODES} nodes",
    ),
    "crossing edge": (
        lambda: _edit("edges", (1, 0), N_NODES - 1),
        r"edge 0 joins node \d+ \(graph 0\) to node \d+ \(graph 2\)",
    ),
}


@pytest.mark.parametrize("case", list(BAD_BATCHES))
def test_validation_errors(case: str) -> None:
    make, message = BAD_BATCHES[case]
    model = encoder(depth=1)
    model(**base())  # the unedited batch is fine
    with pytest.raises(DataError, match=message) as raised:
        model(**make())
    assert isinstance(raised.value, ValueError)


def test_empty_graph_in_the_middle() -> None:
    batch = base()
    batch["graph_index"] = torch.where(batch["graph_index"] == 0, 0, batch["graph_index"] + 1)
    batch["num_graphs"] = 4
    with pytest.raises(DataError, match=r"graph 1 of the batch has no nodes"):
        encoder(depth=1)(**batch)


@pytest.mark.parametrize(
    "kwargs",
    [dict(node_vocab=()), dict(edge_vocab=(4, 0)), dict(width=0), dict(depth=-1)],
)
def test_bad_configuration(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        GraphEncoder(**{**dict(node_vocab=NODE_VOCAB, edge_vocab=EDGE_VOCAB, width=8, depth=1), **kwargs})

"""Graph tower: a GINE-style message-passing network over graphs with categorical features.

A batch is flat (PyG-style, no padding): the nodes of all graphs stacked, directed edges by
global node index (an undirected bond given in both directions), and ``graph_index`` naming
each node's graph. Each layer sums ``relu(h_j + e_ji)`` over the edges ``j -> i`` into node
``i`` (``index_add_``) and updates ``h <- h + mlp(norm((1 + eps) * h + m))``, a pre-norm
residual form of GINE (Hu et al., 2020) with a learnable ``eps`` per layer.

Readout: the residual stream is mean-pooled per graph and the pooled vector goes through a
final LayerNorm (``norm``). Mean rather than sum pooling keeps the feature's scale independent
of the molecule's size (sum pooling grows with the atom count and must be tamed by the
projection); the LayerNorm after pooling gives every graph a feature of the same scale, as the
ViT's final norm does for its CLS token, which the joint-space projection (and MERU's
exponential map) expects. Max pooling is left out: it passes gradient to one node per channel
and adds little for molecules, whose node states already describe their neighbourhoods. The
cost of mean pooling is that a graph and several disjoint copies of it pool alike.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from vlunlearn.errors import ConfigError, DataError
from vlunlearn.models.vit import Mlp, init_linear_or_norm_

__all__ = ["GraphEncoder", "GineLayer", "check_graph_batch", "mean_pool"]


def _embed_sum(embeds: nn.ModuleList, features: Tensor) -> Tensor:
    """Sum of per-column embeddings: ``(n, F)`` indices -> ``(n, width)``."""
    out = embeds[0](features[:, 0])
    for k in range(1, len(embeds)):
        out = out + embeds[k](features[:, k])
    return out


def mean_pool(x: Tensor, graph_index: Tensor, num_graphs: int) -> Tensor:
    """Per-graph mean of node rows: ``(n_nodes, W)``, ``(n_nodes,)`` -> ``(num_graphs, W)``.

    Every graph must have at least one node (see :func:`check_graph_batch`)."""
    sums = x.new_zeros(num_graphs, x.shape[1]).index_add_(0, graph_index, x)
    counts = torch.bincount(graph_index, minlength=num_graphs).to(x.dtype)
    return sums / counts[:, None]


def _check_tensor(name: str, value: object, shape: tuple[int | None, ...], layout: str) -> Tensor:
    """Raise DataError unless ``value`` is an int64 tensor matching ``shape`` (None: any size)."""
    if not isinstance(value, Tensor) or value.dtype != torch.int64:
        kind = value.dtype if isinstance(value, Tensor) else type(value).__name__
        raise DataError(f"{name} must be an int64 tensor of shape {layout}, got {kind}")
    if value.ndim != len(shape) or any(s is not None and s != v for s, v in zip(shape, value.shape)):
        raise DataError(f"{name} must have shape {layout}, got {tuple(value.shape)}")
    return value


def _check_vocab(kind: str, features: Tensor, vocab: Sequence[int]) -> None:
    """Raise DataError naming the first feature column with an index outside ``[0, vocab[k])``."""
    for k, size in enumerate(vocab):
        bad = ((features[:, k] < 0) | (features[:, k] >= size)).nonzero()
        if len(bad):
            row = int(bad[0, 0])
            raise DataError(
                f"{kind} feature {k} has index {int(features[row, k])} at {kind} {row}, "
                f"outside its vocabulary of size {size}"
            )


def check_graph_batch(
    nodes: Tensor,
    edges: Tensor,
    edge_features: Tensor,
    graph_index: Tensor,
    num_graphs: int,
    node_vocab: Sequence[int],
    edge_vocab: Sequence[int],
) -> None:
    """Raise :class:`~vlunlearn.errors.DataError` (a ``ValueError``) unless the flat batch is well formed.

    Checks dtypes (int64) and shapes, every feature index against its vocabulary, that
    ``graph_index`` lies in ``[0, num_graphs)`` and covers every graph, that edges name
    existing nodes and stay within one graph. Nodes of a graph need not be contiguous.
    """
    if isinstance(num_graphs, bool) or not isinstance(num_graphs, int) or num_graphs < 1:
        raise DataError(f"num_graphs must be a positive int, got {num_graphs!r}")
    n_nodes = _check_tensor("nodes", nodes, (None, len(node_vocab)), f"(n_nodes, {len(node_vocab)})").shape[0]
    n_edges = _check_tensor("edges", edges, (2, None), "(2, n_edges)").shape[1]
    _check_tensor("edge_features", edge_features, (n_edges, len(edge_vocab)), f"({n_edges}, {len(edge_vocab)})")
    _check_tensor("graph_index", graph_index, (n_nodes,), f"({n_nodes},)")
    _check_vocab("node", nodes, node_vocab)
    _check_vocab("edge", edge_features, edge_vocab)
    outside = ((graph_index < 0) | (graph_index >= num_graphs)).nonzero()
    if len(outside):
        node = int(outside[0, 0])
        raise DataError(
            f"graph_index is {int(graph_index[node])} at node {node}, outside [0, num_graphs={num_graphs})"
        )
    empty = (torch.bincount(graph_index, minlength=num_graphs) == 0).nonzero()
    if len(empty):
        raise DataError(
            f"graph {int(empty[0, 0])} of the batch has no nodes "
            f"(graph_index must cover every graph id 0..{num_graphs - 1})"
        )
    dangling = ((edges < 0) | (edges >= n_nodes)).nonzero()
    if len(dangling):
        end, edge = (int(i) for i in dangling[0])
        raise DataError(f"edge {edge} references node {int(edges[end, edge])}, but the batch has {n_nodes} nodes")
    crossing = (graph_index[edges[0]] != graph_index[edges[1]]).nonzero()
    if len(crossing):
        edge = int(crossing[0, 0])
        src, dst = int(edges[0, edge]), int(edges[1, edge])
        raise DataError(
            f"edge {edge} joins node {src} (graph {int(graph_index[src])}) to node {dst} "
            f"(graph {int(graph_index[dst])}); edges must stay within a graph"
        )


class GineLayer(nn.Module):
    """One pre-norm GINE layer: ``h + mlp(norm((1 + eps) * h + sum_{j->i} relu(h_j + e_ji)))``.

    ``forward(h, edges, edge_features)``: ``(n_nodes, W)`` float, ``(2, E)`` and ``(E, F_edge)``
    int64 -> ``(n_nodes, W)``. Edge embeddings (``edge_embed.{k}``) are per layer.
    """

    def __init__(self, width: int, edge_vocab: Sequence[int]) -> None:
        super().__init__()
        self.edge_embed = nn.ModuleList(nn.Embedding(size, width) for size in edge_vocab)
        self.eps = nn.Parameter(torch.zeros(()))
        self.norm = nn.LayerNorm(width)
        self.mlp = Mlp(width, 2 * width)

    def forward(self, h: Tensor, edges: Tensor, edge_features: Tensor) -> Tensor:
        messages = torch.relu(h[edges[0]] + _embed_sum(self.edge_embed, edge_features))
        aggregated = torch.zeros_like(h).index_add_(0, edges[1], messages)
        return h + self.mlp(self.norm((1 + self.eps) * h + aggregated))


class GraphEncoder(nn.Module):
    """Message-passing graph tower returning one pooled feature per graph.

    Args:
        node_vocab: vocabulary size of each categorical node feature (at least one feature).
        edge_vocab: vocabulary size of each categorical edge feature (at least one feature).
        width: node state width (the output width).
        depth: number of :class:`GineLayer` s (0 pools the node embeddings).

    ``forward(nodes, edges, edge_features, graph_index, num_graphs)`` takes the flat batch
    (field names as in :class:`~vlunlearn.data.graphs.FlatGraphs`, checked by
    :func:`check_graph_batch`) and returns ``(num_graphs, width)`` in the module's dtype: the
    final LayerNorm of each graph's mean node state. The result does not depend on the order
    of nodes or edges, nor on the other graphs of the batch.

    With ``grad_checkpointing`` True, each layer's activations are recomputed in backward
    whenever autograd is on (same gradients, less memory), as in the ViT and text towers.
    """

    def __init__(self, node_vocab: tuple[int, ...], edge_vocab: tuple[int, ...], width: int, depth: int) -> None:
        super().__init__()
        for name, vocab in (("node_vocab", node_vocab), ("edge_vocab", edge_vocab)):
            if len(vocab) == 0 or any(int(size) < 1 for size in vocab):
                raise ConfigError(f"{name} must list at least one feature, each of vocabulary size >= 1, got {vocab}")
        if width < 1 or depth < 0:
            raise ConfigError(f"width must be >= 1 and depth >= 0, got width {width}, depth {depth}")
        self.node_vocab = tuple(int(size) for size in node_vocab)
        self.edge_vocab = tuple(int(size) for size in edge_vocab)
        self.width = width
        self.node_embed = nn.ModuleList(nn.Embedding(size, width) for size in self.node_vocab)
        self.layers = nn.ModuleList(GineLayer(width, self.edge_vocab) for _ in range(depth))
        self.grad_checkpointing = False  # recompute layer activations in backward (see ContrastiveModel)
        self.norm = nn.LayerNorm(width)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Embeddings N(0, 0.02); linears truncated normal (std 0.02) with zero bias, as the ViT;
        LayerNorms identity; ``eps`` 0. The LayerNorm before each MLP keeps its input at unit
        scale whatever the small embedding scale, so no depth-dependent scaling is needed."""
        for module in self.modules():
            if isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
            elif isinstance(module, GineLayer):
                nn.init.zeros_(module.eps)
            else:
                init_linear_or_norm_(module)

    def forward(
        self, nodes: Tensor, edges: Tensor, edge_features: Tensor, graph_index: Tensor, num_graphs: int,
        check: bool = True,
    ) -> Tensor:
        if check:  # callers holding a checked GraphSet of this vocabulary skip it (a pass over the batch per step)
            check_graph_batch(nodes, edges, edge_features, graph_index, num_graphs, self.node_vocab, self.edge_vocab)
        h = _embed_sum(self.node_embed, nodes)
        for layer in self.layers:
            if self.grad_checkpointing and torch.is_grad_enabled():
                h = checkpoint(layer, h, edges, edge_features, use_reentrant=False)
            else:
                h = layer(h, edges, edge_features)
        return self.norm(mean_pool(h, graph_index, num_graphs))

    def extra_repr(self) -> str:
        return f"node_vocab={self.node_vocab}, edge_vocab={self.edge_vocab}, width={self.width}"

"""Graphs as the non-text side of a pair (molecules for graph-language models).

:class:`GraphSet` holds N graphs flat, in compact integer arrays with per-graph offsets, and
behaves like a batch-first tensor where the data code needs one: ``len``, ``shape[0]``,
indexing by a slice, an index tensor or a boolean mask, ``to(device)``. A
:class:`~vlunlearn.data.datasets.PairDataset` keeps its graphs in one; a batch of graphs is a
``GraphSet`` too, which a graph tower reads through :meth:`GraphSet.flat`.

Nodes and edges carry categorical features (integer indices into per-feature vocabularies
``node_vocab`` and ``edge_vocab``); edges are undirected and stored once, by the local indices
of their two nodes within their graph.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from vlunlearn.errors import DataError

__all__ = ["GraphSet", "FlatGraphs", "concat_inputs"]


@dataclass(frozen=True)
class FlatGraphs:
    """A batch of graphs as a graph tower reads it (global node indices, both edge directions).

    Attributes:
        nodes: int64 ``(n_nodes, F_node)`` node feature indices.
        edges: int64 ``(2, 2 * n_bonds)`` directed edges (source, target), each bond both ways.
        edge_features: int64 ``(2 * n_bonds, F_edge)``.
        graph_index: int64 ``(n_nodes,)`` the graph of each node.
        num_graphs: number of graphs ``B``.
    """

    nodes: Tensor
    edges: Tensor
    edge_features: Tensor
    graph_index: Tensor
    num_graphs: int


class GraphSet:
    """N graphs with categorical node and edge features, stored flat.

    Args:
        node_features: integer ``(total_nodes, F_node)``, the nodes of graph ``i`` at rows
            ``node_offsets[i]:node_offsets[i + 1]``.
        edge_index: integer ``(total_edges, 2)``, each undirected edge once, as the indices of
            its two nodes *within its graph*; graph ``i``'s edges at ``edge_offsets[i]:edge_offsets[i + 1]``.
        edge_features: integer ``(total_edges, F_edge)``.
        node_offsets, edge_offsets: int64 ``(N + 1,)``, non-decreasing from 0.
        node_vocab, edge_vocab: the vocabulary size of each feature column.
        check: validate the arrays (shapes, offsets, vocabularies, no empty graph, edges
            inside their graphs) and raise :class:`~vlunlearn.errors.DataError` if wrong.
    """

    def __init__(
        self,
        node_features: Tensor,
        edge_index: Tensor,
        edge_features: Tensor,
        node_offsets: Tensor,
        edge_offsets: Tensor,
        node_vocab: Sequence[int],
        edge_vocab: Sequence[int],
        check: bool = True,
    ) -> None:
        self.node_features = torch.as_tensor(node_features)
        self.edge_index = torch.as_tensor(edge_index)
        self.edge_features = torch.as_tensor(edge_features)
        self.node_offsets = torch.as_tensor(node_offsets, dtype=torch.int64)
        self.edge_offsets = torch.as_tensor(edge_offsets, dtype=torch.int64)
        self.node_vocab = tuple(int(v) for v in node_vocab)
        self.edge_vocab = tuple(int(v) for v in edge_vocab)
        if check:  # graphs derived from checked ones (subsets, moves, concatenations) skip it
            self._check()

    def _check(self) -> None:
        for name in ("node_features", "edge_index", "edge_features", "node_offsets", "edge_offsets"):
            value = getattr(self, name)
            if value.dtype.is_floating_point or value.dtype == torch.bool or value.dtype.is_complex:
                raise DataError(f"graphs: {name} must hold integers, not {value.dtype}")
        nodes, edges = self.node_features, self.edge_index
        if nodes.ndim != 2 or nodes.shape[1] != len(self.node_vocab):
            raise DataError(f"graphs: node_features must be (total_nodes, {len(self.node_vocab)}), not {tuple(nodes.shape)}")
        if edges.ndim != 2 or edges.shape[1] != 2:
            raise DataError(f"graphs: edge_index must be (total_edges, 2), not {tuple(edges.shape)}")
        if self.edge_features.shape != (edges.shape[0], len(self.edge_vocab)):
            raise DataError(f"graphs: edge_features must be ({edges.shape[0]}, {len(self.edge_vocab)}), "
                            f"not {tuple(self.edge_features.shape)}")
        for offsets, total, what in ((self.node_offsets, nodes.shape[0], "node"), (self.edge_offsets, edges.shape[0], "edge")):
            if offsets.ndim != 1 or offsets.numel() < 1 or offsets[0] != 0 or offsets[-1] != total:
                raise DataError(f"graphs: {what}_offsets must run from 0 to {total}")
            if (offsets.diff() < 0).any():
                raise DataError(f"graphs: {what}_offsets must be non-decreasing")
        if self.edge_offsets.numel() != self.node_offsets.numel():
            raise DataError("graphs: node_offsets and edge_offsets must describe the same number of graphs")
        empty = (self.node_offsets.diff() == 0).nonzero().flatten()
        if empty.numel():
            raise DataError(f"graphs: graph {int(empty[0])} has no nodes (an empty molecule?)")
        for features, vocab, what in ((nodes, self.node_vocab, "node"), (self.edge_features, self.edge_vocab, "edge")):
            if features.numel():
                low, high = features.amin(0), features.amax(0)
                for k, size in enumerate(vocab):
                    if low[k] < 0 or high[k] >= size:
                        raise DataError(f"graphs: {what} feature {k} must lie in [0, {size})")
        if edges.numel():
            sizes = self.node_offsets.diff().repeat_interleave(self.edge_offsets.diff())
            if edges.min() < 0 or (edges.to(torch.int64).amax(1) >= sizes).any():
                raise DataError("graphs: an edge refers to a node outside its graph")

    def __len__(self) -> int:
        return self.node_offsets.numel() - 1

    @property
    def shape(self) -> tuple[int]:
        """``(N,)``: graphs are batch-first like a tensor."""
        return (len(self),)

    @property
    def device(self) -> torch.device:
        return self.node_features.device

    def __repr__(self) -> str:
        return f"GraphSet({len(self)} graphs, {self.node_features.shape[0]} nodes, {self.edge_index.shape[0]} edges)"

    def __getitem__(self, index: slice | Sequence[int] | Tensor) -> "GraphSet":
        """The graphs at ``index`` (a slice, integer indices or a boolean mask), in that order."""
        if isinstance(index, slice):
            index = torch.arange(len(self))[index]
        index = torch.as_tensor(index, device=self.node_offsets.device)
        if index.dtype == torch.bool:
            index = index.nonzero().flatten()
        index = index.to(torch.int64).flatten()
        node_rows, node_offsets = _ranges(self.node_offsets, index)
        edge_rows, edge_offsets = _ranges(self.edge_offsets, index)
        return GraphSet(self.node_features[node_rows], self.edge_index[edge_rows], self.edge_features[edge_rows],
                        node_offsets, edge_offsets, self.node_vocab, self.edge_vocab, check=False)

    def to(self, device: torch.device | str) -> "GraphSet":
        return GraphSet(self.node_features.to(device), self.edge_index.to(device), self.edge_features.to(device),
                        self.node_offsets.to(device), self.edge_offsets.to(device), self.node_vocab, self.edge_vocab,
                        check=False)

    def flat(self) -> FlatGraphs:
        """The batch as a tower reads it: global node indices, every edge in both directions."""
        counts = self.node_offsets.diff()
        graph_index = torch.arange(len(self), device=self.device).repeat_interleave(counts)
        edge_graph = torch.arange(len(self), device=self.device).repeat_interleave(self.edge_offsets.diff())
        ends = self.edge_index.to(torch.int64) + self.node_offsets[:-1][edge_graph, None]  # (E, 2) global
        edges = torch.cat([ends.T, ends.T.flip(0)], dim=1)
        features = self.edge_features.to(torch.int64)
        return FlatGraphs(self.node_features.to(torch.int64), edges, torch.cat([features, features]), graph_index, len(self))

    def graph_keys(self) -> list[bytes]:
        """One 16-byte BLAKE2b digest per graph of its nodes, edges and their features (memoization keys)."""
        nodes = self.node_features.cpu().to(torch.int64).numpy()
        edges = torch.cat([self.edge_index, self.edge_features], 1).cpu().to(torch.int64).numpy()
        node_at, edge_at = self.node_offsets.tolist(), self.edge_offsets.tolist()
        return [
            hashlib.blake2b(nodes[node_at[i]:node_at[i + 1]].tobytes() + b"|" + edges[edge_at[i]:edge_at[i + 1]].tobytes(),
                            digest_size=16).digest()
            for i in range(len(self))
        ]

    def fingerprint(self) -> bytes:
        """SHA-256 over every array and the vocabularies (for dataset content hashes)."""
        digest = hashlib.sha256(repr((self.node_vocab, self.edge_vocab)).encode())
        for array in (self.node_features, self.edge_index, self.edge_features, self.node_offsets, self.edge_offsets):
            digest.update(str(tuple(array.shape)).encode())
            digest.update(array.cpu().to(torch.int64).contiguous().numpy().tobytes())
        return digest.digest()

    def to_arrays(self) -> dict[str, Tensor]:
        """The five arrays by name (what :meth:`from_arrays` reads)."""
        return {"node_features": self.node_features, "edge_index": self.edge_index, "edge_features": self.edge_features,
                "node_offsets": self.node_offsets, "edge_offsets": self.edge_offsets}

    @classmethod
    def from_arrays(cls, arrays, node_vocab: Sequence[int], edge_vocab: Sequence[int]) -> "GraphSet":
        return cls(*(torch.as_tensor(arrays[key]) for key in ("node_features", "edge_index", "edge_features",
                                                               "node_offsets", "edge_offsets")), node_vocab, edge_vocab)

    @classmethod
    def concat(cls, parts: Sequence["GraphSet"]) -> "GraphSet":
        """The graphs of every part, in order (parts must share vocabularies)."""
        first = parts[0]
        if any(p.node_vocab != first.node_vocab or p.edge_vocab != first.edge_vocab for p in parts):
            raise DataError("cannot concatenate graphs with different feature vocabularies")
        node_offsets, edge_offsets = [first.node_offsets[:1]], [first.edge_offsets[:1]]
        node_total = edge_total = 0
        for part in parts:
            node_offsets.append(part.node_offsets[1:] + node_total)
            edge_offsets.append(part.edge_offsets[1:] + edge_total)
            node_total += int(part.node_offsets[-1])
            edge_total += int(part.edge_offsets[-1])
        return cls(torch.cat([p.node_features for p in parts]), torch.cat([p.edge_index for p in parts]),
                   torch.cat([p.edge_features for p in parts]), torch.cat(node_offsets), torch.cat(edge_offsets),
                   first.node_vocab, first.edge_vocab, check=False)


def _ranges(offsets: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
    """Rows of the segments ``index`` of ``offsets`` concatenated, and the new offsets. ``(N+1,), (K,) -> (R,), (K+1,)``."""
    starts, counts = offsets[index], offsets[index + 1] - offsets[index]
    new_offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    within = torch.arange(int(new_offsets[-1]), device=offsets.device) - new_offsets[:-1].repeat_interleave(counts)
    return starts.repeat_interleave(counts) + within, new_offsets


def concat_inputs(parts: Sequence[Tensor | GraphSet]) -> Tensor | GraphSet:
    """Batch-first concatenation of input batches: images (``torch.cat``) or graphs."""
    if isinstance(parts[0], GraphSet):
        return GraphSet.concat(parts)
    return torch.cat(list(parts))

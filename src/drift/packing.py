"""Prefix-shared micro-batches: a micro-batch's examples as one tree of tokens.

A DRIFT example is an assistant turn with its whole history as the prompt, so the K trajectories of
a problem repeat the same start (system turn, question, often the same first replies), and every
example repeats the chat template's system turn. A left-padded batch runs each of those tokens
through the model once per row, forward and backward. A prefix tree runs it once:

- its nodes are the distinct prefixes of the rows (:func:`prefix_tree`), flattened in order of
  creation into one sequence of N tokens (a parent before its children);
- node n sits at position ``depth(n)`` and attends to itself and its ancestors only (an N x N
  boolean mask, True = attend): the same tokens at the same positions as in the row alone, so the
  same hidden states up to rounding;
- a row's logits are read at the nodes of its own path. The gradient reaches a shared node once,
  summed over the rows that read it: the padded batch's gradient, with each shared token's
  activations computed once.

What it costs: attention over the tree's N tokens is one dense N x N product (most of it masked),
against ``rows x width^2`` for the padded batch. Counting a token's work (its linear layers) as 1,
an attended pair costs ``pair_cost`` (:func:`pair_cost`), and a micro-batch is packed only where
``N + N^2 pair_cost`` is at most ``1 - MIN_GAIN`` of ``rows x (width + width^2 pair_cost)``
(:func:`worth_packing`). Models whose attention is not plain full attention (sliding windows,
ALiBi, flash-attention kernels that take no dense mask), and model types not checked yet, keep the
padded batch (:func:`supports_packing`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MIN_GAIN = 0.1
"""Pack a micro-batch when the tree's estimated cost is at most ``1 - MIN_GAIN`` of the padded batch's."""

MASKED_ATTENTION_SLOWDOWN = 2.0
"""A masked attention pair costs about this many times its FLOPs' share of a token's linear work:
fitted on four micro-batches of the demo's data, SmolLM2-135M, bfloat16, 2-core AMD EPYC with
AVX512-BF16, where the estimate with it gave 0.80x, 1.15x and 1.65x and the measurement 0.81x, 1.12x
and 1.61x (benchmarks/packing.py)."""

PACKABLE_ATTENTION = ("sdpa", "eager", "drift_sdpa")
"""transformers attention implementations that take an arbitrary 4D mask."""

PACKABLE_MODEL_TYPES = frozenset(
    {"llama", "mistral", "qwen2", "qwen3", "gemma", "phi3", "gpt2", "opt", "gpt_neox", "falcon"}
)
"""Model types whose packed logits equal the padded batch's (tiny random models of each, transformers
5.24, 2026-12-02; falcon without ALiBi). Others keep the padded batch: MPT, Bloom and ALiBi Falcon
bias attention by the key's index in the sequence, GPT-Neo's local layers by distance in it, so
a flattened tree is wrong or fails there. Add a type after checking it as tests/test_packing.py does."""


def prefix_tree(rows: list[list[int]]) -> tuple[list[int], list[int], list[list[int]]]:
    """The prefix tree of token rows: ``tokens`` and ``depths`` of its nodes in order of creation,
    and each row's ``path`` (the node of each of its tokens).

    Node n holds one token; its ancestors are the nodes before it on any path through it, so a row's
    path is ``[node of token 0, node of tokens 0..1, ...]`` and equal prefixes share their nodes.

    >>> prefix_tree([[1, 2, 3], [1, 2, 4], [5]])
    ([1, 2, 3, 4, 5], [0, 1, 2, 2, 0], [[0, 1, 2], [0, 1, 3], [4]])
    >>> prefix_tree([[7, 7], [7]])                       # a row that is another's prefix adds nothing
    ([7, 7], [0, 1], [[0, 1], [0]])
    """
    node_of: dict[tuple[int, int], int] = {}  # (parent node, token) -> node; -1 = the root
    tokens: list[int] = []
    depths: list[int] = []
    paths: list[list[int]] = []
    for row in rows:
        parent, path = -1, list[int]()
        for token in row:
            node = node_of.get((parent, token))
            if node is None:
                node = node_of[(parent, token)] = len(tokens)
                tokens.append(token)
                depths.append(len(path))
            path.append(node)
            parent = node
        paths.append(path)
    return tokens, depths, paths


def worth_packing(rows: list[list[int]], n_nodes: int, pair_cost: float, min_gain: float = MIN_GAIN) -> bool:
    """Whether a tree of ``n_nodes`` costs at most ``1 - min_gain`` of the padded batch of ``rows``,
    a token's linear work counting 1 and an attended pair ``pair_cost`` (see the module notes).

    >>> worth_packing([[1, 2, 3], [1, 2, 4]], 4, pair_cost=0.0)           # 4 tokens against 2 x 3
    True
    >>> worth_packing([[1, 2, 3], [4, 5, 6]], 6, pair_cost=0.0)           # nothing shared
    False
    >>> worth_packing([[1, 2, 3], [5]], 4, pair_cost=0.0)                 # nor here, but no padding either
    True
    >>> worth_packing([[1] * 100 + [2], [1] * 100 + [3]], 102, pair_cost=0.1)   # 1142 against 2242
    True
    >>> worth_packing([[1] * 100 + [2], [1] * 100 + [3]], 102, pair_cost=1.0)   # 10506 against 20604
    True
    >>> worth_packing([[1] * 10 + [2]] + [[3] * 10 + [4]], 22, pair_cost=0.5)  # sharing nothing
    False
    """
    width = max(len(r) for r in rows)
    padded = len(rows) * (width + width * width * pair_cost)
    return n_nodes + n_nodes * n_nodes * pair_cost <= (1 - min_gain) * padded


@dataclass
class PackedRows:
    """A micro-batch as one prefix-tree sequence (tensors; see the module notes).

    ``input_ids``, ``position_ids``: (1, N); ``mask``: (1, 1, N, N) bool, True = attend;
    ``keep``: (M,) the nodes whose logits are needed; ``gather``: (b, k) indices into ``keep``: row
    i's logit j is ``logits[keep[gather[i, j]]]``, aligned with the padded batch's ``labels[i, j]``.
    """

    input_ids: Any
    position_ids: Any
    mask: Any
    keep: Any
    gather: Any

    def to(self, device) -> PackedRows:
        fields = (self.input_ids, self.position_ids, self.mask, self.keep, self.gather)
        return PackedRows(*(t.to(device) for t in fields))

    @property
    def n_nodes(self) -> int:
        return int(self.input_ids.shape[1])


def pack_rows(rows: list[list[int]], k: int, *, pair_cost: float | None = None) -> PackedRows | None:
    """The :class:`PackedRows` of token ``rows`` whose logits are needed at their last ``k`` + 1
    positions but one: position ``len - k - 1 + j`` of a row predicts its token ``len - k + j``
    (drift.examples.collate's labels). A row shorter than that reads its first node where it has no
    token (the padded batch's label there is ignored). With a ``pair_cost``: None where the tree is
    not worth it (:func:`worth_packing`); without one, always the tree."""
    import torch

    tokens, depths, paths = prefix_tree(rows)
    n = len(tokens)
    if pair_cost is not None and not worth_packing(rows, n, pair_cost):
        return None
    mask = torch.zeros(n, n, dtype=torch.bool)
    for path in paths:  # each node sees its ancestors and itself: the row's causal triangle on its nodes
        at = torch.tensor(path)
        mask[at[:, None], at[None, :]] |= torch.ones(len(path), len(path), dtype=torch.bool).tril()
    wanted = [[path[max(0, len(path) - k - 1 + j)] for j in range(k)] for path in paths]
    keep = sorted({node for row in wanted for node in row})
    slot = {node: i for i, node in enumerate(keep)}
    return PackedRows(
        input_ids=torch.tensor([tokens]),
        position_ids=torch.tensor([depths]),
        mask=mask[None, None],
        keep=torch.tensor(keep),
        gather=torch.tensor([[slot[node] for node in row] for row in wanted]),
    )


def packed_logits(model, packed: PackedRows):
    """The model's logits at every row's wanted positions, (b, k, v), from one forward of the tree."""
    mask = packed.mask
    if attention_implementation(model) == "eager":  # eager attention adds its mask: 0 / -inf
        import torch

        mask = torch.zeros(mask.shape, device=mask.device).masked_fill(~mask, torch.finfo(torch.float32).min)
    out = model(
        input_ids=packed.input_ids, attention_mask=mask, position_ids=packed.position_ids, logits_to_keep=packed.keep
    )
    return out.logits[0][packed.gather]


def _config(model):
    """The transformers config of ``model``, seen through DDP / DeepSpeed / FSDP and peft wrappers
    (a DDP wrapper has no ``config``; DeepSpeed's engine has its own)."""
    from accelerate.utils import extract_model_from_parallel

    from drift.backends.hf_cache import base_model

    return getattr(base_model(extract_model_from_parallel(model)), "config", None)


def attention_implementation(model) -> str | None:
    return getattr(_config(model), "_attn_implementation", None)


def supports_packing(model) -> bool:
    """Whether ``model`` can run a :class:`PackedRows`: a model type whose packed logits were checked
    against the padded batch's (:data:`PACKABLE_MODEL_TYPES`), an attention implementation that
    takes a dense 4D mask, and full attention in every layer (a sliding window would need its own
    mask; ALiBi biases by the index in the sequence, not the position)."""
    config = _config(model)
    if config is None or attention_implementation(model) not in PACKABLE_ATTENTION:
        return False
    if getattr(config, "model_type", None) not in PACKABLE_MODEL_TYPES or getattr(config, "alibi", False):
        return False
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    layer_types = getattr(text, "layer_types", None)
    if layer_types:
        return all(t == "full_attention" for t in layer_types)
    return getattr(text, "sliding_window", None) is None


def pair_cost(model) -> float | None:
    """What one attended pair of a packed forward costs, a token's linear work counting 1; None for a
    model that cannot be packed (:func:`supports_packing`).

    Per layer and token the linear layers do ``2 P`` FLOPs forward (P = the layer's weights: query,
    key, value, output, and a gated MLP's three matrices) and a pair ``4 H d`` (scores and values,
    H query heads of d dimensions); backward scales both alike. Masked attention runs below the
    matmuls' efficiency: :data:`MASKED_ATTENTION_SLOWDOWN`. SmolLM2-135M: 0.00065.
    """
    if not supports_packing(model):
        return None
    text = _config(model).get_text_config()
    h, heads = text.hidden_size, text.num_attention_heads
    d = getattr(text, "head_dim", None) or h // heads
    kv = getattr(text, "num_key_value_heads", None) or heads
    mlp = getattr(text, "intermediate_size", None) or 4 * h  # a mixture of experts: one expert's (an estimate)
    weights = h * heads * d * 2 + 2 * h * kv * d + 3 * h * mlp
    return MASKED_ATTENTION_SLOWDOWN * 4 * heads * d / (2 * weights)

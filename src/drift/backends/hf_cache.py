"""KV caches for the hf backend: share one prefill between equal prompts, reuse the last call's.

At turn t + 1 of a rollout the prompt is turn t's prompt + the reply + a user message, so most of
it has been through the model already. After a ``generate`` call the backend keeps, for each row,
the KV cache of its prompt ids + reply ids as decoding computed them (taken as the row ends) (a :class:`PrefixStore`
entry). At the next call each distinct prompt ``p`` takes the entry ``e`` sharing the longest
common token prefix, ``L = min(lcp(p, e.ids), len(p) - 1)`` (at least one token is left: its
logits give the first reply token), and only ``p[L:]`` is run through the model. The common
prefix, never the whole entry: the reply's text re-rendered by the chat template may tokenise
differently from the sampled ids. The cache of any common prefix is valid: attention is causal.

Batch layout. Rows with cached lengths ``L_r`` and new lengths ``n_r = len(p_r) - L_r``, ``C = max
L_r``, ``N = max n_r``; row r is ``[pad * (C - L_r), p_r[:L_r], pad * (N - n_r), p_r[L_r:]]``,
attention mask 0 on the pads. Positions are ``cumsum(mask) - 1`` (0 on pads): what the decode loop
(drift.backends.hf_decode) gives, and transformers' ``generate`` computes from the mask when it is
handed a cache (5.24: no ``cache_position``; it feeds ``input_ids[:, cache length:]``), so each
row's tokens sit at ``0 .. len(p_r) - 1`` whatever the holes, the positions the kept keys were
computed at (rotary embeddings are applied before caching). The batch cache is the entries left-
padded with zeros to ``C`` (masked out); ``p[L:-1]`` of each distinct prompt is encoded on top of it
in one forward pass, the result is copied to the rows sharing that prompt (the K trajectories of a
prompt at turn 1), and the decode loop reads each row's last token.

Counting: ``tokens_prefilled`` grows by ``sum over distinct prompts (n - 1) + rows``; without a
cache (nothing kept, every prompt distinct) by ``sum over rows len(p)``. Padding never counts.

Memory. An entry holds the row's non-pad columns: prompt + the reply but its last sampled token
(never run through the model), ``2 * layers * kv_heads * head_dim * element
bytes`` per token (46 KB for SmolLM2-135M in float32). Entries are kept row by row up to
``max_bytes`` (rows that do not fit are not kept); when a call returns, its entries replace the
previous call's (episodes that ended free theirs), so at most ``2 * max_bytes`` is held during a
call. Entries are valid for the weights they were computed with only: a fingerprint of the
parameters (identity and in-place version counter) and of the optimizer steps taken in this
process must match, else the store is emptied (drift rl trains the generator's model between
rounds). The step count matters: torch's fused AdamW, drift's optimizer on a CPU, changes the
weights without bumping their version counters, and once it let drift rl sample every round on
the first round's keys and values of the prompts' shared start (their system prompt). Only caches of plain
full-attention ``DynamicLayer``s are kept (sliding windows, linear attention, quantised or
offloaded caches are not: reuse is then off, sharing still works).

Decoding in place. transformers' ``DynamicLayer`` appends a step's keys and values with
``torch.cat``: every decode step copies the whole cache of every layer into new tensors (64 rows x
300 cached tokens of SmolLM2-135M in bf16: 440 MB a step, ~15% of the step on a 2-core EPYC). The
decode loop swaps such layers for :class:`GrowingLayer`s, whose keys and values are views of
buffers with spare columns (the longest reply still to come, at most as many as the layer holds,
doubled when spent): a step writes its column in place.
"""

from __future__ import annotations

from typing import Any

from transformers.cache_utils import DynamicLayer  # the hf backend's modules need transformers anyway


class GrowingLayer(DynamicLayer):
    """A full-attention cache layer holding what a ``DynamicLayer`` holds, as views of buffers with
    spare columns: an update that fits writes in place; one that does not moves the layer to new
    buffers twice the size it then holds (doubling: O(length) copies in all, at most twice the
    memory). States of another dtype or batch fall back to ``DynamicLayer``'s ``torch.cat``
    (which promotes and checks them); the next update moves to new buffers again.

    Limits, as used by the decode loop (no gradient, no crop): a crop's dropped columns are written
    over by the next update, so a view of them handed out earlier changes; writing in place under
    autograd would break a backward through the cache.
    """

    _layer_type = None  # never registered in transformers' layer mappings
    _keys: Any = None  # the buffers; keys and values are views of their first columns
    _values: Any = None

    def __init__(self, layer: DynamicLayer, room: int):
        super().__init__()
        self.__dict__.update(layer.__dict__)
        self._reserve(room)

    def _reserve(self, room: int) -> None:
        assert self.keys is not None and self.values is not None
        self._hold(self.keys, self.values, room)

    def _hold(self, keys, values, room: int) -> None:
        """New buffers holding ``keys`` and ``values`` with ``room`` spare columns."""
        length = keys.shape[-2]
        shape = (*keys.shape[:-2], length + room, keys.shape[-1])
        self._keys, self._values = keys.new_empty(shape), values.new_empty(shape)
        self._keys[..., :length, :], self._values[..., :length, :] = keys, values
        self.keys, self.values = self._keys[..., :length, :], self._values[..., :length, :]

    def update(self, key_states, value_states, *args, **kwargs):
        keys, values = self.keys, self.values
        if (
            not self.is_initialized  # reset: begins as a DynamicLayer
            or keys is None
            or values is None
            or keys.dim() != 4
            or (key_states.dtype, value_states.dtype) != (keys.dtype, values.dtype)
            or key_states.shape[:2] != keys.shape[:2]
        ):
            return super().update(key_states, value_states, *args, **kwargs)
        length, new = keys.shape[-2], key_states.shape[-2]
        buffered = self._keys is not None and keys.data_ptr() == self._keys.data_ptr()
        if not buffered or keys.shape[:2] != self._keys.shape[:2] or length + new > self._keys.shape[-2]:
            self._reserve(length + 2 * new)  # replaced (reorder_cache, ...), reset or full: twice what it will hold
        self._keys[..., length : length + new, :] = key_states
        self._values[..., length : length + new, :] = value_states
        self.keys, self.values = self._keys[..., : length + new, :], self._values[..., : length + new, :]
        return self.keys, self.values

    def batch_select_indices(self, indices) -> None:
        """Keep rows ``indices``, and the buffers' spare columns (only the columns held are copied)."""
        keys, values = self.keys, self.values
        if keys is None or values is None or self.get_seq_length() == 0:
            return
        self._hold(keys[indices], values[indices], self._keys.shape[-2] - keys.shape[-2])

    def reset(self) -> None:
        super().reset()
        self._keys = self._values = None


def with_room(cache, room: int):
    """``cache`` with its initialised plain ``DynamicLayer``s swapped for :class:`GrowingLayer`s with
    ``min(room, max(64, length))`` spare columns each (``room``: the longest reply still to come);
    an offloading cache is left as it is (its layers move between devices)."""
    if getattr(cache, "offloading", False):
        return cache
    layers = getattr(cache, "layers", None) or []
    for at, layer in enumerate(layers):
        if type(layer) is DynamicLayer and layer.is_initialized and layer.keys is not None and layer.keys.dim() == 4:
            layers[at] = GrowingLayer(layer, min(room, max(64, layer.keys.shape[-2])))
    return cache


def full_attention(layer) -> bool:
    """Whether a cache layer holds only keys and values of full attention (which the store keeps)."""
    return type(layer) in (DynamicLayer, GrowingLayer)


def common_prefix(a: tuple, b: tuple) -> int:
    """Length of the longest common prefix of two tuples (binary search over C-speed slice compares).

    >>> common_prefix((1, 2, 3, 4), (1, 2, 9)), common_prefix((1, 2), (1, 2, 3)), common_prefix((), (1,))
    (2, 2, 0)
    """
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo], a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if a[:mid] == b[:mid] else (lo, mid)
    return lo


_optimizer_steps = [0]  # optimizer steps taken in this process (any optimizer), once counted


def count_optimizer_steps() -> None:
    """Count every optimizer step of this process from now on (a global post-step hook of
    torch.optim, registered once)."""
    if not getattr(count_optimizer_steps, "registered", False):
        from torch.optim.optimizer import register_optimizer_step_post_hook

        def counted(optimizer, args, kwargs) -> None:
            _optimizer_steps[0] += 1

        register_optimizer_step_post_hook(counted)
        count_optimizer_steps.registered = True  # type: ignore[attr-defined]


def weights_fingerprint(model) -> tuple:
    """Changes when the weights do: the optimizer steps taken in this process (fused optimizers
    change weights without bumping version counters), each parameter's identity and in-place
    version counter (any other in-place change)."""
    return (_optimizer_steps[0], *((id(p), p._version) for p in model.parameters()))


def base_model(model):
    """A peft model's base model; any other model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def forward_keywords(model) -> frozenset:
    """The keywords of the (base) model's ``forward``."""
    import inspect

    return frozenset(inspect.signature(base_model(model).forward).parameters)


def cache_keyword(model) -> str:
    """The model's keyword for a KV cache, in and out: ``cache`` (transformers >= 5.2x) or ``past_key_values``."""
    return "cache" if "cache" in forward_keywords(model) else "past_key_values"


class PrefixStore:
    """The KV caches of the last ``generate`` call's rows, by token ids."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.entries: list[tuple[tuple, list]] = []  # (ids, [(keys, values) per layer, each (heads, len, dim)])
        self.pending: list[tuple[tuple, list]] = []
        self.pending_bytes = 0
        self.fingerprint: tuple | None = None

    def check(self, model) -> None:
        """Empty the store if the weights changed since its entries were computed."""
        self.pending, self.pending_bytes = [], 0  # what a failed call had kept
        fingerprint = weights_fingerprint(model)
        if fingerprint != self.fingerprint:
            self.entries, self.fingerprint = [], fingerprint

    def match(self, prompt: tuple) -> tuple[int, list | None]:
        """``(L, layers)``: the kept entry with the longest common prefix with ``prompt``, capped at
        ``len(prompt) - 1``; ``(0, None)`` when none shares a token.

        Entries are sorted by ids, so the longest common prefix is with a neighbour of the prompt's
        place in that order (the lcp of sorted strings is the minimum of the adjacent ones'):
        O(log entries) comparisons, not a scan.
        """
        import bisect

        at = bisect.bisect_left(self.entries, prompt, key=lambda entry: entry[0])
        best, layers = 0, None
        for ids, kv in self.entries[max(at - 1, 0) : at + 1]:
            length = common_prefix(prompt, ids)
            if length > best:
                best, layers = length, kv
        best = min(best, len(prompt) - 1)
        return (best, layers) if best > 0 else (0, None)

    def keep(self, cache, width: int, rows: list[tuple]) -> None:
        """Keep rows of ``cache`` (``width`` prompt columns, then one per reply token run through the
        model): ``(cache row, prompt mask, prompt ids, reply ids)`` each; an entry holds the mask's 1
        columns of the prompt and the reply ids the cache has."""
        import torch

        layers = getattr(cache, "layers", None)
        if not layers or not all(full_attention(layer) for layer in layers):
            return
        length = layers[0].keys.shape[-2]
        per_token = sum(2 * layer.keys[0, :, :1].numel() * layer.keys.element_size() for layer in layers)
        device = layers[0].keys.device
        for b, prompt_mask, prompt, reply in rows:
            k = max(0, min(len(reply), length - width))
            ids = prompt + tuple(reply[:k])
            if self.pending_bytes + len(ids) * per_token > self.max_bytes:
                continue
            cols = torch.cat([prompt_mask.nonzero().flatten().cpu(), torch.arange(width, width + k)]).to(device)
            kv = [(layer.keys[b].index_select(1, cols), layer.values[b].index_select(1, cols)) for layer in layers]
            self.pending.append((ids, kv))
            self.pending_bytes += len(ids) * per_token

    def forget(self) -> None:
        """Drop every kept entry."""
        self.entries, self.pending, self.pending_bytes, self.fingerprint = [], [], 0, None

    def commit(self) -> None:
        """The entries kept during this call replace the previous call's."""
        self.entries = sorted(self.pending, key=lambda entry: entry[0])
        self.pending, self.pending_bytes = [], 0


def prefill(
    model,
    name: str,
    prompts: list[tuple],
    matches: list,
    rows: list[int],
    pad: int,
    device: str,
    autocast,
    *,
    last_logits_only: bool = False,
):
    """Encode the distinct ``prompts`` but their last token on top of their ``matches`` (``(L,
    layers)`` each, see :meth:`PrefixStore.match`), in the layout of the module docstring.

    Returns ``(input_ids, attention_mask, cache, encoded)``: the batch rows' (``rows[b]`` = index
    of row b's prompt) full layout for the decode loop, the cache of all its columns but the last
    (``None`` when there is nothing to encode nor reuse), and the tokens run through the model.
    ``last_logits_only``: the model takes ``logits_to_keep`` (only the cache is used here).
    """
    import torch

    cached = [length for length, _ in matches]
    width_c = max(cached)
    width_n = max(len(p) - length for p, length in zip(prompts, cached))
    ids = torch.tensor(
        [
            [pad] * (width_c - c) + list(p[:c]) + [pad] * (width_n - len(p) + c) + list(p[c:])
            for p, c in zip(prompts, cached)
        ]
    )
    mask = torch.tensor(
        [
            [0] * (width_c - c) + [1] * c + [0] * (width_n - len(p) + c) + [1] * (len(p) - c)
            for p, c in zip(prompts, cached)
        ]
    )
    index = torch.tensor(rows)
    if width_c + width_n < 2:
        return ids[index], mask[index], None, 0
    cache: Any = None
    if width_c:
        from transformers import DynamicCache

        first = next(layers for _, layers in matches if layers is not None)
        data = []
        for layer, (keys0, _) in enumerate(first):
            shape = (len(prompts), keys0.shape[0], width_c, keys0.shape[2])
            keys, values = (torch.zeros(shape, dtype=keys0.dtype, device=keys0.device) for _ in range(2))
            for r, (c, layers) in enumerate(matches):
                if c:
                    keys[r, :, width_c - c :] = layers[layer][0][:, :c]
                    values[r, :, width_c - c :] = layers[layer][1][:, :c]
            data.append((keys, values))
        cache = DynamicCache(data)
    encoded = sum(len(p) - c - 1 for p, c in zip(prompts, cached))
    if width_n > 1:
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        kwargs = {name: cache} if cache is not None else {}
        if last_logits_only:
            kwargs["logits_to_keep"] = 1
        with torch.no_grad(), autocast:
            out = model(
                input_ids=ids[:, width_c:-1].to(device),
                attention_mask=mask[:, :-1].to(device),
                position_ids=positions[:, width_c:-1].to(device),
                use_cache=True,
                **kwargs,
            )
        cache = getattr(out, name)
    cache.reorder_cache(index.to(device))
    return ids[index], mask[index], cache, encoded

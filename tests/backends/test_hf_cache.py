"""drift.backends.hf_cache's cache layer with room: the keys and values of transformers' DynamicLayer, without
copying the whole cache at every step."""

import pytest

torch = pytest.importorskip("torch")

from transformers.cache_utils import DynamicLayer  # noqa: E402

from drift.backends.hf_cache import GrowingLayer  # noqa: E402


def _states(rows, length, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, 2, length, 4, generator=g), torch.randn(rows, 2, length, 4, generator=g)


def test_a_growing_layer_holds_what_a_dynamic_layer_holds_through_updates_crops_and_leaving_rows():
    plain = DynamicLayer()
    plain.update(*_states(5, 6, 0))
    grown = GrowingLayer(plain, room=3)  # takes over the plain layer's first six columns
    plain = DynamicLayer()
    plain.update(*_states(5, 6, 0))
    steps = [("update", 1), ("update", 1), ("update", 2), ("leave", [0, 2, 3]), ("update", 1), ("crop", -2),
             ("update", 1), ("update", 4), ("leave", [2]), ("update", 1)]  # fmt: skip
    for seed, (what, arg) in enumerate(steps, start=1):
        if what == "update":
            new = _states(plain.keys.shape[0], arg, seed)
            for layer in (plain, grown):
                keys, values = layer.update(*new)
                assert torch.equal(keys, layer.keys) and torch.equal(values, layer.values)
        elif what == "leave":
            for layer in (plain, grown):
                layer.batch_select_indices(torch.tensor(arg))
        else:
            for layer in (plain, grown):
                layer.crop(arg)
        assert torch.equal(grown.keys, plain.keys) and torch.equal(grown.values, plain.values), (what, arg)
        assert grown.get_seq_length() == plain.get_seq_length()


def test_a_step_with_room_left_writes_in_place():
    plain = DynamicLayer()
    plain.update(*_states(3, 5, 0))
    grown = GrowingLayer(plain, room=2)
    storage = grown.keys.untyped_storage().data_ptr()
    for seed in (1, 2):
        grown.update(*_states(3, 1, seed))
        assert grown.keys.untyped_storage().data_ptr() == storage  # no new tensor: the column was written in place
    grown.update(*_states(3, 1, 3))  # the room is spent: new buffers, with room again
    assert grown.keys.untyped_storage().data_ptr() != storage and grown.get_seq_length() == 8
    storage = grown.keys.untyped_storage().data_ptr()
    grown.update(*_states(3, 1, 4))
    assert grown.keys.untyped_storage().data_ptr() == storage

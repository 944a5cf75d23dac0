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
             ("update", 1), ("update", 4), ("leave", [2, 0]), ("update", 1), ("reorder", [1, 0]), ("update", 1),
             ("repeat", 2), ("update", 2), ("update", 9), ("reset", None), ("update", 3), ("update", 1)]  # fmt: skip
    for seed, (what, arg) in enumerate(steps, start=1):
        for layer in (plain, grown):
            if what == "update":
                keys, values = layer.update(*_states(1 if layer.keys is None else layer.keys.shape[0], arg, seed))
                assert torch.equal(keys, layer.keys) and torch.equal(values, layer.values)
            elif what == "leave":
                layer.batch_select_indices(torch.tensor(arg))
            elif what == "reorder":
                layer.reorder_cache(torch.tensor(arg))
            elif what == "repeat":
                layer.batch_repeat_interleave(arg)
            elif what == "reset":
                layer.reset()
            else:
                layer.crop(arg)
        if what != "reset":
            assert torch.equal(grown.keys, plain.keys) and torch.equal(grown.values, plain.values), (what, arg)
        assert grown.get_seq_length() == plain.get_seq_length()


def test_a_step_with_room_left_writes_in_place_and_a_full_layer_doubles():
    plain = DynamicLayer()
    plain.update(*_states(3, 5, 0))
    grown = GrowingLayer(plain, room=2)
    storage = grown.keys.untyped_storage().data_ptr()
    for seed in (1, 2):
        grown.update(*_states(3, 1, seed))
        assert grown.keys.untyped_storage().data_ptr() == storage  # no new tensor: the column was written in place
    grown.update(*_states(3, 1, 3))  # the room is spent: new buffers with as much room as the layer holds
    assert grown.keys.untyped_storage().data_ptr() != storage and grown.get_seq_length() == 8
    storage = grown.keys.untyped_storage().data_ptr()
    for seed in range(4, 12):  # 8 columns of room
        grown.update(*_states(3, 1, seed))
        assert grown.keys.untyped_storage().data_ptr() == storage
    grown.update(*_states(3, 1, 12))
    assert grown.keys.untyped_storage().data_ptr() != storage and grown.get_seq_length() == 17


def test_rows_leaving_keep_the_room():
    plain = DynamicLayer()
    plain.update(*_states(4, 5, 0))
    grown = GrowingLayer(plain, room=3)
    grown.batch_select_indices(torch.tensor([0, 3]))
    storage = grown.keys.untyped_storage().data_ptr()
    grown.update(*_states(2, 1, 1))
    assert grown.keys.untyped_storage().data_ptr() == storage and grown.get_seq_length() == 6


def test_states_of_another_dtype_are_appended_as_torch_cat_would():
    plain = DynamicLayer()
    plain.update(*(x.to(torch.bfloat16) for x in _states(2, 3, 0)))
    grown = GrowingLayer(plain, room=4)
    keys, values = _states(2, 1, 1)  # float32: torch.cat promotes the cache, an in-place write would round them
    plain.update(keys, values)
    grown.update(keys, values)
    assert grown.keys.dtype == plain.keys.dtype == torch.float32 and torch.equal(grown.keys, plain.keys)


def test_with_room_reserves_at_most_what_the_layer_holds_and_skips_offloaded_caches():
    from transformers import DynamicCache

    from drift.backends.hf_cache import with_room

    cache = with_room(DynamicCache([_states(2, 100, 0), _states(2, 100, 1)]), 2048)
    assert all(isinstance(layer, GrowingLayer) and layer._keys.shape[-2] == 200 for layer in cache.layers)
    cache = with_room(DynamicCache([_states(2, 100, 0)]), 24)
    assert cache.layers[0]._keys.shape[-2] == 124
    offloaded = with_room(DynamicCache([_states(2, 10, 0)], offloading=True), 24)
    assert type(offloaded.layers[0]) is DynamicLayer

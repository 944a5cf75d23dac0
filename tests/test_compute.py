"""FLOPs counted nominally and as run."""


def test_flops_as_run_count_the_tokens_forwarded_not_every_example_s():
    """Training and scoring run a micro-batch's shared prefixes once (drift.packing): counted as run,
    those forwards cost their forwarded tokens; sampling's counts are as run already."""
    from drift.compute import flops_as_run, flops_of

    counts = {"prefilled_tokens": 10, "generated_tokens": 5, "scored_tokens": 8, "reference_tokens": 8,
              "trained_tokens": 20, "scored_forwarded_tokens": 4, "reference_forwarded_tokens": 3,
              "trained_forwarded_tokens": 12}  # fmt: skip
    assert flops_of(100, counts) == 2 * 100 * (10 + 5 + 8 + 8) + 6 * 100 * 20
    assert flops_as_run(100, counts) == 2 * 100 * (10 + 5 + 4 + 3) + 6 * 100 * 12


def test_flops_as_run_are_unknown_where_a_forwarded_count_is_missing():
    """A count made before drift kept the forwarded tokens cannot be recounted: no guess. A nominal
    count of zero needs no forwarded one (an offline run scores nothing)."""
    from drift.compute import flops_as_run

    assert flops_as_run(100, {"prefilled_tokens": 10, "trained_tokens": 20}) is None
    assert flops_as_run(100, {"trained_tokens": 20, "trained_forwarded_tokens": None}) is None
    assert flops_as_run(100, {"prefilled_tokens": 10, "trained_tokens": 20, "trained_forwarded_tokens": 12}) == (
        2 * 100 * 10 + 6 * 100 * 12
    )
    assert flops_as_run(100, {}) == 0.0

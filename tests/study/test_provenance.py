"""drift.study.provenance: which resolved options differ between a method's seeds."""

from drift.study.provenance import differing_options


def test_an_option_its_command_no_longer_has_is_not_a_difference():
    """drift rl lost the server options (config.EngineOptions): a run made before keeps them in its
    configs, one made after does not, and that is not a difference between the seeds. An option
    the command still has, missing from one seed's run (made before it existed), still is."""
    old = {"rl": {"kl_coef": 0.0, "base_url": "http://127.0.0.1:8000/v1", "concurrency": 16, "target": "last"}}
    new = {"rl": {"kl_coef": 0.0, "target": "last"}}
    assert differing_options({0: old, 2: new}) == {}
    older = {"rl": {"kl_coef": 0.0, "base_url": "http://127.0.0.1:8000/v1"}}
    assert differing_options({0: older, 2: new}) == {"rl.target": {"0": None, "2": "last"}}
    # the rollouts' configs keep them: a rollout can run on a server
    assert differing_options({0: {"rollout": {"concurrency": 16}}, 2: {"rollout": {"concurrency": 4}}}) == {
        "rollout.concurrency": {"0": 16, "2": 4}
    }

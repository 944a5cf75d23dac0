"""What a rerun of drift study reuses, and what it refuses to: fast, with stand-in runs and
evaluations (test_run.py runs the real ones on a tiny model)."""

import json

import pytest

from drift import DriftError
from drift.outputs import write_json
from drift.study.run import Study
from drift.study.spec import StudySpec


def test_rollouts_with_uncounted_chunks_are_refused(tmp_path):
    """Their summary counts fewer tokens than were sampled: DRIFT's FLOPs, and every online budget
    set by them, would be low."""
    study = Study(StudySpec(methods=[{"name": "drift", "kind": "offline"}], max_turns=2, seeds=[0]), tmp_path)
    summary = tmp_path / "work" / "rollouts" / "seed0-turns2.summary.json"
    write_json(summary, {"tokens_generated": 10, "tokens_prefilled": 20, "wall_seconds": 1.0, "uncounted_chunks": 1})
    with pytest.raises(DriftError, match="1 chunk") as err:
        study.rollouts(0, 2)
    assert "seed0-turns2.*" in str(err.value)
    write_json(summary, {**json.loads(summary.read_text()), "uncounted_chunks": 0})
    assert study.rollouts(0, 2)[1]["tokens_generated"] == 10

"""``drift study``: DRIFT against its baselines, compute-matched, over seeds, from one YAML file.

- :mod:`drift.study.spec`     the study file: the shared setting and the methods (checked, file:line errors)
- :mod:`drift.study.methods`  what each kind of method runs (base, sft, offline, online) and what it spent
- :mod:`drift.study.run`      the order of work: reference, tuning on validation, seeds on test; resumable
- :mod:`drift.study.resume`   what a rerun may reuse: the study file as it was, the reference ``reference.json`` pins
- :mod:`drift.study.provenance` each run's resolved command configs, kept beside its points
- :mod:`drift.study.plan`     ``--dry-run``: the units, what is done, an estimated time
- :mod:`drift.study.results`  ``table.json``, ``table.md`` and figures, from the reports alone
- :mod:`drift.study.markdown` ``table.md``'s text
"""

"""af2cpu.preprocessing: input, search tools, parsers, templates, features.

What a scheduler calls, per target:

- ``inputs.read_fasta_targets(path) -> list[Target]``
- ``searches.plan_searches(cfg.db) -> list[Search]``; then, one task each (the ``pdb70`` search reads
  ``uniref90``'s result, so it runs after it):
  ``searches.run_search(search, target, msa_dir, cpus, timeout) -> Path``
- ``searches.target_raw_features(target, plan, msa_dir, searches.template_settings(cfg))`` -> raw
  features (``.features``), written with ``af2cpu.outputs.save_features_npz``
- per model preset: ``input_pipeline.process_features(raw, PipelineSettings.from_preset(name), seed)``
"""

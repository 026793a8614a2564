"""af2cpu.preprocessing: input, search tools, parsers, templates, features.

What a scheduler calls, per target (see ``af2cpu.scheduler.stages``):

- ``inputs.read_fasta_targets(path) -> list[Target]``
- ``searches.plan_searches(cfg.db.preset, protocol=cfg.search.protocol) -> list[Search]`` (the search
  registry; a search with ``run_batch`` may first run once for the batch: ``searches.run_batch_search``);
  then, one task each (a search runs after the searches it ``needs``: the ``pdb70`` template search reads ``uniref90``'s
  result): ``searches.run_search(search, target, msa_dir, cfg.db, cpus, timeout)``
- ``features.raw_features_from_files(sequence, description, searches.search_results(plan, msa_dir),
  searches.template_settings(cfg))`` -> raw features (``.features``), written with
  ``af2cpu.io.save_features_npz``
- per model preset: ``input_pipeline.process_features(raw, PipelineSettings.from_preset(preset), seed)``
"""

"""af2cpu.scheduler: the Dask task graph, clusters, sharding, the stage cache."""

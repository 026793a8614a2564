"""af2cpu.runtime: what this machine offers and how a process uses it.

`topology` reads CPUs, NUMA nodes, ISA features and available memory from the kernel; `placement`
splits the usable cores into instances; `threads` is the one place that applies an allotment to the
current process (affinity, thread counts, thread environment variables); `memory` plans chunk sizes
against a memory limit.
"""

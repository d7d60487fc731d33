"""The lab: the instruments the developers measure mpigrad with, not needed to train or use a model.

    python -m launch.lab.bench            # training images/s against the machine's GEMM peak
    python -m launch.lab.bench --layers   # ms per layer, and its matrix products alone
    python -m launch.lab.scaling          # scaling over simulated links (needs root)
    python -m launch.lab.fakehosts up     # fake hosts: a multi-host mpirun on one machine
    python -m launch.lab.ablation         # what each improvement adds, one at a time
    python -m launch.lab.compare A B      # ensemble candidates side by side, on validation

bench.py times dist.train's own step; bench_table.py counts its FLOPs and prints the table;
gemm_ceiling.py replays the step's matrix products alone (the highest %peak the step could
reach); scaling.py runs the step across fake hosts (fakehosts.py: network namespaces, wired by
wire.py's switch, reached by hydra through netns-launch) and fits a latency-bandwidth model;
ablation.py and compare.py train or evaluate runs to compare choices of model and ensemble.
What they measure on one machine goes to launch/docs/benchmarks.md, not into the code.
"""

"""Job submission through submitit: SLURM/local executors, requeue, sweeps, scaling reports."""

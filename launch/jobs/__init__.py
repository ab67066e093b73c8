"""Job machinery: submitit executors, one run or a SLURM job array as jobs, the task every job
runs, its state files and status, the cluster probe, and `dinotrain launch`."""

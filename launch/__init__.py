"""Job submission through submitit: SLURM/local executors, requeue, sweeps, scaling reports.

Public API:
  launch.submit.submit_run(cfg, entry=...)        one run (all its nodes/tasks) as one job
  launch.submit.submit_array(cfgs, folder, name)  several runs as one SLURM job array
  launch.task.TrainTask(cfg, entry)               the checkpointable callable every task runs
  launch.executor.sbatch_script(cfg)              the sbatch file a submission would use
  launch.status.states_of(run_dirs) / wait_for    new | pending | running | requeued | done | failed
  launch.sweep.load_sweep / expand / run_config   sweep files -> per-run configs
  launch.sweep_run.plan_and_submit(spec)          idempotent sweep submission
  launch.report.write_report(sweep_dir)           results.csv, scaling.png, report.md
  launch.scaling.fit_power_law(n, y, form)        power-law fit with standard errors
"""

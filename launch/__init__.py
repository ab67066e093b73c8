"""Orchestration: jobs (launch/jobs/: submitit executors, requeue, states), sweeps and their scaling
reports (launch/sweeps/), and the experiments (launch/study/, launch/demo/).

Public API:
  launch.jobs.submit.submit_run(cfg, entry=...)         one run (all its nodes/tasks) as one job
  launch.jobs.submit.submit_array(cfgs, folder, name)   several runs as one SLURM job array
  launch.jobs.task.TrainTask(cfg, entry)                the checkpointable callable every task runs
  launch.jobs.executor.sbatch_script(cfg)               the sbatch file a submission would use
  launch.jobs.status.states_of(run_dirs) / wait_for     new | pending | running | requeued | done | failed
  launch.sweeps.sweep.load_sweep / expand / run_config  sweep files -> per-run configs
  launch.sweeps.sweep_run.plan_and_submit(spec)         idempotent sweep submission
  launch.sweeps.report.write_report(sweep_dir)          results.csv, scaling.png, report.md
  launch.sweeps.scaling.fit_power_law(n, y, form)       power-law fit with standard errors
"""

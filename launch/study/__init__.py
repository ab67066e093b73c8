"""The laptop study (and its GPU variant): one experiment on the top floor, built on launch's jobs and sweeps.

`dinotrain study` runs `launch.study.study`; its task lists and timings are data, in
configs/study/laptop.yaml (loaded by `launch.study.settings`).
"""

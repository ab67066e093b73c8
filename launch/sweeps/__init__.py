"""Sweeps: a typed sweep file expanded into per-run configs, submitted as one job array, and
their scaling report (`dinotrain sweep run|status|report`)."""

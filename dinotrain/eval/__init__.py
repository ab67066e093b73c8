"""Frozen-feature evaluation (`dinotrain eval`): kNN / linear probes, clinical attributes,
segmentation from patch tokens, image-text alignment and report retrieval.

Public API:
- `dinotrain.eval.run.evaluate_models(models, tasks, data_root, out, eval_cfg=None, ...)`:
  everything, writing `results.json` / `results.md` / `results.png` (format: `dinotrain.eval.report`).
- `dinotrain.eval.specs`: task specs (`load_spec`, `load_task`, `builtin_names`).
- `dinotrain.eval.kinds`: one class per task kind (targets, scoring, headline metric) in `KINDS`.
- `dinotrain.eval.features`: RAD-DINO preprocessing, `extract_features`, `FeatureCache`.
- `dinotrain.eval.loading.load_model(MODEL)`: run dir, HF folder, checkpoint or `random:ARCH`.
- probes: `knn.knn_scores`, `linear.linear_probe`, `attributes.ridge_probe`,
  `segmentation.train_linear_head`, `text.train_alignment`; metrics in `metrics`.
"""

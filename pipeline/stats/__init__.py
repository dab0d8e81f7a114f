"""Shard statistics of a ctdeblur dataset: contents, HU and blur distributions, PSNR/SSIM of
blurry vs sharp, corruption, manifest and patient-leakage checks (`ctdeblur-shard-stats`).

Modules: `config` (StatsConfig, presets), `metrics` (per-pair measurements, summaries),
`summary` (per-group numbers), `reader` (shard discovery and the tf.data pass), `validate`
(checks), `report` (the JSON report), `report_text` / `report_html` (renderings), `cli`.
"""

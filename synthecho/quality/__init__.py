"""Quality of generated rows and of the corpus.

- `scores`: per-row checks (degenerate output, mask consistency, anatomical plausibility), reject reasons;
- `copies`: the memorisation check (speckle similarity to the warped source, its other phase and real
  train), its null of legitimate same-anatomy pairs and its positive control (planted copies);
- `attributes`: view/phase classifiers trained on real data (the filter's scores, the independent judge);
  `folds`: their patient-grouped cross-validation, the judge made of fold models, fits in worker processes;
- `phase`: phase geometry of the conditioning masks under both phase policies;
- `scoring`: the checks applied to a batch and to a raw shard; `corpus`: the publishable splits;
- `metrics`: dataset FID/KID through clean-fid on domain (segmenter) and, when available, Inception features;
- `report`: `reports/quality.md` and the figures; `floors`: what a published corpus must meet.

Submodules are imported on demand (they pull in torch), so `synthecho --help` stays fast.
"""

"""Quality of generated rows and of the corpus.

- `scores`: per-row checks (degenerate output, mask consistency, anatomical plausibility, near copies);
- `metrics`: dataset FID/KID through clean-fid on domain (segmenter) and, when available, Inception features;
- `attributes`: view/phase classifiers trained on real data (attribute fidelity);
- `filter`: the `synthecho filter` stage that applies them and writes the publishable splits.

Submodules are imported on demand (they pull in torch), so `synthecho --help` stays fast.
"""

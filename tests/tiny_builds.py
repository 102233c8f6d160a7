"""`--set` overrides that shrink a phantom build to seconds per stage, shared by the tests that run one.

32 px, a few steps of everything, one seed; Dice thresholds of 0 let the barely trained generator's rows
pass, so every downstream strategy has rows to train on. Each test adds what it needs (patients, rows,
downstream budgets); the counts its assertions read follow from the values here.
"""

TINY_BUILD = [
    "source.phantom.size=[96, 80]",
    "prepare.resolution=32",
    "prepare.copy_null_renders=1",
    "train.steps=4",
    "train.checkpoint_every=2",
    "train.grid_sampler_steps=1",
    "segmenter.steps=4",
    "segmenter.validate_every=2",
    "generate.steps=2",
    "generate.batch_size=4",
    "generate.batches_per_shard=1",
    "filter.kid_subsets=5",
    "filter.kid_subset_size=2",
    "filter.attribute_steps=2",  # the audit's classifiers: 200 steps x 11 fits would dominate
    "filter.dice_threshold={lv: 0.0, myo: 0.0, la: 0.0}",
    "evaluate.seeds=[0]",
    "evaluate.validate_every=2",
    "evaluate.batch_size=4",
    "evaluate.classification.steps=2",
    "evaluate.classification.batch_size=4",
]

"""Test-wide settings: never touch the network, keep torch on the 2 cores we have, deterministic plots."""

import os

# Tripwires: any attempt to reach the Hugging Face Hub fails loudly instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TQDM_DISABLE", "1")

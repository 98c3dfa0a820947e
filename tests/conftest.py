"""Shared test set-up: make `tests/reference.py` importable and keep runs deterministic and small."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(min(2, torch.get_num_threads()))

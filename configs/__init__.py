"""ml_collections config files: `--config=configs/<name>.py[:arg]` (configs/lib/base.py documents every field)."""

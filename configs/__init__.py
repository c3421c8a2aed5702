"""ml_collections config files: `--config=configs/<name>.py[:arg]` (configs/base.py documents every field)."""

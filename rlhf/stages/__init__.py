"""One pipeline stage per module, each runnable as `python -m tasks.<stage>` (see dvc.yaml)."""

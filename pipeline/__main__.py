"""``python -m pipeline`` runs the CLI from the working tree (DVC stages use this form, see dvc.yaml)."""

from pipeline.cli import app

app()

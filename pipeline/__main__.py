"""``python -m pipeline`` runs the CLI from the working tree (DVC stages use this form, see dvc.yaml).

The numeric kernels are pinned first, before anything imports numpy (pipeline/kernels.py): the stages' outputs
are then the same bytes on any x86-64-v3 machine and thread count.
"""

from pipeline.kernels import pin_numeric_kernels

pin_numeric_kernels()

from pipeline.cli import app  # noqa: E402

app()

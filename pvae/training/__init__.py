"""Training: the training settings, ``fit`` (init / one epoch / a thin loop), its state,
recipes, the checkpoint, and data-parallel runs."""

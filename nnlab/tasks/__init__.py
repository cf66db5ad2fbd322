"""LightningModules, one per kind of learning: they own losses, metrics, optimizers, logging."""

"""LightningDataModules. Each tells the task what it needs (num_classes, input_shape)."""

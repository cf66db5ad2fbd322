"""Plain nn.Modules and their builders; no Lightning and no config objects here."""

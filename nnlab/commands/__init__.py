"""The `nnlab` commands, one module per group; `nnlab.cli` registers them on the app.

A module here imports only typer, rich and nnlab's torch-free helpers at its top: torch,
Lightning, Hydra and Optuna are imported inside the command bodies, after the input is checked."""

OVERRIDES_HELP = "Hydra overrides, key=value: model=cnn optimizer.lr=0.01 trainer.max_epochs=20"

"""The names a config may choose, in one place: schemas.py bounds the config with them and the
builders dispatch on them, so the two cannot drift apart (tests/test_config_facts.py checks conf/
against them too).

Plain tuples and no imports: every command reads the schemas before torch is loaded.
"""

from __future__ import annotations

# model= choices (conf/model/); faster_rcnn_coco is a preset of the faster_rcnn builder
MODELS = ("mlp", "cnn", "rnn", "gan", "faster_rcnn", "faster_rcnn_coco")
# Model-config keys that say how to run the network, not what it is: build.py applies them to
# whatever the builder returns, so no builder takes them.
RUN_OPTIONS = ("compile", "channels_last")

NORMS = ("none", "batch", "layer", "group", "instance")
ACTIVATIONS = ("sigmoid", "tanh", "relu", "leaky_relu", "elu", "gelu")
LOSSES = ("cross_entropy", "mse")
SCHEDULERS = ("none", "step", "cosine", "onecycle")

# model=mlp
ENGINES = ("autograd", "scratch")
# model=rnn; a plain RNN cell has only the two nonlinearities torch.nn.RNN offers
CELLS = ("lstm", "gru", "rnn")
RNN_NONLINEARITIES = ("tanh", "relu")

# model=gan: its nets, then the settings of its task, which live in the model config beside them
GAN_ARCHS = ("mlp", "dcgan")
GAN_OBJECTIVES = ("non_saturating", "minimax")
GAN_TASK_OPTIONS = ("objective", "lr_g", "lr_d", "label_smoothing", "ema", "samples")

# model=faster_rcnn
RESNETS = ("resnet18", "resnet34", "resnet50")
BACKBONES = ("cnn", *RESNETS, "mobilenet_v3_large")

# trainer=, logger=, callbacks=
CLIP_ALGORITHMS = ("norm", "value")
LOGGERS = ("tensorboard", "none")
MONITOR_MODES = ("min", "max")

# data=table: what to predict, and what to do with missing values
TABLE_TASKS = ("auto", "classification", "regression")
TABLE_MISSING = ("error", "drop", "mean")

# data=arrays: what one sample is; data=arrays, image_folder, coco: keep the data in memory, or
# stream it from disk
ARRAY_LAYOUTS = ("auto", "features", "signal", "image")
IN_MEMORY = ("auto", True, False)

"""Property-based tests over the config space (hypothesis).

Valid combinations of model × optimizer × norm × activation × loss build through nnlab's own path
(compose_config → build) and take real optimizer steps; invalid overrides of every kind end in
exit code 2 with a message through the real CLI, never a traceback. derandomize=True keeps the
examples the same on every run, so CI failures reproduce.
"""

from __future__ import annotations

import dataclasses
import string

import pytorch_lightning as pl
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nnlab.build import build
from nnlab.config import compose_config, groups
from nnlab.data.base import TensorBatches
from nnlab.schemas import SCHEMAS, TrainSchema
from nnlab.tasks.optim import optimizer_with_schedule
from tests.helpers import QUICK, assert_clear_error

# Examples are slow-ish (a Hydra compose each): a fixed, modest budget, no per-example deadline.
PROPERTY = settings(
    deadline=None,
    derandomize=True,
    database=None,  # derandomized: nothing to replay, and no .hypothesis/ in the repo
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw", "rmsprop")
ACTIVATIONS = ("sigmoid", "tanh", "relu", "leaky_relu", "elu", "gelu")
LOSSES = ("cross_entropy", "mse")
NORMS = {
    "mlp": ("none", "batch", "layer", "group"),
    "cnn": ("none", "batch", "layer", "group", "instance"),
    "rnn": ("none", "batch", "layer", "group"),
}
DATA = {"mlp": "digits", "cnn": "digits", "rnn": "digits_seq"}
# The digits' training split has 1257 samples: batch sizes 4 and 8 leave a last batch of one.
LONE_LAST_SAMPLE = (4, 8)


@st.composite
def valid_overrides(draw: st.DrawFn) -> list[str]:
    """A small but otherwise arbitrary valid config, as the overrides a user would type."""
    model = draw(st.sampled_from(sorted(DATA)))
    norm = draw(st.sampled_from(NORMS[model]))
    activation = draw(st.sampled_from(ACTIVATIONS))
    # BatchNorm1d cannot train on one sample (config.py refuses that case with a message).
    smallest = 2 if model == "mlp" and norm == "batch" else 1
    batch = draw(st.sampled_from(LONE_LAST_SAMPLE) | st.integers(smallest, 48))
    overrides = [
        f"model={model}",
        f"data={DATA[model]}",
        f"optimizer={draw(st.sampled_from(OPTIMIZERS))}",
        f"norm={norm}",
        f"activation={activation}",
        f"loss={draw(st.sampled_from(LOSSES))}",
        f"data.batch_size={batch}",
        f"model.dropout={draw(st.sampled_from((0.0, 0.2)))}",
    ]
    if model == "mlp":
        overrides += [
            f"model.hidden={draw(st.integers(2, 16))}",
            f"model.depth={draw(st.integers(0, 3))}",
            f"model.residual={draw(st.booleans())}",
        ]
    elif model == "cnn":
        channels = draw(st.lists(st.integers(1, 6), min_size=1, max_size=3))
        overrides += [
            f"model.channels=[{','.join(map(str, channels))}]",
            f"model.kernel_size={draw(st.sampled_from((1, 3)))}",
            f"model.fc_hidden={draw(st.sampled_from((0, 8)))}",
            f"model.residual={draw(st.booleans())}",
        ]
    else:
        # A plain RNN cell has only tanh and relu; LSTM and GRU ignore the activation.
        cells = ("lstm", "gru", "rnn") if activation in ("tanh", "relu") else ("lstm", "gru")
        overrides += [
            f"model.cell={draw(st.sampled_from(cells))}",
            f"model.hidden={draw(st.integers(2, 12))}",
            f"model.layers={draw(st.integers(1, 2))}",
            f"model.bidirectional={draw(st.booleans())}",
        ]
    return overrides


@settings(PROPERTY, max_examples=30)
@given(overrides=valid_overrides())
def test_valid_configs_build_and_take_a_training_step(overrides: list[str]) -> None:
    cfg, _ = compose_config(overrides)
    pl.seed_everything(cfg.seed, verbose=False)
    datamodule, task = build(cfg)
    params = list(task.model.parameters())
    optimizer, _ = optimizer_with_schedule(
        params, task.optimizer_factory, task.scheduler_config, total_steps=2
    )
    task.train()
    loader = datamodule.train_dataloader()
    groups = list(loader)  # one list of batches per Lightning step
    assert len(groups) == len(loader)
    batches = [batch for group in groups for batch in group]
    assert len(batches) == loader.steps
    # The first batch, and the last: the one a batch size that does not divide the data cuts short.
    for batch in (batches[0], batches[-1]):
        before = [p.detach().clone() for p in params]
        loss, _ = task._step(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss), (overrides, loss)
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params), overrides
        changed = [not torch.equal(b, p.detach()) for b, p in zip(before, params, strict=True)]
        # The output layer always gets a gradient; deep sigmoid layers may get one too small
        # to move a float32 weight, which is the lesson of vanishing gradients, not a fault.
        assert changed[-1], (overrides, "the output layer did not move")


@settings(PROPERTY, max_examples=200)
@given(n=st.integers(1, 60), batch_size=st.integers(1, 20), shuffle=st.booleans())
def test_batches_cover_every_sample_once_and_never_train_on_a_lone_sample(
    n: int, batch_size: int, shuffle: bool
) -> None:
    x = torch.arange(n)
    loader = TensorBatches((x, x), batch_size, shuffle=shuffle, seed=1)
    sizes = [len(b[0]) for b in loader]
    assert len(sizes) == len(loader)
    assert sorted(torch.cat([b[0] for b in loader]).tolist()) == list(range(n))
    assert max(sizes) <= batch_size + 1
    if shuffle and batch_size > 1 and n > 1:
        assert 1 not in sizes, sizes  # BatchNorm cannot train on a batch of one
    if not shuffle:
        assert max(sizes) <= batch_size  # evaluation batches keep the plain slicing


# ---- invalid overrides -----------------------------------------------------------------------

GROUPS = groups()
DEFAULT_CHOICES = {  # choices whose schema fields are probed; each composes without a dataset
    "model": ("mlp", "cnn", "rnn", "gan"),
    "optimizer": OPTIMIZERS,
    "scheduler": ("none", "step", "cosine", "onecycle"),
    "data": ("digits", "digits_seq", "adding", "sine", "iris"),
}
NAME_CHARS = string.ascii_lowercase + string.digits + "_"
# What OmegaConf reads as a bool, and what Hydra's grammar reads as a number, null or bool.
NOT_WRONG_FOR_BOOL = {"y", "n", "yes", "no", "on", "off", "true", "false", "null"}
SPECIAL_WORDS = NOT_WRONG_FOR_BOOL | {"inf", "nan", "infinity"}


def _schema_fields() -> list[tuple[list[str], str, str, dict]]:
    """(overrides choosing the group, key, type name, bounds) for every schema field probed."""
    fields = [([], f.name, str(f.type), dict(f.metadata)) for f in dataclasses.fields(TrainSchema)]
    for group, by_choice in SCHEMAS.items():
        for choice in DEFAULT_CHOICES.get(group, ("*",)):
            schema = by_choice[choice]
            pick = [] if choice == "*" else [f"{group}={choice}"]
            for f in dataclasses.fields(schema):
                # `norm`/`activation` inside a model come from those groups; _target_ is refused.
                if not f.name.startswith("_") and f.name not in ("norm", "activation"):
                    fields.append((pick, f"{group}.{f.name}", str(f.type), dict(f.metadata)))
    return fields


FIELDS = _schema_fields()
BOUNDED = [f for f in FIELDS if {"gt", "ge", "lt", "le"} & set(f[3])]
TYPED = [f for f in FIELDS if f[2] in ("int", "float", "bool", "List[int]", "List[float]")]


def _mutate(word: str) -> st.SearchStrategy[str]:
    """Near misses of `word`: one character deleted, inserted, replaced or two swapped."""
    spots = st.integers(0, len(word))
    char = st.sampled_from(NAME_CHARS + "-.")
    return st.one_of(
        spots.map(lambda i: word[:i] + word[i + 1 :]),
        st.tuples(spots, char).map(lambda t: word[: t[0]] + t[1] + word[t[0] :]),
        st.tuples(spots, char).map(lambda t: word[: t[0]] + t[1] + word[t[0] + 1 :]),
        spots.map(lambda i: word[:i] + word[i + 1 : i + 2] + word[i : i + 1] + word[i + 2 :]),
    )


# Arbitrary printable text, without the characters that make an argument something else
# (control characters; a leading '-' is an option to the CLI and tested apart).
TEXT = st.text(
    st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp"), blacklist_characters="\x00"),
    max_size=12,
)


@st.composite
def unknown_choice(draw: st.DrawFn) -> list[str]:
    group = draw(st.sampled_from(sorted(GROUPS)))
    value = draw(
        st.sampled_from(GROUPS[group]).flatmap(_mutate) | TEXT.filter(lambda v: "=" not in v)
    )
    if value in GROUPS[group]:
        value += "x"
    return [f"{group}={value}"]


@st.composite
def unknown_key(draw: st.DrawFn) -> list[str]:
    name = draw(st.text(NAME_CHARS, min_size=1, max_size=10))
    pick, key, _, _ = draw(st.sampled_from(FIELDS))
    parent = key.rpartition(".")[0]
    known = {f[1] for f in FIELDS} | set(GROUPS) | {"tags"}
    wrong = draw(
        st.sampled_from(
            [
                f"{parent}.{name}" if parent else name,  # a key the group does not have
                f"{key}x",  # a near miss of a real key
                f"{key}.{name}",  # one level too deep
            ]
        ).filter(lambda k: k not in known)
    )
    plus = draw(st.sampled_from(("", "+", "++")))
    return [*pick, f"{plus}{wrong}={draw(st.integers(0, 9))}"]


@st.composite
def wrong_type(draw: st.DrawFn) -> list[str]:
    pick, key, kind, _ = draw(st.sampled_from(TYPED))
    word = st.text(string.ascii_letters, min_size=1, max_size=8).filter(
        lambda w: w.lower() not in SPECIAL_WORDS
    )
    if kind == "int":
        value = draw(word | st.sampled_from(("1.5", "[1]", "{a: 1}", "true")))
    elif kind == "float":
        value = draw(word | st.sampled_from(("[0.1]", "{a: 1}")))
    elif kind == "bool":
        value = draw(word | st.sampled_from(("[1]", "0.5")))
    else:
        value = draw(word.map(lambda w: f"[{w}]") | word)
    return [*pick, f"{key}={value}"]


@st.composite
def out_of_bounds(draw: st.DrawFn) -> list[str]:
    pick, key, kind, bounds = draw(st.sampled_from(BOUNDED))
    name, limit = draw(
        st.sampled_from(sorted((k, v) for k, v in bounds.items() if k not in ("choices", "length")))
    )
    integral = "int" in kind and "float" not in kind or kind == "Any" and float(limit).is_integer()
    step = draw(st.integers(1, 1000)) if integral else draw(st.floats(1e-3, 1e3))
    beyond = {"gt": -step, "ge": -step, "lt": step, "le": step}[name]
    on_edge = name in ("gt", "lt") and draw(st.booleans())
    value = limit if on_edge else limit + beyond
    text = str(int(value)) if integral else repr(float(value))
    if draw(st.booleans()) and not integral:
        text = draw(st.sampled_from(("nan", "inf", "-inf")))  # never within bounds
    return [*pick, f"{key}=[{text}]" if kind.startswith("List") else f"{key}={text}"]


# Overrides without '=' (a leading '-' would make them options, tested below).
MALFORMED = TEXT.filter(lambda v: "=" not in v and not v.startswith("-")).map(lambda v: [v])
EDGE = st.sampled_from(
    [["=3"], ["+=1"], ["~"], ["model.=3"], ["model..hidden=1"], ["model=[/]"], ["-x=1"]]
    + [["optimizer.lr=${oops}"], ["seed=${seed}"], ["model.hidden=1,2"], ["model.hidden=[1,2"]]
    + [["model._target_=os.system"], ["optimizer._partial_=false"], ["seed=99999999999999999999"]]
    + [["data.batch_size=1"], ["optimizer.lr=-1"], ["data.batch_size=0"], ["model.hidden=abc"]]
)
INVALID = st.one_of(unknown_choice(), unknown_key(), wrong_type(), out_of_bounds(), MALFORMED, EDGE)


@settings(PROPERTY, max_examples=30)
@given(overrides=INVALID)
def test_invalid_overrides_are_a_clear_error(nnlab, overrides: list[str]) -> None:
    assert_clear_error(nnlab("config", *overrides), ["Error"])


@settings(PROPERTY, max_examples=5)
@given(overrides=INVALID)
def test_invalid_overrides_to_train_are_a_clear_error_and_write_nothing(
    nnlab, workdir, overrides: list[str]
) -> None:
    assert_clear_error(nnlab("train", *QUICK, *overrides), ["Error"])
    runs = workdir / "outputs" / "runs"
    assert not runs.exists() or not any(runs.iterdir())


@settings(PROPERTY, max_examples=10)
@given(overrides=out_of_bounds())
def test_out_of_bounds_errors_name_the_key(nnlab, overrides: list[str]) -> None:
    # The leaf name: norm.groups=0 is reported where it lands, as model.norm_groups.
    key = overrides[-1].partition("=")[0].rpartition(".")[2]
    assert_clear_error(nnlab("config", *overrides), [key])

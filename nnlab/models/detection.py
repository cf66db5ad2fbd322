"""Faster R-CNN builder: torchvision's detector (RPN, RoIAlign, box head) on a chosen backbone.

Everything trains from scratch: these machines cannot download pretrained weights, so `weights`
only ever names a state dict already on disk.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import mobilenet_backbone, resnet_fpn_backbone
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign

from nnlab.choices import BACKBONES, RESNETS
from nnlab.errors import UserError, choice_error
from nnlab.models.layers import make_activation, make_norm

BUILDER = "nnlab.models.detection.build_faster_rcnn"  # the _target_ that marks a detection run
# Keys of a classification checkpoint that the detection backbone has no use for.
_CLASSIFIER_KEYS = ("fc.", "classifier.")


class CNNBackbone(nn.Sequential):
    """nnlab's own backbone: blocks of [stride-2 conv → norm → act → conv → norm → act].

    Each block halves the image, so four blocks give one feature map at stride 16.
    """

    def __init__(
        self,
        in_channels: int,
        channels: list[int],
        norm: str = "batch",
        norm_groups: int = 8,
        activation: str = "relu",
    ) -> None:
        layers: list[nn.Module] = []
        cin = in_channels
        for cout in channels:
            for stride, c_in in ((2, cin), (1, cout)):
                layers += [
                    nn.Conv2d(c_in, cout, 3, stride=stride, padding=1, bias=norm == "none"),
                    make_norm(norm, (cout, 1, 1), norm_groups),
                    make_activation(activation),
                ]
            cin = cout
        super().__init__(*layers)
        self.out_channels = cin  # what FasterRCNN reads to size the RPN and box heads


def _norm_layer(norm: str, groups: int) -> Callable[[int], nn.Module]:
    # torchvision's default FrozenBatchNorm2d is for fine-tuning pretrained nets; from random
    # init it would be a fixed identity, so the torchvision backbones use the norm= group too.
    return lambda channels: make_norm(norm, (channels, 1, 1), groups)


def _load_weights(body: nn.Module, path: str, strip: str = "") -> None:
    """Load a backbone state dict from disk into `body` (a classifier's head keys are ignored)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(
            f"model.weights={path}: no such file ({file.resolve()}). Give the path of a state "
            f"dict saved with torch.save (for example torchvision's resnet18-f37072fd.pth), or "
            f"model.weights=null to train the backbone from random initialization."
        )
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UserError(f"Cannot read model.weights={path}: {type(err).__name__}: {err}") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise UserError(f"model.weights={path} holds a {type(state).__name__}, not a state dict.")
    state = {
        k.removeprefix(strip): v for k, v in state.items() if not k.startswith(_CLASSIFIER_KEYS)
    }
    try:
        body.load_state_dict(state)
    except RuntimeError as err:
        # torch's message: a header line, then the missing/unexpected keys (can be very long).
        lines = str(err).splitlines()
        detail = (lines[1] if len(lines) > 1 else lines[0]).strip()[:300]
        raise UserError(
            f"model.weights={path} does not fit the {type(body).__name__} backbone ({detail}). "
            f"Give the state dict of the same architecture as model.backbone."
        ) from None


def _backbone(
    name: str,
    in_channels: int,
    channels: list[int],
    weights: str | None,
    norm: str,
    norm_groups: int,
    activation: str,
) -> tuple[nn.Module, list[str]]:
    """The backbone and the names of the feature maps the RoI pooling reads."""
    if name == "cnn":
        if not channels:
            raise UserError("model.channels must list at least one block, e.g. [32,64,128,128].")
        backbone = CNNBackbone(in_channels, list(channels), norm, norm_groups, activation)
        if weights:
            _load_weights(backbone, weights)
        return backbone, ["0"]
    norm_layer = _norm_layer(norm, norm_groups)
    if name in RESNETS:
        # All five stages trainable: nothing pretrained to protect.
        backbone = resnet_fpn_backbone(
            backbone_name=name, weights=None, norm_layer=norm_layer, trainable_layers=5
        )
        if weights:
            _load_weights(backbone.body, weights)
        return backbone, ["0", "1", "2", "3"]
    if name == "mobilenet_v3_large":
        backbone = mobilenet_backbone(
            backbone_name=name, weights=None, fpn=True, norm_layer=norm_layer, trainable_layers=6
        )
        if weights:
            # The FPN wraps mobilenet's `features`; its ImageNet keys start with "features.".
            _load_weights(backbone.body, weights, strip="features.")
        return backbone, ["0", "1"]
    raise choice_error("model.backbone", name, BACKBONES)


def _anchor_generator(sizes: list[int], ratios: list[float], levels: int) -> AnchorGenerator:
    # One size per level when there are as many sizes as levels (FPN: fine maps get small
    # anchors); otherwise every level gets every size, as torchvision's mobilenet FPN does.
    per_level = [(s,) for s in sizes] if len(sizes) == levels else [tuple(sizes)] * levels
    return AnchorGenerator(tuple(per_level), (tuple(ratios),) * levels)


def _checked_channels(backbone: str, input_shape: tuple[int, ...]) -> int:
    """The images' channel count, once the backbone is known to read it."""
    if backbone not in BACKBONES:
        raise choice_error("model.backbone", backbone, BACKBONES)
    in_channels = input_shape[0]
    if backbone != "cnn" and in_channels != 3:
        raise UserError(
            f"model.backbone={backbone} reads RGB images, but this dataset has {in_channels} "
            f"channel(s). Use model.backbone=cnn."
        )
    return in_channels


def _image_statistics(in_channels: int) -> tuple[list[float], list[float]]:
    # ImageNet statistics for RGB (what pretrained weights on disk expect); grey: a plain scale.
    if in_channels == 3:
        return [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    return [0.5] * in_channels, [0.25] * in_channels


def build_faster_rcnn(
    input_shape: tuple[int, ...],
    num_outputs: int,
    backbone: str = "cnn",
    channels: list[int] = (16, 32, 64),
    weights: str | None = None,
    anchor_sizes: list[int] = (16, 32, 64),
    aspect_ratios: list[float] = (0.5, 1.0, 2.0),
    min_size: int = 128,
    max_size: int = 128,
    rpn_pre_nms_top_n_train: int = 300,
    rpn_post_nms_top_n_train: int = 150,
    rpn_pre_nms_top_n_test: int = 300,
    rpn_post_nms_top_n_test: int = 100,
    rpn_batch_size_per_image: int = 64,
    box_batch_size_per_image: int = 64,
    box_head_width: int = 256,
    roi_sampling_ratio: int = 1,
    box_score_thresh: float = 0.05,
    box_detections_per_img: int = 100,
    norm: str = "batch",
    norm_groups: int = 8,
    activation: str = "relu",
) -> FasterRCNN:
    """torchvision's FasterRCNN for `num_outputs` object classes (plus background, label 0).

    `input_shape` is (channels, ...) of the images; only the channel count matters, since the
    detector resizes every image so its shorter side is `min_size` (longer side ≤ `max_size`).
    The defaults are conf/model/faster_rcnn.yaml's under train.yaml's norm= and activation=
    (model=faster_rcnn_coco is a preset of other values).
    """
    in_channels = _checked_channels(backbone, input_shape)
    body, featmaps = _backbone(
        backbone, in_channels, channels, weights, norm, norm_groups, activation
    )
    # FPN backbones add a max-pooled level ("pool") that only the RPN sees.
    levels = len(featmaps) + (backbone != "cnn")
    # torchvision's default of 2×2 samples per RoI bin doubles the cost of RoIAlign's backward
    # pass, the slowest step of training on a CPU; on small feature maps one sample is plenty.
    roi_pool = MultiScaleRoIAlign(
        featmap_names=featmaps, output_size=7, sampling_ratio=roi_sampling_ratio
    )
    mean, std = _image_statistics(in_channels)
    return FasterRCNN(
        body,
        num_classes=None,
        min_size=min_size,
        max_size=max_size,
        image_mean=mean,
        image_std=std,
        rpn_anchor_generator=_anchor_generator(list(anchor_sizes), list(aspect_ratios), levels),
        rpn_pre_nms_top_n_train=rpn_pre_nms_top_n_train,
        rpn_post_nms_top_n_train=rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_test=rpn_post_nms_top_n_test,
        rpn_batch_size_per_image=rpn_batch_size_per_image,
        box_roi_pool=roi_pool,
        box_head=TwoMLPHead(body.out_channels * 7 * 7, box_head_width),
        box_predictor=FastRCNNPredictor(box_head_width, num_outputs + 1),
        box_batch_size_per_image=box_batch_size_per_image,
        box_score_thresh=box_score_thresh,
        box_detections_per_img=box_detections_per_img,
    )


def detections(model: FasterRCNN, images: list[Tensor]) -> list[dict[str, Tensor]]:
    """Boxes (x0, y0, x1, y1 in input pixels), labels and scores per image, in eval mode."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model(images)
    model.train(was_training)
    return out

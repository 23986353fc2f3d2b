"""`SegModule`: the LightningModule that trains any registered net with CE + Dice.

It is the one place logits become probabilities, labels or instances.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torchmetrics import Metric
from torchmetrics.aggregation import MeanMetric

from unet_seg.data.contract import DataContract
from unet_seg.data.masks import IGNORE_INDEX
from unet_seg.data.readers import DEFAULT_INTENSITY
from unet_seg.instances import DEFAULT_INSTANCES, decode_instances
from unet_seg.losses import (
    CEDiceLoss,
    DeepSupervisionLoss,
    build_loss,
    class_probabilities,
)
from unet_seg.metrics import SegmentationScores, confusion_counts, ratio_scores
from unet_seg.models.base import SegNet
from unet_seg.models.blocks import center_crop
from unet_seg.models.registry import ARCHITECTURES, build_net
from unet_seg.run_dir import RunDir

log = logging.getLogger(__name__)

NONFINITE_CHECK_EVERY = 20
"""Training steps between host reads of the non-finite-loss flag (NaN is caught within these)."""

CHECKPOINT_FORMAT = 2
"""Version of what `SegModule` stores in a checkpoint (bumped when that changes).
2: the data contract is one `data` hyper-parameter. 1: its fields were separate
(`class_names`, `mask_values`, `normalization`, `mask_format`, `mask_colors`,
`input_size`); format 1 checkpoints are read and converted (`upgrade_hparams`)."""


SLICE_TILE = 512
"""The window of a 2-D or 2.5-D net over a volume's slices: the 2-D path's `tile_size`
(conf/predict.yaml), so a slice is predicted as an image of its size is. Tiling by the
training crop (256) instead ran 2.25x the pixels of a 512 slice at overlap 0.5 at every
validation: the ISBI stack's 2-D arm made 580 steps in its 15-minute budget, 636 with this
tile (experiments/volumes)."""


class SegModule(pl.LightningModule):
    """Segmentation training, validation and testing around a net from the registry.

    Every argument is plain data (dicts, lists, numbers), so the checkpoint
    carries them as hyperparameters and loads with `torch.load(weights_only=True)`.

    Args:
        arch: `{"name": <a key of registry.ARCHITECTURES>, **net kwargs}`.
        loss: `CEDiceLoss` kwargs plus `deep_supervision_weights`.
        optimizer: a Hydra partial config (`_target_`, `_partial_: true`, kwargs).
        data: the data contract, `DataContract.to_dict()`: classes, mask encoding,
            intensity scaling, normalisation, input channels, training patch size.
        scheduler: `{"scheduler": partial config, "interval", "monitor"}` or None.
        finetune: for a run started from another checkpoint's weights (`init_from=`, see
            `unet_seg.finetune`): `{"init_from": path, "reset": [net state-dict names not
            loaded], "pretrained_lr_scale": float, "freeze_encoder_epochs": int}`; else None.
    """

    def __init__(
        self,
        arch: dict,
        loss: dict,
        optimizer: dict,
        data: dict,
        scheduler: dict | None = None,
        finetune: dict | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.contract = DataContract.from_dict(data)
        self.hparams["data"] = self.contract.to_dict()  # complete, whatever was left default
        check_net_fits(arch, self.contract)
        self.net = build_net(arch)
        self.loss_fn = build_loss(loss, num_heads=self.net.num_heads)
        background = self.contract.background
        self.val_scores = SegmentationScores(self.contract.class_names, background=background)
        self.test_scores = SegmentationScores(self.contract.class_names, background=background)
        # val/test loss: the mean over images, summed across processes at the epoch's end
        # (a process with an empty share under DDP logs nothing per step, but joins these sums)
        self.val_loss = MeanMetric(nan_strategy="disable")
        self.test_loss = MeanMetric(nan_strategy="disable")
        self.inference_level: int | None = None
        self._train_nonfinite = torch.zeros((), dtype=torch.bool)
        self._epoch_loss: Tensor | float = 0.0  # sum of train losses x images, this epoch
        self._epoch_images = 0
        self._nonfinite = torch.zeros((), dtype=torch.bool)
        # one training patch: Lightning's model summary counts the FLOPs and sizes from it
        side, patch = self.contract.crop_size, self.contract.patch
        if self.contract.dims == 3 and patch:
            self.example_input_array = torch.zeros(1, self.contract.in_channels, *patch)
        elif side:
            self.example_input_array = torch.zeros(1, self.contract.in_channels, side, side)
        # volumes: each validation or test item is a whole volume, scored on its own too
        self.val_volume_dice = VolumeDice(self.contract.num_classes, background)
        self.test_volume_dice = VolumeDice(self.contract.num_classes, background)

    def forward(self, x: Tensor) -> Tensor:
        """Final logits `[B, C, H, W]` for every input pixel (the deepest head; a pruned level
        if one is set; for a valid-convolution net, with the image borders mirrored)."""
        if self.inference_level is not None:
            return self.net.forward_level(x, self.inference_level)
        out = self.net.forward_same(x)
        return out[-1] if isinstance(out, list) else out

    @staticmethod
    def probabilities(logits: Tensor) -> Tensor:
        """`[B, C, H, W]` logits -> `[B, max(C, 2), H, W]` float32 class probabilities."""
        return class_probabilities(logits)

    @staticmethod
    def labels(logits: Tensor) -> Tensor:
        """`[B, C, H, W]` logits -> `[B, H, W]` int64 class indices."""
        if logits.shape[1] == 1:
            return (logits[:, 0] > 0).long()
        return logits.argmax(dim=1)

    def instances(self, probs: np.ndarray, min_size: int | None = None) -> np.ndarray:
        """One image's probabilities `[3, H, W]` -> object labels int32 `[H, W]`, for a net
        trained on an instance target (`unet_seg.instances.decode_instances`).

        Args:
            min_size: smallest object kept, in pixels (None: the contract's `min_size`).
        """
        if not self.contract.instance_target:
            raise ValueError(
                "this checkpoint was trained on a semantic target: its objects are the "
                "connected components of its labels (train with data.target=instances for "
                "an instance target)"
            )
        settings = {**DEFAULT_INSTANCES, **self.contract.instances}
        min_size = settings["min_size"] if min_size is None else min_size
        return decode_instances(probs, min_size, settings["seed_threshold"])

    def volume_probabilities(
        self, volume: Tensor, tta: str = "none", overlap: float = 0.5, batch_size: int = 2,
        progress: bool = False,
    ) -> Tensor:  # fmt: skip
        """One normalised volume `[C, Z, Y, X]` -> class probabilities `[K, Z, Y, X]` float32
        on the CPU: a Gaussian-weighted sliding window of `contract.patch` for a 3-D net,
        every slice (or slab) along `contract.slice_axis` for a 2-D one, each slice tiled
        by the same window as a 2-D image (`SLICE_TILE`, or the training crop where it is
        larger), so a large EM slice never runs whole."""
        from unet_seg.volume_inference import slicewise, sliding_window

        c = self.contract
        predict = self._window_probabilities
        k = max(c.num_classes, 2)
        if c.dims == 3:
            return sliding_window(predict, volume, c.patch, k, overlap=overlap,
                                  batch_size=batch_size, device=self.device, tta=tta,
                                  progress=progress)  # fmt: skip
        return slicewise(predict, volume, c.slice_axis, c.slab, k, patch=self._slice_window(),
                         overlap=overlap, batch_size=4 * batch_size, device=self.device,
                         tta=tta, progress=progress)  # fmt: skip

    def _slice_window(self) -> list[int]:
        """A 2-D net's window in a volume's slice: `SLICE_TILE`, or the training crop where
        it is larger (as a 2-D image is tiled)."""
        return [max(self.contract.crop_size or 0, SLICE_TILE)] * 2

    def _window_probabilities(self, x: Tensor) -> Tensor:
        """A batch of windows `[B, C, *patch]` -> class probabilities `[B, K, *patch]`."""
        return self.probabilities(self(x))

    def volume_labels(
        self, volume: Tensor, tta: str = "none", overlap: float = 0.5, batch_size: int = 2,
        progress: bool = False,
    ) -> np.ndarray:  # fmt: skip
        """One normalised volume `[C, Z, Y, X]` -> class indices uint8 `[Z, Y, X]`: the argmax
        of `volume_probabilities`, decided band by band (`volume_label_bands`), so the K
        float32 probability maps of the whole volume never exist."""
        labels = np.empty(tuple(volume.shape[1:]), np.uint8)
        for top, band in self.volume_label_bands(volume.cpu(), tta, overlap, batch_size,
                                                 progress):  # fmt: skip
            labels[top : top + band.shape[0]] = band
        return labels

    def volume_label_bands(
        self, source: Tensor | np.ndarray | object, tta: str = "none", overlap: float = 0.5,
        batch_size: int = 2, progress: bool = False,
    ) -> Iterator[tuple[int, np.ndarray]]:  # fmt: skip
        """Class indices uint8 of a normalised volume `[C, Z, Y, X]` one band of z slices at a
        time, in order: `(first slice, labels [n, Y, X])`, the argmax of
        `volume_probability_bands`."""
        for top, probs in self.volume_probability_bands(source, tta, overlap, batch_size,
                                                        progress):  # fmt: skip
            yield top, probs.argmax(0).to(torch.uint8).numpy()

    def volume_probability_bands(
        self, source: Tensor | np.ndarray | object, tta: str = "none", overlap: float = 0.5,
        batch_size: int = 2, progress: bool = False,
    ) -> Iterator[tuple[int, Tensor]]:  # fmt: skip
        """`volume_probabilities` one band of z slices at a time, in order: `(first slice,
        probabilities [K, n, Y, X] float32 on the CPU)`. `source`: an array, or
        `volume_dataset.Bands` reading the volume from its files. A 3-D net's windows are
        blended band by band (`blended_bands`): beside the input, a band of about one
        patch of slices. A 2-D or 2.5-D net's slices along z run a chunk at a time
        (`volume_inference.slice_bands`, `slicewise`'s own chunks) with the slab's
        neighbours; slices along y or x need the whole volume at once."""
        from unet_seg.volume_inference import blended_bands, slice_bands

        c = self.contract
        k = max(c.num_classes, 2)
        if c.dims == 3:
            yield from blended_bands(self._window_probabilities, source, c.patch, k, overlap,
                                     batch_size, self.device, tta, progress)  # fmt: skip
            return
        options = {"tta": tta, "overlap": overlap, "batch_size": batch_size}
        if c.slice_axis != 0:
            volume = torch.as_tensor(np.asarray(source[:, :]))
            yield 0, self.volume_probabilities(volume, progress=progress, **options)
            return
        yield from slice_bands(self._window_probabilities, source, c.slab, k,
                               self._slice_window(), overlap,
                               4 * batch_size, self.device, tta, progress)  # fmt: skip

    def _volume_step(self, batch: dict, stage: str) -> Tensor:
        """Validation or test on whole volumes (batches of one): the net's probabilities a
        band of z slices at a time (`volume_probability_bands`, on the CPU), then the loss of
        their logarithms (the logits of the same probabilities), the pooled scores and this
        volume's per-class Dice (`VolumeDice`), streamed through the device a chunk of each
        band at a time (`streamed_volume_loss`): the whole volume's probabilities never
        exist, and no whole-volume tensor is ever on the device."""
        masks = batch["mask"]  # [1, Z, Y, X], on the CPU (`transfer_batch_to_device`)
        probs = self.volume_probability_bands(batch["image"][0])  # bands [K, n, Y, X], CPU
        scores = getattr(self, f"{stage}_scores")
        counts = torch.zeros(3, self.contract.num_classes, dtype=torch.long, device=self.device)

        def score(labels: Tensor, truth: Tensor) -> None:
            nonlocal counts
            scores.update(labels, truth)
            counts = counts + confusion_counts(labels, truth, self.contract.num_classes,
                                               IGNORE_INDEX)  # fmt: skip

        loss = streamed_volume_loss(
            probs, masks[0], self.loss_fn, self.device, score, sigmoid=self.contract.sigmoid
        )
        getattr(self, f"{stage}_loss").update(loss.detach(), 1)
        getattr(self, f"{stage}_volume_dice").update(counts=counts)
        self._nonfinite = self._nonfinite | ~torch.isfinite(loss.detach())
        return loss

    def transfer_batch_to_device(self, batch: object, device: torch.device,
                                 dataloader_idx: int) -> object:  # fmt: skip
        """Validation and test batches of volumes stay on the CPU: each is a whole volume
        (`C x voxels x 4` bytes of image, `voxels x 8` of labels), of which the sliding
        window and `streamed_volume_loss` move windows and chunks to the device. Any other
        batch moves whole, as Lightning moves it."""
        trainer = self._trainer
        if self.contract.volume and trainer is not None and not trainer.training:
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def _shared_step(self, batch: dict, stage: str) -> Tensor:
        if self.contract.volume and stage != "train":
            return self._volume_step(batch, stage)
        images, masks, weights = batch["image"], batch["mask"], batch.get("weight")
        if stage == "train":  # training patches come with `net.margin` pixels of context
            outputs = self.net.forward_with_context(images)
        else:  # whole images
            outputs = self.net.forward_same(images)
        logits = outputs[-1] if isinstance(outputs, list) else outputs
        # a valid-convolution net answers for the centre of its input only: score that
        masks = center_crop(masks, logits.shape[-2:])
        if weights is None:
            loss = self.loss_fn(outputs, masks)
        else:  # per-pixel loss weights [B, H, W] (loss=weighted_ce_dice)
            loss = self.loss_fn(outputs, masks, center_crop(weights, logits.shape[-2:]))
        train = stage == "train"
        if train:  # a per-step value; summed on the device for the bar's epoch mean
            self.log(f"{stage}/loss", loss, on_step=True, on_epoch=False, prog_bar=False,
                     batch_size=len(images))  # fmt: skip
            self._epoch_loss = self._epoch_loss + loss.detach() * len(images)
            self._epoch_images += len(images)
        else:
            getattr(self, f"{stage}_scores").update(self.labels(logits), masks)
            getattr(self, f"{stage}_loss").update(loss.detach(), len(images))
            # flagged on the device, checked once at the epoch's end: no sync per step
            self._nonfinite = self._nonfinite | ~torch.isfinite(loss.detach())
        return loss

    def on_train_epoch_start(self) -> None:
        self._epoch_loss, self._epoch_images = 0.0, 0
        self._train_nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        frozen = self.frozen_epochs()
        if frozen and self.current_epoch == 0:
            log.info("epochs 1-%d: the encoder is frozen (fine-tuning)", frozen)
        elif frozen and self.current_epoch == frozen:
            log.info("epoch %d: the encoder is unfrozen and trains from now on", frozen + 1)

    def epoch_train_loss(self) -> float | None:
        """Mean training loss of this process over the epoch so far (None before a step)."""
        if not self._epoch_images:
            return None
        return float(self._epoch_loss / self._epoch_images)

    def on_train_epoch_end(self) -> None:
        self._check_train_loss("in this epoch")
        if self._epoch_images:  # on the progress bar only (TensorBoard has every step's loss)
            mean = self._epoch_loss / self._epoch_images
            self.log("train/loss_epoch", mean, prog_bar=True, logger=False, sync_dist=True)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss = self._shared_step(batch, "train")
        # flagged on the device; read every NONFINITE_CHECK_EVERY steps and at the epoch's
        # end, so the host never waits on the accelerator for it in between
        self._train_nonfinite = self._train_nonfinite | ~torch.isfinite(loss.detach())
        if (batch_idx + 1) % NONFINITE_CHECK_EVERY == 0:
            self._check_train_loss(f"by step {self.global_step}")
        return loss

    def _check_train_loss(self, where: str) -> None:
        if bool(self._train_nonfinite):
            self._raise_nonfinite("train", where)

    def _raise_nonfinite(self, stage: str, where: str) -> None:
        raise FloatingPointError(
            f"{stage}/loss is not finite ({where}, epoch {self.current_epoch}); nothing was "
            "averaged into the metrics. Usual causes: a learning rate too high for this "
            "optimizer, or float16 overflow (try trainer.precision=bf16-mixed or 32-true). "
            "debug=anomaly reruns with autograd anomaly detection to find the operation; "
            "resume=RUN_DIR continues from the last good checkpoint."
        )

    def on_validation_epoch_start(self) -> None:
        self._nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        self._share_buffers()

    def on_test_epoch_start(self) -> None:
        self.on_validation_epoch_start()

    def _share_buffers(self) -> None:
        """Under DDP while fitting: rank 0's buffers (batch-norm statistics) to every process
        now, as DDP's wrapper would in the first evaluation forward. Done here, where every
        process passes, so that a process with fewer or no evaluation batches (a split
        smaller than the process count) leaves no other waiting in that forward."""
        ddp = getattr(self.trainer.strategy, "model", None) if self._trainer else None
        if not isinstance(ddp, DistributedDataParallel):
            return
        for buffer in self.buffers():
            torch.distributed.broadcast(buffer, src=0)
        ddp.require_forward_param_sync = False  # the wrapper's own broadcast: done above

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def _log_scores(self, stage: str) -> None:
        if bool(self._nonfinite):
            getattr(self, f"{stage}_scores").reset()
            getattr(self, f"{stage}_loss").reset()
            self._raise_nonfinite(stage, "in this evaluation")
        scores, loss = getattr(self, f"{stage}_scores"), getattr(self, f"{stage}_loss")
        values = {f"{stage}/{k}": v for k, v in scores.compute().items()}
        self.log(f"{stage}/loss", loss.compute(), prog_bar=True)
        self.log(f"{stage}/dice", values.pop(f"{stage}/dice"), prog_bar=True)
        self.log_dict(values)
        if self.contract.volume:  # per class over volumes, then over classes: `VolumeDice`
            volume_dice = getattr(self, f"{stage}_volume_dice")
            self.log(f"{stage}/volume_dice", volume_dice.compute())
            volume_dice.reset()
        scores.reset()
        loss.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_scores("val")

    def on_test_epoch_end(self) -> None:
        self._log_scores("test")

    def configure_optimizers(self) -> dict:
        optimizer = instantiate(self.hparams.optimizer)(params=self._param_groups())
        scale = float((self.hparams.get("finetune") or {}).get("pretrained_lr_scale", 1.0))
        for group in optimizer.param_groups:
            if group.get("name") == "pretrained":
                group["lr"] *= scale
        sched = self.hparams.scheduler
        if not sched or not sched.get("scheduler"):
            return {"optimizer": optimizer}
        scheduler = instantiate(sched["scheduler"])(optimizer=optimizer)
        config = {"scheduler": scheduler, "interval": sched.get("interval", "epoch")}
        if sched.get("monitor"):
            config["monitor"] = sched["monitor"]
        return {"optimizer": optimizer, "lr_scheduler": config}

    def _param_groups(self) -> list[dict]:
        """One group of every parameter; a fine-tuning run with `pretrained_lr_scale` != 1 has
        "pretrained" (loaded from `init_from`, trained at lr x the scale) and, when some were
        reset (the head, for another class count), "new" (the configured lr)."""
        finetune = self.hparams.get("finetune") or {}
        if float(finetune.get("pretrained_lr_scale", 1.0)) == 1.0:
            return [{"params": list(self.parameters())}]
        reset = {f"net.{name}" for name in finetune["reset"]}
        groups: dict[str, list] = {"pretrained": [], "new": []}
        for name, param in self.named_parameters():
            groups["new" if name in reset else "pretrained"].append(param)
        return [{"params": params, "name": name} for name, params in groups.items() if params]

    def frozen_epochs(self) -> int:
        """Epochs at the start of a fine-tuning run in which the encoder does not train."""
        return int((self.hparams.get("finetune") or {}).get("freeze_encoder_epochs", 0))

    def on_train_batch_start(self, batch: object, batch_idx: int) -> None:
        """While the encoder is frozen its batch-norm layers keep their statistics (eval mode:
        they normalise with the loaded running mean and variance and do not update them); set
        per batch, as Lightning returns the module to train mode after each validation."""
        epochs = self.frozen_epochs()
        if epochs:
            frozen = self.current_epoch < epochs
            for module in self.net.encoder_modules():
                module.train(not frozen)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """While the encoder is frozen, drop its gradients before the step: optimizers skip a
        parameter without one (no update, no weight decay, no moments). Decided by the epoch,
        so a resumed run freezes exactly as an uninterrupted one; the parameters keep
        `requires_grad` (DDP needs the same set of parameters in every step).

        A step whose gradients are not all finite is skipped the same way (every gradient
        dropped: no update, the moments untouched), as a loss scaler skips an overflowing
        float16 step, and counted in a warning: one such step would otherwise make every
        weight NaN. Seen once in a few hundred one-step bf16-mixed runs on the CPU (3-D
        nets, first step, cause not found); a run whose steps keep failing still stops at
        its validation's non-finite loss."""
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if grads and not bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()):
            for param in self.parameters():
                param.grad = None
            self._skipped_steps = getattr(self, "_skipped_steps", 0) + 1
            log.warning("step %d: gradients not finite, step skipped (%d so far)",
                        self.global_step, self._skipped_steps)  # fmt: skip
            return
        if self.current_epoch >= self.frozen_epochs():
            return
        parts = self.net.parts()
        for name, param in self.net.named_parameters():
            if parts[name] == "encoder":
                param.grad = None

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["unet_seg_format"] = CHECKPOINT_FORMAT

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: str = "cpu") -> SegModule:
        """Load a module for inference from a checkpoint alone, never unpickling code."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} does not exist")
        try:
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as err:  # noqa: BLE001 - any failure means "not a safe checkpoint"
            raise ValueError(
                f"{path}: not a loadable unet-seg checkpoint ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}). Pass a .ckpt written by "
                "`python -m unet_seg.train` (checkpoints/best.ckpt)."
            ) from err
        if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
            bare = isinstance(ckpt, dict) and all(isinstance(v, Tensor) for v in ckpt.values())
            raise ValueError(
                f"{path}: not a unet-seg checkpoint (no state_dict/hyper_parameters)"
                + (": it holds bare weights, without the net's configuration" if bare else "")
                + ". Pass a .ckpt written by `python -m unet_seg.train` (checkpoints/best.ckpt)."
            )
        fmt = ckpt.get("unet_seg_format")
        if fmt == 1:
            ckpt["hyper_parameters"] = upgrade_hparams(ckpt["hyper_parameters"], path)
            fmt = CHECKPOINT_FORMAT
        if fmt is None:
            raise ValueError(
                f"{path}: a Lightning checkpoint not written by unet-seg (no unet_seg_format; "
                f"hyper-parameters {sorted(ckpt['hyper_parameters'])}); it comes from another "
                "project or architecture. Train with `python -m unet_seg.train`."
            )
        if fmt != CHECKPOINT_FORMAT:
            age = "an older" if isinstance(fmt, int) and fmt < CHECKPOINT_FORMAT else "another"
            raise ValueError(
                f"{path}: checkpoint format {fmt!r} ({age} unet-seg), this unet-seg reads format "
                f"{CHECKPOINT_FORMAT}; load it with the unet-seg version that wrote it"
            )
        try:
            module = cls(**ckpt["hyper_parameters"])
        except (TypeError, ValueError, KeyError) as err:
            raise ValueError(
                f"{path}: its hyper-parameters do not describe a net this unet-seg builds "
                f"({type(err).__name__}: {err})"
            ) from err
        try:
            module.load_state_dict(ckpt["state_dict"])
        except RuntimeError as err:
            want, given = module.state_dict(), ckpt["state_dict"]
            missing = [k for k in want if k not in given]
            unexpected = [k for k in given if k not in want]
            resized = [k for k in want if k in given and want[k].shape != given[k].shape]
            raise ValueError(
                f"{path}: its weights do not fit the net it names (arch={module.hparams.arch}): "
                f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected "
                f"(e.g. {unexpected[:3]}), {len(resized)} of another shape (e.g. {resized[:3]}). "
                "The checkpoint was edited or its weights come from another architecture."
            ) from err
        return module.eval()


VOLUME_CHUNK_BYTES = 64 * 2**20
"""Float32 probabilities per chunk of z slices that `streamed_volume_loss` puts on the device
(at least one slice): 64 MiB, with its logarithm and the loss's terms a few times that."""


def streamed_volume_loss(
    probs: Tensor | Iterable[tuple[int, Tensor]],
    masks: Tensor,
    loss_fn: nn.Module,
    device: torch.device | str,
    on_labels: Callable[[Tensor, Tensor], None] | None = None,
    sigmoid: bool = False,
    chunk_bytes: int = VOLUME_CHUNK_BYTES,
) -> Tensor:
    """The loss of a whole volume's probabilities, a chunk of z slices on the device at a time.

    What `loss_fn(log(probs.clamp_min(1e-7)), masks)` gives on the whole volume (the
    logits of these probabilities: for a sigmoid net `log(p1 / p0)`), to float rounding:
    `CEDiceLoss` pools every term over all voxels, so its cross-entropy is the sum over
    chunks of `w * ce` over that of `w`, and its soft Dice the per-class sums of
    intersection and cardinality over chunks, finished once.

    Args:
        probs: `[K, Z, Y, X]` class probabilities (K >= 2), on the CPU (`sliding_window`),
            or their bands `(first slice, [K, n, Y, X])` in any order that covers the
            volume once (`SegModule.volume_probability_bands`).
        masks: `[Z, Y, X]` int64 class indices, `IGNORE_INDEX` where unlabelled, any device.
        loss_fn: `CEDiceLoss`, or a `DeepSupervisionLoss` of one (its per-head loss).
        device: where each chunk is computed.
        on_labels: called with each chunk's labels (argmax) and truth on `device`, both
            `[z, Y, X]`, e.g. to accumulate confusion counts.
        sigmoid: the net has one logit (`probs` is `[1 - p, p]`): its logit `log(p / (1 - p))`.
        chunk_bytes: float32 bytes of probabilities per chunk (at least one slice).
    Returns:
        the loss, a float32 scalar on `device`.
    """
    loss = loss_fn.loss if isinstance(loss_fn, DeepSupervisionLoss) else loss_fn
    if not isinstance(loss, CEDiceLoss):
        raise TypeError(f"streamed_volume_loss: {type(loss).__name__} is not a CEDiceLoss")
    bands = [(0, probs)] if isinstance(probs, Tensor) else probs
    zero = torch.zeros((), device=device)
    ce_num, ce_den = zero, zero
    inter = card_p = card_t = None
    weights = None if loss.class_weights is None else loss.class_weights.to(device)
    for p, t in _chunks(bands, masks, chunk_bytes):
        p = p.to(device, torch.float32)[None].clamp_min(1e-7)
        t = t.to(device)[None]  # [1, z, Y, X]
        if inter is None:
            inter = card_p = card_t = torch.zeros(p.shape[1], device=device)
        logits = (p[:, 1:] / p[:, :1]).log() if sigmoid else p.log()
        valid = t != IGNORE_INDEX
        if loss.ce_weight:
            num, den = _ce_sums(logits, t, valid, weights)
            ce_num, ce_den = ce_num + num, ce_den + den
        if loss.dice_weight:
            q = class_probabilities(logits) * valid[:, None]  # [1, K, z, Y, X]
            onehot = F.one_hot(t.clamp(min=0), q.shape[1]).movedim(-1, 1).to(q.dtype)
            onehot = onehot * valid[:, None]
            dims = (0, *range(2, q.ndim))
            inter = inter + (q * onehot).sum(dims)
            card_p, card_t = card_p + q.sum(dims), card_t + onehot.sum(dims)
        if on_labels is not None:
            labels = (logits[:, 0] > 0).long() if logits.shape[1] == 1 else logits.argmax(1)
            on_labels(labels[0], t[0])
    total = zero
    if loss.ce_weight:
        total = total + loss.ce_weight * (ce_num / ce_den.clamp_min(torch.finfo(torch.float).tiny))
    if loss.dice_weight:
        dice = (2 * inter + loss.smooth) / (card_p + card_t + loss.smooth)
        if not loss.include_background:
            dice = dice[1:]
        total = total + loss.dice_weight * (1 - dice.mean())
    return total


def _chunks(
    bands: Iterable[tuple[int, Tensor]], masks: Tensor, chunk_bytes: int
) -> Iterator[tuple[Tensor, Tensor]]:
    """`(probabilities [K, z, Y, X], truth [z, Y, X])` of at most `chunk_bytes`
    of float32 probabilities (at least one slice), cut from each band in turn."""
    for top, band in bands:
        per_slice = 4 * band.shape[0] * max(1, band[0, 0].numel())
        step = max(1, chunk_bytes // per_slice)
        for z in range(0, band.shape[1], step):
            p = band[:, z : z + step]
            yield p, masks[top + z : top + z + p.shape[1]]


def _ce_sums(
    logits: Tensor, target: Tensor, valid: Tensor, class_weights: Tensor | None
) -> tuple[Tensor, Tensor]:
    """`losses.cross_entropy`'s numerator `sum(w * ce)` and denominator `sum(w)` (no pixel
    weights), for `streamed_volume_loss` to pool over chunks."""
    logits = logits.float()
    w = valid.float()
    if logits.shape[1] == 1:
        pos_weight = None if class_weights is None else class_weights[1] / class_weights[0]
        ce = F.binary_cross_entropy_with_logits(
            logits[:, 0], valid * target.float(), pos_weight=pos_weight, reduction="none"
        )
        w_den = w
    else:
        ce = F.cross_entropy(logits, target, weight=class_weights, ignore_index=IGNORE_INDEX,
                             reduction="none")  # fmt: skip
        w_den = w if class_weights is None else w * class_weights[target.clamp(min=0)]
    return (w * ce).sum(), w_den.sum()


def mean_over_volumes(per_volume: Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
    """The one reduction of per-volume scores, for `val/volume_dice` and `test/volume_dice`
    in training (`VolumeDice`) and `evaluate`'s means over volumes alike (nnU-Net's summary,
    the field's convention): the mean over volumes of each class, then the mean over classes
    of those means. A class absent from both the truth and the prediction of a volume
    scores NaN there (nothing to find, nothing found) and is left out of that class's mean;
    a class absent from every volume is NaN and left out of the mean over classes (NaN when
    every class is).

    Two volumes, Dice of (class a, class b): (1.0, absent) and (0.4, 0.0) give class means
    (0.7, 0.0) and 0.35; not 0.6, the mean of each volume's own mean (1.0 and 0.2).

    Args:
        per_volume: `[N, K]` scores, a row per volume, a column per class scored.
    Returns:
        `(per-class means [K], their mean [])`, float64 tensors on the input's device.
    """
    scores = torch.as_tensor(per_volume, dtype=torch.float64)
    counted = ~scores.isnan()
    return class_means(torch.where(counted, scores, 0.0).sum(0), counted.sum(0))


def class_means(total: Tensor, counted: Tensor) -> tuple[Tensor, Tensor]:
    """`mean_over_volumes` from its sums: per class the sum of its scores over the volumes
    that count it and their number (`[K]` each; what `VolumeDice` sums across processes).

    Returns:
        `(per-class means [K], their mean [])`, float64.
    """
    per_class = total.double() / counted.double()  # 0 / 0: NaN, a class in no volume
    kept = per_class[~per_class.isnan()]
    mean = kept.mean() if kept.numel() else per_class.new_tensor(float("nan"))
    return per_class, mean


class VolumeDice(Metric):
    """`val/volume_dice`: each whole volume's Dice per scored class (NaN for a class absent
    from both its truth and prediction), reduced as `evaluate` reduces volumes
    (`mean_over_volumes`: per class over volumes, then over classes). The scored classes are
    the contract's (`DataContract.scored_classes`): the foreground 1..K-1, or all K with
    `data.background=false` (class 0 a real class, as the 2-D scores count it). The state is
    per scored class the sum of the counted Dice and the count of volumes, summed across
    processes under DDP (a process without volumes adds zeros)."""

    full_state_update = False

    def __init__(self, num_classes: int, background: bool = True) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.first = 1 if background else 0
        scored = max(num_classes - self.first, 0)
        self.add_state("total", default=torch.zeros(scored), dist_reduce_fx="sum")
        self.add_state("counted", default=torch.zeros(scored, dtype=torch.long),
                       dist_reduce_fx="sum")  # fmt: skip

    def update(
        self, labels: Tensor | None = None, masks: Tensor | None = None,
        counts: Tensor | None = None,
    ) -> None:  # fmt: skip
        """One volume: its labels and truth (`IGNORE_INDEX` where unlabelled), any shape, or
        its `confusion_counts` `[3, K]` (`counts`, summed over the chunks it was scored in)."""
        if counts is None:
            counts = confusion_counts(labels, masks, self.num_classes, IGNORE_INDEX)
        dice = ratio_scores(counts, empty=float("nan"))["dice"][self.first :]
        present = ~dice.isnan()
        self.total += torch.where(present, dice, 0.0).to(self.total.dtype)
        self.counted += present.long()

    def compute(self) -> Tensor:
        return class_means(self.total.cpu(), self.counted.cpu())[1].float()


def check_net_fits(arch: dict, contract: DataContract) -> None:
    """Refuse an `arch` whose input channels or logits contradict the data contract."""
    want = {"in_channels": contract.in_channels, "num_classes": contract.out_channels}
    wrong = [f"arch.{k}={arch.get(k)}" for k, v in want.items() if arch.get(k) != v]
    net = ARCHITECTURES.get(arch.get("name"))
    if net is not None and (net.spatial_dims == 3) != (contract.dims == 3):
        samples = (
            "3-D patches"
            if contract.dims == 3
            else ("2-D images" if not contract.volume else f"{contract.dims}-D slices of volumes")
        )
        fix = (
            "a 3-D net: arch=unet3d or arch=nested3d"
            if contract.dims == 3
            else "a 2-D net (arch=unet, nested, ...), or data.dims=3 for volumes"
        )
        raise ValueError(
            f"arch={arch['name']} is a {net.spatial_dims}-D net, and the data are {samples}: "
            f"use {fix}"
        )
    if wrong:
        raise ValueError(
            f"{', '.join(wrong)} contradicts the data: {contract.in_channels} input channel(s), "
            f"{contract.out_channels} logit channel(s) for classes {contract.class_names}. "
            "Leave arch.in_channels and arch.num_classes to follow data.in_channels and "
            "data.num_classes (their defaults)."
        )


def upgrade_hparams(hparams: dict, path: Path | None = None) -> dict:
    """Format 1 hyper-parameters -> format 2: the contract's fields gathered into `data`.

    The oldest format 1 checkpoints lack the patch size (`input_size`): it is then read
    from the config of the run directory the checkpoint at `path` sits in, if there.
    """
    hp = dict(hparams)
    run = RunDir.of_checkpoint(path) if path is not None else None
    if hp.get("input_size") is None and run is not None:
        hp["input_size"] = run.load_config().get("data", {}).get("crop_size")
    norm = hp.pop("normalization")
    hp["data"] = {
        "class_names": list(hp.pop("class_names")),
        "in_channels": hp["arch"]["in_channels"],
        "sigmoid": hp["arch"]["num_classes"] == 1,
        "mask_format": hp.pop("mask_format", "values"),
        "mask_values": list(hp.pop("mask_values")),
        "mask_colors": hp.pop("mask_colors", None),
        "intensity": dict(norm.get("intensity") or DEFAULT_INTENSITY),
        "mean": list(norm["mean"]),
        "std": list(norm["std"]),
        "crop_size": hp.pop("input_size", None),
    }
    return hp


def apply_fast_path(
    net: SegNet,
    channels_last: bool = False,
    compile: bool | dict = False,
    checkpointing: bool = False,
) -> SegNet:
    """Switch on speed-ups that change how `net` runs, never its weights; returns `net`.

    Args:
        channels_last: weights in NHWC memory order (NDHWC for a 3-D net); convolutions
            then keep their activations so too, the layout oneDNN's and cuDNN's fastest
            kernels use.
        compile: `torch.compile` the net in place (`True`, or `torch.compile` kwargs);
            its state-dict keys, and so checkpoints, stay as they were.
        checkpointing: recompute UNet++ decoder nodes in the backward pass instead of
            storing their activations (less memory, more time); UNet++ only.
    """
    if checkpointing:
        if not net.supports_checkpointing:
            raise ValueError(
                f"checkpointing: {type(net).__name__} has no activation checkpointing "
                "(only UNet++: arch=nested, nested3d or unetpp_encoder); drop the option"
            )
        net.checkpointing = True
    if channels_last:
        net.to(
            memory_format=torch.channels_last_3d if net.spatial_dims == 3 else torch.channels_last
        )
    if compile:
        net.compile(**(dict(compile) if isinstance(compile, Mapping) else {}))
    return net


def channels_last_wins(device: str, precision: str) -> bool:
    """Whether channels-last is the faster layout for training on `device` (`cpu`, `cuda`)
    at `precision`: on a CPU always (oneDNN's NHWC kernels: 1.2x in float32 and 1.4x on top
    of bf16-mixed for the 16-channel U-Net here, 3-D nets and UNet++ alike), on a GPU under
    mixed precision (tensor cores), not in float32 there."""
    return device == "cpu" or precision in ("16-mixed", "bf16-mixed")


class FastPath(pl.Callback):
    """Apply `apply_fast_path` to the module's net when fitting starts (see `conf/fast/`).

    A callback rather than a `SegModule` argument: these settings change speed and
    memory only, so checkpoints neither carry them nor depend on them. `channels_last:
    auto` (the default, `conf/callbacks/default.yaml`) follows `channels_last_wins`.
    """

    def __init__(
        self,
        channels_last: bool | str = False,
        compile: bool | dict = False,
        checkpointing: bool = False,
    ) -> None:
        if channels_last not in (True, False, "auto"):
            raise ValueError(f"channels_last={channels_last!r}: choose true, false or auto")
        self.options = {
            "channels_last": channels_last,
            "compile": compile,
            "checkpointing": checkpointing,
        }

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            options = dict(self.options)
            if options["channels_last"] == "auto":
                device = trainer.strategy.root_device.type
                options["channels_last"] = channels_last_wins(device, str(trainer.precision))
            apply_fast_path(pl_module.net, **options)

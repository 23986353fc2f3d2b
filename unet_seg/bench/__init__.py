"""The sections of `python -m unet_seg.benchmark`: where training and inference time goes."""

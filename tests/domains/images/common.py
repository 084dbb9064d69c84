"""Constants shared by the images tests."""
from sciddpm.schedules import LinearSchedule

#: The schedule the images tests build their networks for (the images domain's default, 1000 linear steps).
LINEAR_1000 = LinearSchedule(1000)

#: A UNet small enough for sub-second CPU tests (2 levels, 8 channels, no attention).
TINY_UNET = {"model_channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [],
             "dropout": 0.0, "norm_groups": 4}

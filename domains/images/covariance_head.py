"""SN-/NPR-DPM covariance heads on a frozen pretrained image UNet (Bao et al., ICML 2022, "Estimating the Optimal
Covariance with Imperfect Mean in Diffusion Probabilistic Models").

The paper's second stage trains only a small head on top of the frozen noise-prediction network: here a fresh
GroupNorm–SiLU–Conv output layer reads the UNet's final hidden state (the last decoder feature map, i.e. the input
of ``unet.out``) and predicts, per pixel, SN's E[ε² | x_t] or NPR's E[(ε − ε̂)² | x_t]. Non-negativity: the conv
output passes through softplus, whose bias starts at softplus⁻¹(``init_value``) so that the untrained head
predicts ≈ ``init_value`` everywhere (1 for SN, since E ε² = 1; small for NPR). The trunk is frozen
(``requires_grad`` False, always in eval mode, run under ``torch.no_grad``), so training costs one trunk forward
per step; ``mean_model`` lets the frozen ε̂ and the head share that forward (see its docstring).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sciddpm.domains.images.backbone import UNet
from sciddpm.network_time import check_network_schedule
from sciddpm.objectives import eps_predictor
from sciddpm.schedules import NoiseSchedule
from sciddpm.spaces import DenseSpace
from sciddpm.variances import fit_covariance_head


class UNetCovarianceHead(nn.Module):
    """h(x_t, t) = softplus(Conv(SiLU(GN(f(x_t, t))))) ≥ 0, [B, C, H, W], with f the frozen UNet's final hidden state.

    Args:
        unet: the pretrained ε-network; it is frozen in place (``requires_grad_(False)``) and shared, not copied
            (a submodule: ``head.to(device)`` moves it too; ``save`` writes only the head's own tensors).
        init_value: the head's initial output (softplus of the bias); must be > 0.
        weight_scale: the fresh conv's default initialisation is scaled by this, so the initial output is
            ``init_value`` up to small x- and t-dependent variations.
    """

    def __init__(self, unet: UNet, init_value: float = 1.0, weight_scale: float = 0.1) -> None:
        super().__init__()
        if not init_value > 0:
            raise ValueError(f"init_value must be > 0, got {init_value}")
        cfg = unet.config()
        self.unet = unet.requires_grad_(False).eval()
        ch = cfg["model_channels"] * cfg["channel_mult"][0]
        self._config: dict[str, Any] = {"channels": ch, "out_channels": cfg["in_channels"],
                                        "norm_groups": cfg["norm_groups"], "init_value": float(init_value),
                                        "weight_scale": float(weight_scale)}
        self.out = nn.Sequential(nn.GroupNorm(math.gcd(cfg["norm_groups"], ch), ch), nn.SiLU(),
                                 nn.Conv2d(ch, cfg["in_channels"], 3, padding=1))
        with torch.no_grad():
            self.out[2].weight.mul_(weight_scale)
            self.out[2].bias.fill_(math.log(math.expm1(init_value)))  # softplus⁻¹(init_value)
        #: run the trunk under bf16 autocast when its input is on CUDA (training speed; off for evaluation).
        self.autocast_bf16 = False
        self._cache: tuple | None = None

    def config(self) -> dict[str, Any]:
        """The head's hyper-parameters (JSON-serialisable); the trunk is described by ``unet.config()``."""
        return dict(self._config)

    def train(self, mode: bool = True) -> "UNetCovarianceHead":
        """Set the head's mode; the frozen trunk always stays in eval mode (no dropout)."""
        super().train(mode)
        self.unet.eval()
        return self

    def _trunk(self, x: Tensor, t: Tensor, y: Tensor | None, cond_image: Tensor | None) -> tuple[Tensor, Tensor]:
        """(UNet output, final hidden state) under no_grad, in the trunk's dtype (bf16 autocast on CUDA if set)."""
        trunk_dtype, dtype = self.unet.input_conv.weight.dtype, self.out[2].weight.dtype
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast_bf16 and x.is_cuda):
            out, feats = self.unet(x.to(trunk_dtype), t, y=y, cond_image=cond_image, return_features=True)
        return out.to(dtype), feats[-1].to(dtype)  # feats[-1] is exactly the input of unet.out (backbone.py)

    def mean_model(self, x: Tensor, t: Tensor, y: Tensor | None = None, cond_image: Tensor | None = None) -> Tensor:
        """The frozen UNet's output for (x, t), remembering its hidden state: a following ``forward`` on the same
        x object (unchanged) and equal t reuses it, so ε̂ and h cost one trunk forward. Wrap with
        ``eps_predictor(head.mean_model, ...)`` to get ε̂ for ``covariance_head_loss`` or a sampler."""
        out, feat = self._trunk(x, t, y, cond_image)
        t_key = torch.as_tensor(t, dtype=torch.float64, device=x.device).reshape(-1).expand(x.shape[0]).clone()
        self._cache = (x, x._version, t_key, y, cond_image, feat)
        return out.to(x.dtype)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None, cond_image: Tensor | None = None) -> Tensor:
        """Predict SN's E[ε²|x_t] or NPR's E[(ε − ε̂)²|x_t] per pixel: [B, C, H, W], ≥ 0, in x's dtype."""
        feat = None
        if self._cache is not None:
            cx, version, ct, cy, cc, cfeat = self._cache
            self._cache = None
            t_b = torch.as_tensor(t, dtype=torch.float64, device=x.device).reshape(-1).expand(x.shape[0])
            if cx is x and version == x._version and cy is y and cc is cond_image and torch.equal(ct, t_b):
                feat = cfeat
        if feat is None:
            feat = self._trunk(x, t, y, cond_image)[1]
        return F.softplus(self.out(feat)).to(x.dtype)

    def head_state_dict(self) -> dict[str, Tensor]:
        """The trained head's tensors only (``out.*``), without the frozen trunk."""
        return {f"out.{k}": v.detach().cpu().contiguous() for k, v in self.out.state_dict().items()}

    def save(self, path: str | Path) -> Path:
        """Write the head (not the trunk) to ``path`` as safetensors, with ``config()`` in the metadata."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(self.head_state_dict(), str(path), metadata={"config": json.dumps(self.config())})
        return path

    @classmethod
    def load(cls, path: str | Path, unet: UNet) -> "UNetCovarianceHead":
        """Rebuild a head saved by ``save`` on top of ``unet`` (on the CPU); ValueError if they do not match."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            config = json.loads((f.metadata() or {}).get("config", "{}"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        if not config:
            raise ValueError(f"{path} has no covariance-head config in its metadata")
        head = cls(unet, init_value=config["init_value"], weight_scale=config["weight_scale"])
        if head.config() != config:
            raise ValueError(f"covariance head in {path} does not fit this UNet: {config} vs {head.config()}")
        head.out.load_state_dict({k.removeprefix("out."): v for k, v in tensors.items()})
        return head


def train_image_covariance_head(model_net: UNet, schedule: NoiseSchedule, x_train: Tensor, *, kind: str = "npr",
                                steps: int = 2000, max_seconds: float | None = None, batch_size: int = 128,
                                lr: float = 1e-3, device: torch.device | str = "cpu", seed: int = 0,
                                parameterization: str = "eps", init_value: float | None = None,
                                log_every: int = 0) -> UNetCovarianceHead:
    """Second stage of SN-/NPR-DPM on images (Bao et al. 2022b, eq. 9–10): fit a ``UNetCovarianceHead`` on the
    frozen ``model_net`` with ``fit_covariance_head`` (SN: min E‖h − ε²‖², NPR: min E‖h − (ε − ε̂)²‖²).

    ``x_train`` [N, C, H, W] in the model range is held on ``device``; each step draws a random batch there.
    ε̂ and h share one trunk forward (``mean_model``), under bf16 autocast on CUDA only (the head and loss stay
    fp32); autocast is switched off again before returning, so evaluation uses the fp32 trunk. Stops after
    ``steps`` steps or ``max_seconds``. ``init_value`` defaults to 1 (SN) or 0.1 (NPR). Seeding is local
    (``torch.random.fork_rng``). Returns the head in eval mode, with ``loss_history`` (per step) attached.
    """
    if kind not in ("npr", "sn"):
        raise ValueError(f"unknown covariance head kind {kind!r}; expected 'npr' or 'sn'")
    if x_train.dim() != 4 or x_train.shape[1] != model_net.in_channels or x_train.shape[0] < 1:
        raise ValueError(f"x_train must be [N, {model_net.in_channels}, H, W] with N ≥ 1, got {tuple(x_train.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    check_network_schedule(model_net, schedule, "train_image_covariance_head")
    device = torch.device(device)
    model_net.to(device)
    x_train = x_train.to(device=device, dtype=torch.float32)
    if init_value is None:
        init_value = 1.0 if kind == "sn" else 0.1
    space = DenseSpace((batch_size, *x_train.shape[1:]), device=device)

    def batches() -> Iterator[tuple[Tensor, DenseSpace]]:
        index_gen = torch.Generator(device=device).manual_seed(seed)
        while True:
            yield x_train[torch.randint(0, x_train.shape[0], (batch_size,), device=device, generator=index_gen)], space

    def mean_eps_for(sp: DenseSpace, **condition: Any) -> Callable[[Tensor, Tensor], Tensor]:
        return eps_predictor(head.mean_model, schedule, sp, parameterization, **condition)

    # the head's initialisation, times and noise use the global RNGs (sample_times draws on the CPU, the noise on
    # the device), seeded locally so that the caller's random state is untouched
    cuda_devices = [torch.cuda.current_device() if device.index is None else device.index] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(seed)
        head = UNetCovarianceHead(model_net, init_value=init_value).to(device)
        head.autocast_bf16 = device.type == "cuda"
        try:
            history = fit_covariance_head(head, mean_eps_for, schedule, batches(), kind=kind, steps=steps, lr=lr,
                                          max_seconds=max_seconds, device=device, generator=None,
                                          log_every=log_every)
        finally:
            head.autocast_bf16 = False
    head.loss_history = history
    return head

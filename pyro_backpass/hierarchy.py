"""The hierarchy: layer specs plus every parameter of the generative model (DESIGN §3).

Layers are indexed bottom-up, ``0`` the image and ``L-1`` the top mixture layer; ``topdown[l]`` maps
layer ``l+1`` to layer ``l`` (``topdown[L-1]`` holds the per-category templates). Per layer the
hierarchy keeps ``σ0_l`` (eq. 5) and the observation parameters ``(λ, β, σ1, σ2)`` of eq. 9, each
stored with shape ``(C_l, 1, 1)`` so that per-channel values broadcast against ``(..., C, H, W)``.
"""

from __future__ import annotations

import torch
from torch import nn

from . import sites
from .priors import GammaPrior, UniformPrior
from .specs import LayerSpec
from .topdown import TopDownConv, TopTemplates
from .validation import check_finite, check_index_range, check_positive, check_shape, check_tensor

__all__ = ["Hierarchy", "ObservationParams", "random_hierarchy"]


class ObservationParams(nn.Module):
    """``(λ, β, σ1, σ2)`` of one layer (eq. 9), each a buffer of shape ``(C, 1, 1)``."""

    def __init__(self, channels: int, lam=0.0, beta=0.0, sigma1=1.0, sigma2=1.0):
        super().__init__()
        for name, value in (("lam", lam), ("beta", beta), ("sigma1", sigma1), ("sigma2", sigma2)):
            t = torch.as_tensor(value, dtype=torch.get_default_dtype()).reshape(-1, 1, 1)
            if t.shape[0] not in (1, channels):
                raise ValueError(f"{name}: expected a scalar or {channels} per-channel values, got {t.shape[0]}")
            self.register_buffer(name, t.expand(channels, 1, 1).clone())
        check_positive("sigma1", self.sigma1)
        check_positive("sigma2", self.sigma2)

    def as_dict(self) -> dict[str, torch.Tensor]:
        """Keyword arguments for :class:`PiecewiseGaussian` and :func:`max_joint`."""
        return {"lam": self.lam, "beta": self.beta, "sigma1": self.sigma1, "sigma2": self.sigma2}


class Hierarchy(nn.Module):
    """Layer specs and parameters of the activation model.

    :param list specs: :class:`LayerSpec` bottom-up (image first, top mixture layer last).
    :param int n_categories: size of the one-hot top layer ``F^L``.
    :param list categories: optional category names (``len == n_categories``).
    :param GammaPrior prior: prior over γ (eq. 7); uniform by default.
    :param str upsample: top-down upsampling below pool layers, ``"nearest"`` or ``"transposed"``.
    :param int kernel_size: kernel size of the top-down convolutions.
    """

    def __init__(self, specs: list[LayerSpec], n_categories: int, categories: list[str] | None = None,
                 prior: GammaPrior | None = None, upsample: str = "nearest", kernel_size: int = 3):
        super().__init__()
        if not specs or not all(isinstance(s, LayerSpec) for s in specs):
            raise TypeError(f"specs: expected a non-empty list of LayerSpec, got {specs!r}")
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"specs: expected unique layer names, got {names}")
        if not isinstance(n_categories, int) or n_categories < 1:
            raise ValueError(f"n_categories: expected a positive int, got {n_categories!r}")
        categories = list(categories) if categories is not None else [f"class{i}" for i in range(n_categories)]
        if len(categories) != n_categories:
            raise ValueError(f"categories: expected {n_categories} names, got {len(categories)}")
        self.specs = tuple(specs)
        self.n_categories = n_categories
        self.categories = categories
        self.upsample, self.kernel_size = upsample, kernel_size
        mods: list[nn.Module] = []
        for l in range(len(specs) - 1):
            lo, hi = specs[l], specs[l + 1]
            up = upsample if (lo.height, lo.width) != (hi.height, hi.width) else "none"
            mods.append(TopDownConv(hi.channels, lo.channels, lo.K, (lo.height, lo.width), lo.offset_radius,
                                    up, kernel_size))
        top = specs[-1]
        mods.append(TopTemplates(n_categories, top.K, top.shape, top.offset_radius))
        self.topdown = nn.ModuleList(mods)
        self.observation = nn.ModuleList([ObservationParams(s.channels) for s in specs])
        self.register_buffer("sigma0", torch.ones(len(specs)))
        self.register_buffer("category_logits", torch.zeros(n_categories))
        self.prior = prior if prior is not None else UniformPrior(self.Ks, n_categories)
        if tuple(self.prior.Ks) != self.Ks or self.prior.n_categories != n_categories:
            raise ValueError(f"prior: expected Ks={self.Ks} and n_categories={n_categories}, got "
                             f"Ks={tuple(self.prior.Ks)} and n_categories={self.prior.n_categories}")

    # ----------------------------------------------------------------------------------- structure
    @property
    def L(self) -> int:
        """Number of layers below the category layer."""
        return len(self.specs)

    @property
    def Ks(self) -> tuple[int, ...]:
        return tuple(s.K for s in self.specs)

    @property
    def device(self) -> torch.device:
        return self.sigma0.device

    @property
    def dtype(self) -> torch.dtype:
        return self.sigma0.dtype

    def layer_index(self, name: str) -> int:
        for i, s in enumerate(self.specs):
            if s.name == name:
                return i
        raise ValueError(f"layer: expected one of {[s.name for s in self.specs]}, got {name!r}")

    def site_names(self) -> list[str]:
        """All site names of the model program, top-down."""
        out = [sites.CATEGORY]
        for s in reversed(self.specs):
            out += [sites.gamma(s.name), sites.delta(s.name), sites.f_td(s.name), sites.f_bu(s.name),
                    sites.value(s.name)]
        return out

    def hidden_site_names(self) -> list[str]:
        """The discrete sites ``category``, ``gamma/*`` and ``delta/*``, top-down."""
        out = [sites.CATEGORY]
        for s in reversed(self.specs):
            out += [sites.gamma(s.name), sites.delta(s.name)]
        return out

    # ------------------------------------------------------------------------------------- model
    def phi(self, layer: int, upper: torch.Tensor, gamma: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """Top-down mean ``φ_l`` (eq. 6) for broadcast hypotheses.

        :param int layer: ``l``.
        :param torch.Tensor upper: ``F^{l+1}_td`` (*B, C_{l+1}, H, W), or the category index for
            ``l = L-1``.
        :returns: (*broadcast, C_l, H_l, W_l).
        """
        return self.topdown[layer](upper, gamma, delta)

    def obs_params(self, layer: int) -> dict[str, torch.Tensor]:
        """``{"lam", "beta", "sigma1", "sigma2"}`` of layer ``l``, each (C_l, 1, 1)."""
        return self.observation[layer].as_dict()

    def set_observation(self, layer: int, lam=None, beta=None, sigma1=None, sigma2=None) -> None:
        """Overwrite some of layer ``l``'s observation parameters (scalars or per-channel)."""
        obs = self.observation[layer]
        for name, value in (("lam", lam), ("beta", beta), ("sigma1", sigma1), ("sigma2", sigma2)):
            if value is None:
                continue
            t = torch.as_tensor(value, dtype=obs.lam.dtype, device=obs.lam.device).reshape(-1, 1, 1)
            if name.startswith("sigma"):
                check_positive(name, t)
            getattr(obs, name).copy_(t.expand_as(getattr(obs, name)))

    def set_sigma0(self, values) -> None:
        """Set ``σ0_l`` for every layer (a scalar or one value per layer)."""
        t = check_positive("sigma0", torch.as_tensor(values, dtype=self.dtype))
        self.sigma0.copy_(t.to(self.device).expand_as(self.sigma0))

    # -------------------------------------------------------------------------------- validation
    def check_maps(self, name: str, maps) -> list[torch.Tensor]:
        """Validate a list of per-layer maps (bottom-up) against the specs; returns it cast to the hierarchy.

        :param maps: list of ``L`` tensors, each (N, C_l, H_l, W_l) with one shared N, or a dict
            layer-name → tensor.
        """
        if isinstance(maps, dict):
            missing = [s.name for s in self.specs if s.name not in maps]
            if missing:
                raise ValueError(f"{name}: expected a map for every layer, missing {missing}")
            maps = [maps[s.name] for s in self.specs]
        if not isinstance(maps, (list, tuple)) or len(maps) != self.L:
            got = len(maps) if isinstance(maps, (list, tuple)) else type(maps).__name__
            raise ValueError(f"{name}: expected a list of {self.L} per-layer tensors, got {got}")
        out, n = [], None
        for spec, x in zip(self.specs, maps):
            check_tensor(f"{name}[{spec.name}]", x)
            check_shape(f"{name}[{spec.name}]", x, spec.shape)
            if x.dim() != 4:
                raise ValueError(f"{name}[{spec.name}]: expected shape (N, {spec.channels}, {spec.height}, "
                                 f"{spec.width}), got {tuple(x.shape)}")
            if n is not None and x.shape[0] != n:
                raise ValueError(f"{name}[{spec.name}]: expected batch size {n} like the other layers, "
                                 f"got {x.shape[0]}")
            n = x.shape[0]
            check_finite(f"{name}[{spec.name}]", x)
            out.append(x.to(device=self.device, dtype=self.dtype))
        return out

    def check_category(self, category) -> torch.Tensor:
        """Validate a category index (or name) against ``n_categories``."""
        if isinstance(category, str):
            if category not in self.categories:
                raise ValueError(f"category: expected one of {self.categories}, got {category!r}")
            category = self.categories.index(category)
        t = torch.as_tensor(category, device=self.device)
        return check_index_range("category", t, self.n_categories)

    def extra_repr(self) -> str:
        layers = ", ".join(f"{s.name}({s.kind} {s.channels}x{s.height}x{s.width} K={s.K} r={s.offset_radius})"
                           for s in self.specs)
        return f"n_categories={self.n_categories}, layers=[{layers}]"


def random_hierarchy(specs: list[LayerSpec], n_categories: int = 1, seed: int = 0, sigma0: float = 0.3,
                     sigma1: float = 0.15, sigma2: float = 0.3, lam: float = 0.0, beta: float = 0.0,
                     template_scale: float = 1.0, weight_scale: float = 1.0, prior: GammaPrior | None = None,
                     **kwargs) -> Hierarchy:
    """A hierarchy with random parameters (toy hierarchies and benchmarks are built from this).

    Templates are uniform in ``[0, template_scale)``; conv weights are He-initialised then multiplied
    by ``weight_scale``. Deterministic for ``seed`` (the global RNG is left untouched).
    """
    devnull = torch.random.fork_rng(devices=[])
    with devnull:
        torch.manual_seed(seed)
        h = Hierarchy(specs, n_categories, prior=prior, **kwargs)
        with torch.no_grad():
            for m in h.topdown:
                if isinstance(m, TopTemplates):
                    m.template.mul_(template_scale)
                else:
                    m.weight.mul_(weight_scale)
                    m.bias.zero_()
    h.set_sigma0(sigma0)
    for l in range(h.L):
        h.set_observation(l, lam=lam, beta=beta, sigma1=sigma1, sigma2=sigma2)
    return h

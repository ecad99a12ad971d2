"""Frozen open_clip ViT exposed token by token: stem, block ranges, projection and text encoding.

`ClipBackbone` wraps an open_clip CLIP model (kept as `.clip`, so its own `encode_image` stays callable) whose
weights never train (requires_grad False, eval mode always). FE-CLIP needs the token stream between blocks,
so the image forward is split into `embed` (stem + interpolated positional embedding + ln_pre), `run_blocks`
and `project` (ln_post + CLIP projection); chaining them over all blocks reproduces `encode_image`.

Weights (`pretrained`): None = random init (seed the torch RNG first), an open_clip tag ('openai', ...) or a
local weights file. A tag whose weights are not cached fails at once when the hub is offline or unreachable.
Weights load with the activation they were trained with (`activation`: auto | gelu | quickgelu): a tag
with its own (OpenAI's are QuickGELU); a local file, for `auto`, by `file_activation`: QuickGELU for a
`-quickgelu` model name, a file in OpenAI's own format, or a model whose every published tag is QuickGELU
(ViT-L-14-336); GELU where every tag is GELU (or none is published); a model published both ways (ViT-B-16)
must be told.
The repo ships a tiny random-init ViT, "feclip-tiny" (configs/feclip-tiny.json), for tests and CPU runs.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
import socket
from pathlib import Path
from urllib.parse import urlparse

import open_clip
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.factory import (
    convert_state_dict,
    convert_to_custom_text_state_dict,
    load_checkpoint,
    load_state_dict,
)
from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model
from open_clip.transformer import VisionTransformer
from torch import nn

from feclip.errors import FeclipError
from feclip.precision import full, reduced
from feclip.registry import Registry

CONFIG_DIR = Path(__file__).parent / "configs"
TINY = "feclip-tiny"
LOCAL_FILE_HINT = "backbone.pretrained=/path/to/open_clip_pytorch_model.bin"
_TRUE = ("1", "on", "yes", "true")
ACTIVATIONS = Registry("backbone activation", "backbone.activation", ("auto", "gelu", "quickgelu"))
OPENAI_KEYS = ("input_resolution", "context_length", "vocab_size")  # kept in OpenAI's own checkpoints
WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".safetensors", ".ckpt")  # a `pretrained` value that is a file

if TINY not in open_clip.list_models():
    open_clip.add_model_config(CONFIG_DIR)


class BackboneError(FeclipError):
    """The backbone cannot be built or used as asked (model name, weights, input size, block range)."""


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def _tag_cached(tag_cfg: dict) -> bool:
    """Whether open_clip would find the tag's weights without a download (hub cache or ~/.cache/clip)."""
    from huggingface_hub import try_to_load_from_cache

    if tag_cfg.get("file"):
        return Path(tag_cfg["file"]).is_file()
    if tag_cfg.get("hf_hub"):
        repo, filename = os.path.split(tag_cfg["hf_hub"])
        filename = filename or "open_clip_pytorch_model.bin"
        safe = "open_clip_model.safetensors" if filename == "open_clip_pytorch_model.bin" else filename
        names = {filename, safe, str(Path(safe).with_suffix(".safetensors"))}
        return any(isinstance(try_to_load_from_cache(repo, name), str) for name in names)
    url = tag_cfg.get("url", "")
    return bool(url) and (Path.home() / ".cache" / "clip" / os.path.basename(url)).is_file()


def _download_host(tag_cfg: dict) -> str:
    from huggingface_hub import constants

    url = constants.ENDPOINT if tag_cfg.get("hf_hub") else tag_cfg.get("url", "")
    return urlparse(url).hostname or ""


def reachable(host: str, timeout_s: float = 5.0) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout_s).close()
    except OSError:
        return False
    return True


def _check_download_possible(model_name: str, tag: str, tag_cfg: dict) -> None:
    """Fail at once (not after the hub's retries) when uncached weights cannot be downloaded."""
    if hub_offline():
        reason = "the hub is offline (HF_HUB_OFFLINE=1)"
    elif not reachable(host := _download_host(tag_cfg)):
        reason = f"{host or 'the download host'} cannot be reached (no network?)"
    else:
        return
    quick = " backbone.activation=quickgelu" if tag_cfg.get("quick_gelu", False) else ""
    raise BackboneError(
        f"backbone {model_name!r}: weights for tag {tag!r} are not cached and {reason}; "
        f"download them once online or pass a local file with {LOCAL_FILE_HINT}{quick}"
    )


def backbone_config(model_name: str) -> dict:
    """open_clip's config of `model_name` (vision_cfg: layers, patch_size, ...); no model is built."""
    if model_name not in open_clip.list_models():
        raise BackboneError(
            f"backbone {model_name!r} is not an open_clip model name (e.g. {TINY}, ViT-B-16, ViT-L-14-336)"
        )
    return open_clip.get_model_config(model_name)


def patch_grid(size, patch, model_name: str, name: str = "input size") -> tuple[int, int]:
    """Patch grid (gh, gw) of an input size (h, w) in pixels that whole patches (ph, pw) (or one int) tile
    exactly. Any other size is refused with a one-line BackboneError naming the nearest sizes that fit: the
    stem conv floors the grid, so rows or columns past the last whole patch would never be seen."""
    (h, w), (ph, pw) = (int(v) for v in size), (patch, patch) if isinstance(patch, int) else tuple(patch)
    if h % ph == 0 and w % pw == 0 and h > 0 and w > 0:
        return h // ph, w // pw
    fits = [max(ph, round(h / ph) * ph), max(pw, round(w / pw) * pw)]
    unseen = " and ".join(f"{n} {axis}" for n, axis in ((h % ph, "rows"), (w % pw, "columns")) if n)
    raise BackboneError(
        f"{name}=[{h}, {w}] is not whole {ph}x{pw} patches of {model_name}: the last {unseen} would never be "
        f"seen; expected multiples of the patch size, e.g. {fits}"
    )


def _tag_activations(model_name: str) -> set[str]:
    """The activations of `model_name`'s published open_clip tags (empty for a model with none)."""
    return {
        "quickgelu" if get_pretrained_cfg(model_name, tag).get("quick_gelu", False) else "gelu"
        for tag in list_pretrained_tags_by_model(model_name)
    }


def _named_quickgelu(model_name: str) -> bool:
    return bool(open_clip.get_model_config(model_name).get("quick_gelu", False))


def _checked_activation(model_name: str, asked: str, trained: str, source: str) -> str:
    """`trained` (what the weights need), refused when `asked` says otherwise."""
    if asked not in ("auto", trained):
        raise BackboneError(
            f"backbone {model_name!r}: backbone.activation={asked} but {source} was trained with {trained}; "
            f"expected backbone.activation=auto or {trained}"
        )
    return trained


def file_activation(model_name: str, path: str, state: dict, asked: str = "auto") -> str:
    """'quickgelu' | 'gelu': the activation a local weights file loads with (see the module docstring)."""
    ACTIVATIONS.get_entry(asked)
    if _named_quickgelu(model_name):
        return _checked_activation(model_name, asked, "quickgelu", f"the -quickgelu name {model_name}")
    if any(key in state for key in OPENAI_KEYS):
        return _checked_activation(model_name, asked, "quickgelu", f"{path} (OpenAI's own format)")
    if asked != "auto":
        return asked
    published = _tag_activations(model_name)
    if len(published) > 1:
        raise BackboneError(
            f"backbone {model_name!r}: weights file {path} may be OpenAI's (QuickGELU) or another "
            "release's (GELU); expected backbone.activation=quickgelu or backbone.activation=gelu"
        )
    return published.pop() if published else "gelu"


def create_clip(model_name: str, pretrained: str | None, activation: str = "auto") -> nn.Module:
    """The open_clip model `model_name` with weights `pretrained` (None | tag | file) and the activation
    they were trained with (`activation`: auto | gelu | quickgelu); one-line errors."""
    backbone_config(model_name)
    ACTIVATIONS.get_entry(activation)
    if pretrained is None:
        return open_clip.create_model(model_name, force_quick_gelu=activation == "quickgelu")
    pretrained = str(pretrained)
    if os.path.isfile(pretrained):
        return _from_file(model_name, pretrained, activation)
    tag_cfg = get_pretrained_cfg(model_name, pretrained)
    if not tag_cfg:
        known = ", ".join(list_pretrained_tags_by_model(model_name)) or "none"
        raise BackboneError(
            f"backbone {model_name!r}: pretrained={pretrained!r} is neither an open_clip tag "
            f"(known: {known}) nor an existing file; pass a local file with {LOCAL_FILE_HINT}"
        )
    trained = "quickgelu" if tag_cfg.get("quick_gelu", False) else "gelu"
    _checked_activation(model_name, activation, trained, f"tag {pretrained!r}")
    if not _tag_cached(tag_cfg):
        _check_download_possible(model_name, pretrained, tag_cfg)
    options = {"force_quick_gelu": trained == "quickgelu"}
    return _create(
        model_name, pretrained, options, f"with no network pass a local file with {LOCAL_FILE_HINT}"
    )


WEIGHTS_EXPECTED = "expected an open_clip state dict (.bin, .pt or .safetensors: tensors by parameter name)"
RESIZED_KEYS = ("visual.positional_embedding", "positional_embedding")  # open_clip resizes these on load


def _read_state_dict(model_name: str, path: str) -> dict[str, torch.Tensor]:
    """The file's state dict, or a one-line BackboneError naming the file and what was expected (never
    torch's advice to unpickle arbitrary objects)."""
    try:
        state = load_state_dict(path, weights_only=True)
    except pickle.UnpicklingError as error:
        reason = (
            "it holds Python objects other than tensors (refused: weights are read with weights_only)"
            if "Unsupported global" in str(error)
            else f"not a readable weights file (UnpicklingError: {_first_line(error)})"
        )
    except (StopIteration, AttributeError, TypeError):
        reason = "it holds no tensors by name (an empty dict, a list or a bare tensor)"
    except Exception as error:  # safetensors, zip and OS errors: the file is not a weights file
        reason = f"not a readable weights file ({type(error).__name__}: {_first_line(error)})"
    else:
        if isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values()):
            return state
        reason = f"it holds {type(state).__name__}, not tensors by parameter name"
    raise BackboneError(f"backbone {model_name!r}: weights file {path}: {reason}; {WEIGHTS_EXPECTED}")


def _first_line(error: BaseException) -> str:
    return (str(error).splitlines() or [type(error).__name__])[0][:200]


def _check_state_dict(model_name: str, path: str, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Keys and shapes of `state` (after open_clip's own conversions) against `model`'s, named when wrong."""
    state = convert_state_dict(model, dict(state))
    if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
        state = convert_to_custom_text_state_dict(state)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state) - {"logit_bias"})
    unexpected = sorted(set(state) - set(expected) - {"text.transformer.embeddings.position_ids"})
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if k not in RESIZED_KEYS and state[k].numel() != expected[k].numel()
    ]
    if missing or unexpected or wrong:
        found = "; ".join(
            f"{what} {', '.join(names[:3])}{' ...' if len(names) > 3 else ''} ({len(names)})"
            for what, names in (("missing", missing), ("unexpected", unexpected), ("shape", wrong))
            if names
        )
        raise BackboneError(
            f"backbone {model_name!r}: weights file {path} is not a state dict of this model: {found}; "
            "expected the weights of backbone.name (an OpenAI file needs the -quickgelu name)"
        )


def _from_file(model_name: str, path: str, activation: str = "auto") -> nn.Module:
    """The model with the weights of a local file and the activation they need, checked first (one-line
    errors)."""
    state = _read_state_dict(model_name, path)
    quick = file_activation(model_name, path, state, activation) == "quickgelu"
    model = open_clip.create_model(model_name, force_quick_gelu=quick)
    _check_state_dict(model_name, path, model, {k: v for k, v in state.items() if k not in OPENAI_KEYS})
    # keys and shapes are checked above; OpenAI's format adds only its OPENAI_KEYS (not parameters)
    loaded = load_checkpoint(model, path, strict=False)
    if loaded.missing_keys or set(loaded.unexpected_keys) - set(OPENAI_KEYS):
        raise BackboneError(f"backbone {model_name!r}: weights file {path} did not load: {loaded}")
    return model


def _create(model_name: str, pretrained: str, options: dict, hint: str) -> nn.Module:
    try:
        return open_clip.create_model(model_name, pretrained=pretrained, **options)
    except (RuntimeError, OSError, KeyError, ValueError, pickle.UnpicklingError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise BackboneError(
            f"backbone {model_name!r}: cannot load weights pretrained={pretrained!r} ({reason}); {hint}"
        ) from error


def _check_vision_tower(model_name: str, visual: nn.Module) -> None:
    if not isinstance(visual, VisionTransformer):
        raise BackboneError(
            f"backbone {model_name!r}: image tower is {type(visual).__name__}, expected an open_clip ViT"
        )
    if visual.attn_pool is not None or visual.pool_type != "tok" or visual.proj is None:
        raise BackboneError(
            f"backbone {model_name!r}: expected class-token pooling with a projection (no attentional pooler)"
        )


def weights_fingerprint(module: nn.Module) -> str:
    """sha1 over the module's parameters and buffers (names, shapes, dtypes, bytes), 16 hex digits."""
    digest = hashlib.sha1()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def interpolate_positional_embedding(pos: torch.Tensor, native_grid, grid) -> torch.Tensor:
    """pos: (1 + nh * nw, D) -> (1 + gh * gw, D): class row kept, patch rows resampled in float32 exactly as
    open_clip resizes a checkpoint's grid (`open_clip.model.resize_pos_embed`: bicubic, antialias=True)."""
    patches = pos[1:].float().reshape(1, *native_grid, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=tuple(grid), mode="bicubic", antialias=True, align_corners=False)
    return torch.cat([pos[:1].float(), patches[0].flatten(1).T]).to(pos.dtype)


class ClipBackbone(nn.Module):
    """Frozen open_clip ViT; tokens are (B, 1 + gh * gw, D) with the class token first, batch first."""

    def __init__(self, model_name: str, pretrained: str | None = None, activation: str = "auto") -> None:
        super().__init__()
        self.model_name = model_name
        self.pretrained = None if pretrained is None else str(pretrained)
        self.clip = create_clip(model_name, pretrained, activation)
        visual = self.clip.visual
        _check_vision_tower(model_name, visual)
        self.clip.requires_grad_(False)
        self.clip.eval()
        self.width: int = visual.conv1.out_channels
        self.embed_dim: int = visual.output_dim
        self.num_blocks: int = len(visual.transformer.resblocks)
        self.patch_size: tuple[int, int] = tuple(visual.patch_size)
        self.native_size: tuple[int, int] = tuple(visual.image_size)
        self.native_grid: tuple[int, int] = tuple(visual.grid_size)
        preprocess = getattr(visual, "preprocess_cfg", {})
        self.mean: tuple = tuple(preprocess.get("mean", OPENAI_DATASET_MEAN))
        self.std: tuple = tuple(preprocess.get("std", OPENAI_DATASET_STD))
        self._tokenizer = open_clip.get_tokenizer(model_name)

    @property
    def activation(self) -> str:
        """'quickgelu' | 'gelu': the MLP activation the tower was built with (a checkpoint records it)."""
        quick = isinstance(self.visual.transformer.resblocks[0].mlp.gelu, open_clip.transformer.QuickGELU)
        return "quickgelu" if quick else "gelu"

    @functools.cached_property
    def fingerprint(self) -> str:
        """sha1 (16 hex digits) of the weights (names, shapes, dtypes, bytes); hashed once (frozen)."""
        return weights_fingerprint(self.clip)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """nn.Module.load_state_dict; the fingerprint of the old weights is dropped."""
        self.__dict__.pop("fingerprint", None)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    @property
    def visual(self) -> VisionTransformer:
        """The open_clip image tower (a property, so its weights are registered once, under `clip.`)."""
        return self.clip.visual

    def train(self, mode: bool = True) -> ClipBackbone:
        """Always eval: the backbone is frozen (no dropout, no patch dropout) whatever the caller asks."""
        return super().train(False)

    def grid_size(self, image_size) -> tuple[int, int]:
        """Patch grid (gh, gw) of an input (h, w) that whole patches tile (`patch_grid`)."""
        return patch_grid(image_size, self.patch_size, self.model_name)

    def positional_embedding(self, grid: tuple[int, int]) -> torch.Tensor:
        """(1 + gh * gw, D): the checkpoint's embedding at its native grid, else interpolated to `grid`."""
        pos = self.visual.positional_embedding
        if tuple(grid) == self.native_grid:
            return pos
        return interpolate_positional_embedding(pos, self.native_grid, grid)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """images: (B, 3, h, w) normalised -> tokens (B, 1 + gh * gw, D): stem, class token, pos, ln_pre."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise BackboneError(f"images of shape {tuple(images.shape)}, expected (B, 3, h, w)")
        grid = self.grid_size(images.shape[-2:])
        with reduced("backbone"):
            x = self.visual.conv1(images).flatten(2).transpose(1, 2)  # (B, gh * gw, D)
            cls = self.visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
            x = torch.cat([cls, x], dim=1) + self.positional_embedding(grid).to(x.dtype)
            return self.visual.ln_pre(x)

    def run_blocks(self, tokens: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """tokens: (B, N, D) -> (B, N, D) after blocks start .. stop - 1 (in the transformer's own layout)."""
        if not 0 <= start <= stop <= self.num_blocks:
            raise BackboneError(
                f"block range [{start}, {stop}) outside [0, {self.num_blocks}] of {self.model_name}"
            )
        batch_first = getattr(self.visual.transformer, "batch_first", True)
        x = tokens if batch_first else tokens.transpose(0, 1)
        with reduced("backbone"):
            for block in self.visual.transformer.resblocks[start:stop]:
                x = block(x)
        return x if batch_first else x.transpose(0, 1)

    def ln_post(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: (..., D) -> (..., D) float32: CLIP's final LayerNorm (a head operation: never reduced)."""
        with full():
            return self.visual.ln_post(tokens.float())

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: (..., D) -> (..., E) float32: ln_post then CLIP's frozen visual projection."""
        with full():
            return self.ln_post(tokens) @ self.visual.proj.float()

    @torch.no_grad()
    def encode_text(self, texts: list[str], normalize: bool = True) -> torch.Tensor:
        """texts: T strings -> (T, E) text embeddings, L2-normalised unless `normalize` is False."""
        device = self.visual.proj.device
        return self.clip.encode_text(self._tokenizer(list(texts)).to(device), normalize=normalize)

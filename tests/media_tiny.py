"""Tiny, randomly initialised diffusers pipelines for the media tests (no weights ship for image or video).

Each builder makes a real diffusers pipeline of the kind a deployment would load, only with a few thousand
parameters: its CLIP tokenizer is written here as files (a byte-level vocabulary without merges), every module
is initialised after ``torch.manual_seed`` so the same folder comes out on every run, and ``save_pretrained``
writes the folder the engine loads from ``media_model_path``. The pictures are noise; the code path (loading,
seeding, step callbacks, VAE decoding, encoding) is the real one.

- :func:`tiny_image_pipeline`: Stable Diffusion (text-to-image; image-to-image and inpaint from the same weights);
- :func:`tiny_video_pipeline`: AnimateDiff (text-to-video: the same UNet with a motion adapter);
- :func:`tiny_image_to_video_pipeline`: Stable Video Diffusion (image-to-video; it takes no prompt).

Fixtures ``tiny_image_model``, ``tiny_video_model`` and ``tiny_i2v_model`` build each once per test session
(a pytest module that wants them imports them: ``from tests.media_tiny import tiny_image_model``). Import this
module only where the ``[media]`` extra is installed (``pytest.importorskip("diffusers")`` first).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

_SEED = 0
_TEXT_DIM = 16  # CLIP hidden size = the UNet's cross-attention width
_MAX_TOKENS = 16  # the tokenizer's model_max_length (real CLIP: 77); a prompt is padded to this


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for bytes (GPT-2's table): spaces and controls shifted."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols = {b: chr(b) for b in keep}
    shifted = 0
    for b in range(256):
        if b not in symbols:
            symbols[b] = chr(256 + shifted)
            shifted += 1
    return [symbols[b] for b in range(256)]


def write_clip_tokenizer(folder: Path) -> Path:
    """A CLIP tokenizer's files (vocab.json, merges.txt, the config): every byte a token, no merges.

    Words tokenize letter by letter (the last with CLIP's ``</w>``), which is all a random text encoder needs;
    ``CLIPTokenizer.from_pretrained(folder)`` reads it like a real one.
    """
    folder.mkdir(parents=True, exist_ok=True)
    symbols = _byte_symbols()
    tokens = [*symbols, *(s + "</w>" for s in symbols), "<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": _MAX_TOKENS,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def _tokenizer_and_text_encoder(scratch: Path):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(scratch / "tokenizer-files"))
    torch.manual_seed(_SEED)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=_TEXT_DIM,
        intermediate_size=32,
        num_attention_heads=2,
        num_hidden_layers=2,
        max_position_embeddings=_MAX_TOKENS,
        projection_dim=_TEXT_DIM,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return tokenizer, CLIPTextModel(config).eval()


def _vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(_SEED)
    # Two blocks: the VAE scales by 2 (a 64x64 picture is a 32x32 latent), cheap on a loaded 2-core machine.
    return AutoencoderKL(
        block_out_channels=(8, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
    )


def _unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(_SEED)
    return UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=_TEXT_DIM,
        attention_head_dim=4,
        norm_num_groups=4,
    )


def _ddim():
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def tiny_image_pipeline(path: Path) -> Path:
    """Save a tiny Stable Diffusion pipeline (text-to-image; image-to-image and inpaint by ``from_pipe``)."""
    from diffusers import StableDiffusionPipeline

    path = Path(path)
    tokenizer, text_encoder = _tokenizer_and_text_encoder(path.parent / f".{path.name}-scratch")
    pipe = StableDiffusionPipeline(
        vae=_vae(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=_unet(),
        scheduler=_ddim(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(path)
    return path


def tiny_video_pipeline(path: Path) -> Path:
    """Save a tiny AnimateDiff pipeline (text-to-video): the tiny Stable Diffusion UNet plus a motion adapter."""
    from diffusers import AnimateDiffPipeline, MotionAdapter

    path = Path(path)
    tokenizer, text_encoder = _tokenizer_and_text_encoder(path.parent / f".{path.name}-scratch")
    torch.manual_seed(_SEED)
    adapter = MotionAdapter(
        block_out_channels=(8, 16),
        motion_layers_per_block=1,
        motion_norm_num_groups=4,
        motion_num_attention_heads=2,
        motion_max_seq_length=32,
    )
    pipe = AnimateDiffPipeline(
        vae=_vae(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=_unet(),
        motion_adapter=adapter,
        scheduler=_ddim(),
    )
    pipe.save_pretrained(path)
    return path


def tiny_image_to_video_pipeline(path: Path) -> Path:
    """Save a tiny Stable Video Diffusion pipeline (image-to-video; it is conditioned on the image alone)."""
    from diffusers import (
        AutoencoderKLTemporalDecoder,
        EulerDiscreteScheduler,
        StableVideoDiffusionPipeline,
        UNetSpatioTemporalConditionModel,
    )
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    path = Path(path)
    torch.manual_seed(_SEED)
    # Its blocks normalise in 32 groups whatever the width: 32 channels is the narrowest it takes.
    unet = UNetSpatioTemporalConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=16,
        in_channels=8,
        out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        cross_attention_dim=_TEXT_DIM,
        num_attention_heads=(2, 4),
        projection_class_embeddings_input_dim=3 * 8,
        addition_time_embed_dim=8,
    )
    torch.manual_seed(_SEED)
    vae = AutoencoderKLTemporalDecoder(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        latent_channels=4,
    )
    torch.manual_seed(_SEED)
    vision = CLIPVisionConfig(
        hidden_size=_TEXT_DIM,
        projection_dim=_TEXT_DIM,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=224,  # the pipeline resizes the input picture to 224x224 for its image encoder
        intermediate_size=32,
        patch_size=32,
    )
    scheduler = EulerDiscreteScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        interpolation_type="linear",
        num_train_timesteps=1000,
        prediction_type="v_prediction",
        sigma_max=700.0,
        sigma_min=0.002,
        steps_offset=1,
        timestep_spacing="leading",
        timestep_type="continuous",
        use_karras_sigmas=True,
    )
    pipe = StableVideoDiffusionPipeline(
        vae=vae,
        image_encoder=CLIPVisionModelWithProjection(vision).eval(),
        unet=unet,
        scheduler=scheduler,
        feature_extractor=CLIPImageProcessor(crop_size=224, size=224),
    )
    pipe.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_image_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny Stable Diffusion pipeline (folder), built once per test session."""
    return tiny_image_pipeline(tmp_path_factory.mktemp("media") / "tiny-sd")


@pytest.fixture(scope="session")
def tiny_video_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny AnimateDiff pipeline (folder), built once per test session."""
    return tiny_video_pipeline(tmp_path_factory.mktemp("media") / "tiny-animatediff")


@pytest.fixture(scope="session")
def tiny_i2v_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny Stable Video Diffusion pipeline (folder), built once per test session."""
    return tiny_image_to_video_pipeline(tmp_path_factory.mktemp("media") / "tiny-svd")

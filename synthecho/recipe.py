"""Recipes: one YAML file per corpus, validated into a typed `Recipe`.

A recipe says everything a run needs: where the real data comes from, the resolution, which generator
and how to train it, how many rows to generate and how, the quality thresholds, the downstream study and
where to publish. Unknown keys and wrong types are rejected with the key's dotted name, so a typo never
silently falls back to a default. `--set key=value` overrides (values parsed as YAML) are validated the
same way. The content hash of the resolved recipe goes into the manifest.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from synthecho.errors import SynthechoError
from synthecho.io import sha256_json

# The section base and the downstream study's section (re-exported here) live in their own module.
from synthecho.recipe_sections import AugmentationConfig, ConfirmatoryConfig, EvaluateConfig, Section  # noqa: F401


def shipped_recipes_dir() -> Path:
    """The recipes that ship inside the package (`recipes/` at the repository root links to them)."""
    from importlib.resources import files

    return Path(str(files("synthecho") / "recipes"))


SEMVER = re.compile(r"^\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.-]+)?$")


# --- source ------------------------------------------------------------------------------------------


class PhantomSpec(Section):
    patients: int = Field(40, ge=3, description="enough patients for a train/validation/test split")
    seed: int = 0
    layout: Literal["2023", "2019"] = "2023"
    size: tuple[int, int] = (192, 160)  # rows x cols of the native frames, before `prepare` resizes
    # Patients in the test split (None: ~15 %). Testing costs inference only, and the phantom knows their
    # truth (clean masks, beside the noisy labels), so a study can afford many: >= 30 resolves its effects.
    test_patients: int | None = Field(None, ge=1)


class SourceConfig(Section):
    kind: Literal["phantom", "camus"] = "phantom"
    root: str | None = None  # camus: dataset root (CAMUS_public/ or the folder holding training/)
    root_env: str = "SYNTHECHO_CAMUS_ROOT"  # used when `root` is empty
    release: Literal["auto", "2023", "2019"] = "auto"
    # 2019 only: its testing folder has no labels, so validation and test are carved from training
    # patients; an int is a patient count (echo_from_noise used 50), a float in (0, 1) a fraction.
    validation_patients_2019: float = 50
    phantom: PhantomSpec = PhantomSpec()

    def resolve_root(self) -> Path:
        """The CAMUS root from the recipe or the environment; fails before any work when it is absent."""
        root = self.root or os.environ.get(self.root_env)
        if not root:
            raise SynthechoError(
                f"source.kind is 'camus' but no dataset root is set: put the path of your CAMUS copy in the "
                f"recipe key source.root (or --set source.root=/path/to/CAMUS_public) or the environment "
                f"variable {self.root_env}."
            )
        path = Path(root).expanduser()
        if not path.exists():
            where = "source.root" if self.root else f"${self.root_env}"
            raise SynthechoError(
                f"CAMUS root {path} (from {where}) does not exist: point source.root or {self.root_env} at "
                f"the folder holding database_nifti/ (2023 release) or training/ (2019 release)."
            )
        return path


class PrepareConfig(Section):
    resolution: int = Field(64, description="square frames; generators need a multiple of 8")
    copy_null_renders: int = Field(4, ge=1)  # phantom: re-renderings per record in real/copy_null.parquet

    @field_validator("resolution")
    @classmethod
    def _divisible_by_8(cls, value: int) -> int:
        if value < 16 or value % 8:
            raise ValueError(f"resolution must be >= 16 and divisible by 8 (UNet down-sampling), got {value}")
        return value


# --- generators (one config class per kind; `kind` picks it) -----------------------------------------


class SdmConfig(Section):
    """Semantic diffusion: pixel-space DDPM conditioned on the 5-class label map."""

    kind: Literal["sdm"] = "sdm"
    variant: Literal["concat", "spade"] = "concat"  # concat: label map as input channels (cheap on CPU)
    channels: list[int] = [32, 64, 64]
    layers_per_block: int = 1
    attention: list[bool] = [False, False, True]  # attention only at the lowest resolution: CPU cost
    num_head_channels: int = 32
    condition_dropout: float = Field(0.0, ge=0, le=1)  # > 0 enables classifier-free guidance
    # Attributes the model is conditioned on besides the label map (a class embedding): the map alone does
    # not say whether a right heart belongs in the frame (view) or how thick the walls are (phase).
    class_attributes: list[Literal["view", "phase", "image_quality"]] = []
    per_class: bool = False  # one model per class of class_attributes (Echo from noise), N x the training
    train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"  # cosine schedule, as the SDM/Echo-from-noise config
    # What the network predicts. SDM predicts the noise ("epsilon"); with the cosine schedule that needs
    # long training, because near t=T (alpha_bar ~1e-9) its x0 estimate amplifies eps errors ~1e4-fold.
    # "v_prediction" learns frames that follow their masks in a few hundred steps (CPU demos).
    prediction_type: Literal["epsilon", "v_prediction"] = "v_prediction"

    @model_validator(mode="after")
    def _classes_for_per_class(self) -> SdmConfig:
        if self.per_class and not self.class_attributes:
            raise ValueError("per_class trains one model per class: list the classes' class_attributes")
        return self


class DdpmConfig(Section):
    """Unconditional pixel DDPM (DiffEcho), optionally class-conditioned on view x phase in ONE model."""

    kind: Literal["ddpm"] = "ddpm"
    channels: list[int] = [32, 64, 64]  # UNet widths per level (DiffEcho: 64,64,128,128,256,256 at 128 px)
    layers_per_block: int = 1  # residual blocks per level; 2 on GPU
    attention: list[bool] = [False, False, True]  # attention only at the lowest resolution: CPU cost
    num_head_channels: int = 32  # channels per attention head
    class_conditional: bool = True  # view x phase class embedding (4 classes) instead of one model per class
    # With class_conditional: the fraction of training steps whose class is replaced by a null class, the
    # unconditional branch classifier-free guidance (generate.guidance_scale > 1) needs; 0: no null class.
    class_dropout: float = Field(0.0, ge=0, lt=1)
    joint_masks: bool = True  # also generate the 4-class label map as output channels (mask_source generated)
    train_timesteps: int = 1000  # DiffEcho's DDPMScheduler(1000)
    beta_schedule: str = "squaredcos_cap_v2"  # cosine: better than linear at small resolutions
    # epsilon (DiffEcho) needs long training with the cosine schedule; v_prediction works in short CPU runs
    prediction_type: Literal["epsilon", "v_prediction"] = "v_prediction"


class SdConfig(Section):
    """Text-guided latent diffusion on the image-level prompt: SD fine-tune (base_model) or from config."""

    kind: Literal["sd"] = "sd"
    base_model: str | None = None  # local folder or Hub id of an SD pipeline; None = small models from config
    base_license: str | None = None  # licence of base_model, copied to the manifest and the card
    text_encoder: str | None = None  # from config: transformers folder; None = bundled MiniLM (384-d)
    vae_channels: list[int] = [32, 64]  # from config: AutoencoderKL widths; downsampling 2^(levels-1)
    latent_channels: int = 4  # from config: as SD's VAE
    vae_steps: int = Field(300, ge=1)  # from config: VAE steps on real train before the UNet (then frozen)
    vae_learning_rate: float = 1e-3  # from config: small VAE, short schedule
    vae_kl_weight: float = 1e-6  # from config: small KL keeps latents near N(0, 1) without blurring
    unet_channels: list[int] = [32, 64, 64]  # from config: UNet2DConditionModel widths per level
    layers_per_block: int = 1  # from config: residual blocks per level
    attention: list[bool] = [False, False, True]  # from config: cross-attention at the lowest level only
    attention_heads: int = 2  # from config: number of heads (diffusers calls it attention_head_dim)
    cross_attention_dim: int = 384  # from config: the text encoder's hidden size (MiniLM 384)
    prompt_dropout: float = Field(0.1, ge=0, le=1)  # prompts -> "" this often: classifier-free guidance
    # Attributes also given as a class embedding added to the UNet's (controlnet: and the ControlNet's) time
    # embedding, the null class replacing them wherever the prompt is dropped: a prompt of ~30 tokens says
    # view and phase in one word each, which a small text-conditioned model learns to follow only partly.
    class_attributes: list[Literal["view", "phase", "image_quality"]] = []
    # With class_attributes: the fraction of training samples whose prompt is replaced by "" while the class
    # is kept (besides prompt_dropout's, which drop both). Prompt and class always agree, so without such
    # samples the model need not learn the class at all (measured: flipping it changed no frame's view).
    class_alone_fraction: float = Field(0.3, ge=0, le=1)
    train_timesteps: int = 1000  # SD's schedule length
    beta_schedule: str = "scaled_linear"  # SD's schedule (from config); a base model keeps its own
    # From config: SD 1.5 predicts epsilon (its default here). v_prediction (as SD 2) gets usable frames
    # from a few hundred CPU steps: structure at high noise is learnt first. A base model keeps its own.
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"

    @model_validator(mode="after")
    def _dropout_fractions(self) -> SdConfig:
        if self.class_attributes and self.prompt_dropout + self.class_alone_fraction > 1:
            raise ValueError("prompt_dropout + class_alone_fraction is more than all the training samples")
        return self


class ControlNetConfig(SdConfig):
    """ControlNet on the 5-class label map + the image-level prompt, over an SD base (fine-tuned or from
    config)."""

    kind: Literal["controlnet"] = "controlnet"  # type: ignore[assignment]
    base_steps: int = Field(300, ge=1)  # from config: text-to-image base UNet steps before the ControlNet
    base_learning_rate: float | None = None  # from config: the base UNet's; None = train.learning_rate
    conditioning_embedding_out_channels: list[int] | None = None  # None = 16*2^i, downsampling = VAE factor
    conditioning_scale: float = 1.0  # ControlNet residual scale at sampling (diffusers' default)


GeneratorConfig = Annotated[SdmConfig | DdpmConfig | SdConfig | ControlNetConfig, Field(discriminator="kind")]


class TrainConfig(Section):
    steps: int = Field(300, ge=1)
    batch_size: int = Field(8, ge=1)
    learning_rate: float = 2e-4
    ema_decay: float = Field(0.999, ge=0, lt=1)
    checkpoint_every: int = Field(100, ge=1)
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"  # "bf16" on GPUs; CPUs train in fp32
    # Micro-batches per optimizer step; the global batch is batch_size x this x the number of processes.
    gradient_accumulation_steps: int = Field(1, ge=1)
    # Learning-rate schedule (diffusers' get_scheduler): linear warm-up over lr_warmup_steps, then constant,
    # linear decay to 0 at train.steps (guided diffusion's lr_anneal_steps) or cosine decay.
    lr_scheduler: Literal["constant", "linear", "cosine"] = "constant"
    lr_warmup_steps: int = Field(0, ge=0)
    # Min-SNR-gamma loss weighting (diffusers' training scripts' --snr_gamma; 5.0 is the paper's value):
    # the low-noise timesteps, whose loss is small and easy, stop pulling against the rest. None: plain MSE.
    snr_gamma: float | None = Field(None, gt=0)
    grid_sampler_steps: int = 10  # steps used for the sample grid written after training


class SegmenterConfig(Section):
    """MONAI 2-D U-Net trained on real data; used by filter (mask consistency, features)."""

    channels: list[int] = [16, 32, 64, 128]
    strides: list[int] = [2, 2, 2]
    num_res_units: int = 1
    steps: int = Field(400, ge=1)
    batch_size: int = 8
    learning_rate: float = 1e-3
    validate_every: int = 50


# --- generate / filter / evaluate / publish ----------------------------------------------------------


class PerturbSpec(Section):
    """Conditioning-mask perturbation (Echo from noise: affine then elastic, clipped to the sector)."""

    degrees: float = 5.0
    translate: float = 0.05  # rows (depth) only, as torchvision's translate=(0, 0.05) did
    translate_col: float = 0.0
    scale: tuple[float, float] = (0.8, 1.05)
    shear: float = 5.0
    elastic_control_points: int = 10  # B-spline control points along rows (and columns, unless set below)
    # Along columns; None = elastic_control_points (10 x 10). Echo from noise's torchio grid was in effect
    # 10 x 4 (synthecho.perturb); rows record only elastic_control_points, the plan and manifest record this.
    elastic_control_points_col: int | None = None
    elastic_max_displacement: float = 30 / 256  # fraction of the image side (30 px at 256 px)
    # preserve: a row's scale and elastic draw keep its mask's cavity area and wall ratio on the claimed
    # phase's side (synthecho.plan.PhasePreserver); echo_from_noise: the seed's ranges as they are.
    phase_policy: Literal["preserve", "echo_from_noise"] = "preserve"


class GenerateConfig(Section):
    variants: int = Field(5, ge=1, description="perturbed masks per real mask (the 9k sets use 5)")
    splits: list[Literal["train", "validation"]] = ["train", "validation"]
    max_records_per_split: int | None = None  # cap source records per split (demos); None = all
    sampler: Literal["dpmsolver++", "unipc", "ddim", "ddpm"] = "dpmsolver++"
    steps: int = 20
    guidance_scale: float = 1.0  # 1.0 = no classifier-free guidance
    batch_size: int = 8
    batches_per_shard: int = 8
    seed: int = 0
    device: str = "auto"  # auto: cuda when available, else cpu
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    perturb: PerturbSpec = PerturbSpec()


class FilterConfig(Section):
    # A row is rejected when the segmenter disagrees with its mask below these Dice values.
    dice_threshold: dict[str, float] = {"lv": 0.5, "myo": 0.3, "la": 0.4}
    copy_threshold: float | None = None  # None: copy_null_quantile of the null (real/copy_null.parquet)
    copy_null_quantile: float = Field(0.995, gt=0.5, lt=1)
    # Null kinds the threshold is calibrated on; neighbour_frame pairs (adjacent frames) share their
    # recording's speckle, so a threshold above them would pass copies: reported, not used.
    copy_null_kinds: list[Literal["rerender", "other_phase", "neighbour_frame"]] = ["rerender", "other_phase"]
    # Reject a row whose claimed view / phase has a probability below this under the filter's
    # classifier (None: not judged). The safety net behind a generator that follows its attributes.
    attribute_threshold: dict[Literal["view", "phase"], float | None] = {"view": 0.5, "phase": None}
    attribute_steps: int = Field(200, ge=1)  # training steps of each view/phase classifier (seconds on a CPU)
    # The judge's own budget (None: attribute_steps). Its real accuracy caps the agreement it can confirm:
    # on the demo's phantom, 200 steps leave its view accuracy at 0.87; 600 reach 0.93, and 0.99 with the
    # view head also taught on the whole perturbation and 6 copies (below).
    judge_steps: int | None = Field(None, ge=1)
    # What the classifiers' view head also learns from: "recipe" adds copies under the recipe's whole
    # perturbation (scale and elastic too: they move the phase cues, not the view; their phase is ignored).
    attribute_view_perturbation: Literal["phase-free", "recipe"] = "phase-free"
    attribute_copies: int = Field(3, ge=0, le=32)  # perturbed copies of each real frame per training set
    inception_weights: str | None = None  # local clean-fid Inception file (never downloaded mid-build)
    inception_env: str = "SYNTHECHO_INCEPTION_WEIGHTS"
    feature_dims: int = Field(64, le=64)  # domain features pooled to <= 64 dims: stable covariances
    kid_subsets: int = 100
    kid_subset_size: int = 50


class PublishConfig(Section):
    repo_id: str | None = None
    private: bool = False
    pretty_name: str | None = None


class Recipe(Section):
    name: str
    version: str = "0.1.0"
    description: str = ""
    license: str | None = None  # required by `publish`: synthetic data derived from CAMUS annotations
    seed: int = 0
    # torch CPU threads of every stage (`--threads`); None = torch's default (one per core). CPU float
    # results can depend on it, so the manifest records the count used (environment.torch_threads).
    threads: int | None = Field(None, ge=1)
    run_dir: str | None = None  # default runs/<name>
    source: SourceConfig = SourceConfig()
    prepare: PrepareConfig = PrepareConfig()
    generator: GeneratorConfig = SdmConfig()
    train: TrainConfig = TrainConfig()
    segmenter: SegmenterConfig = SegmenterConfig()
    generate: GenerateConfig = GenerateConfig()
    filter: FilterConfig = FilterConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    publish: PublishConfig = PublishConfig()

    @field_validator("version")
    @classmethod
    def _semver(cls, value: str) -> str:
        if not SEMVER.match(value):
            raise ValueError(f"version must be semver like 1.0.0, got {value!r}")
        return value

    @model_validator(mode="after")
    def _names_are_safe(self) -> Recipe:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name):
            raise ValueError(
                f"name {self.name!r} must be letters, digits, '.', '_' or '-' (it names folders)"
            )
        return self

    def content_hash(self) -> str:
        return sha256_json(self.model_dump(mode="json"))

    def section_hash(self, *sections: str) -> str:
        dumped = self.model_dump(mode="json")
        return sha256_json({name: dumped[name] for name in sections})

    def resolve_run_dir(self, override: str | os.PathLike | None = None) -> Path:
        return Path(override or self.run_dir or Path("runs") / self.name)


# --- loading -----------------------------------------------------------------------------------------


def available_recipes() -> list[str]:
    return sorted(p.stem for p in shipped_recipes_dir().glob("*.yaml"))


def find_recipe_file(name_or_path: str | os.PathLike) -> Path:
    """A path to a YAML file, or the name of a shipped recipe (recipes/<name>.yaml)."""
    candidate = Path(name_or_path)
    if candidate.suffix in {".yaml", ".yml"} or candidate.exists():
        if not candidate.is_file():
            raise SynthechoError(f"recipe file {candidate} does not exist.")
        return candidate
    for folder in (Path.cwd() / "recipes", shipped_recipes_dir()):
        path = folder / f"{name_or_path}.yaml"
        if path.is_file():
            return path
    raise SynthechoError(
        f"no recipe named {str(name_or_path)!r}: pass a YAML path or one of {', '.join(available_recipes())}."
    )


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one `dotted.key=value` override in place; the value is parsed as YAML (1e-4, [1,2], true)."""
    if "=" not in assignment:
        raise SynthechoError(f"--set {assignment!r}: expected key=value, e.g. --set train.steps=100")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    node = data
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise SynthechoError(f"--set {key}: {'.'.join(parts[: depth + 1])} is not a section")
        node = child
    node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""


def _format_validation_error(error: ValidationError, origin: str) -> str:
    lines = [f"invalid recipe {origin}:"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"] if not str(part).startswith("function-"))
        if item["type"] == "extra_forbidden":
            lines.append(f"  - {key}: unknown key (check the spelling; see recipes/demo.yaml for the schema)")
        else:
            lines.append(f"  - {key}: {item['msg']} (got {item.get('input')!r})")
    return "\n".join(lines)


def recipe_from_dict(data: dict[str, Any], origin: str = "<dict>") -> Recipe:
    try:
        return Recipe.model_validate(data)
    except ValidationError as error:
        raise SynthechoError(_format_validation_error(error, origin)) from None


def load_recipe(name_or_path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read, override and validate a recipe."""
    path = find_recipe_file(name_or_path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise SynthechoError(f"recipe {path} is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise SynthechoError(f"recipe {path} must be a mapping of sections, got {type(data).__name__}")
    for assignment in overrides:
        apply_override(data, assignment)
    return recipe_from_dict(data, origin=str(path))

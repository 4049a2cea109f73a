from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ImageFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IMAGE_FORMAT_UNSPECIFIED: _ClassVar[ImageFormat]
    IMAGE_FORMAT_PNG: _ClassVar[ImageFormat]
    IMAGE_FORMAT_JPEG: _ClassVar[ImageFormat]
    IMAGE_FORMAT_RAW: _ClassVar[ImageFormat]

class NoiseMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NOISE_MODE_UNSPECIFIED: _ClassVar[NoiseMode]
    NOISE_MODE_CONST: _ClassVar[NoiseMode]
    NOISE_MODE_RANDOM: _ClassVar[NoiseMode]
    NOISE_MODE_NONE: _ClassVar[NoiseMode]

class EditMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EDIT_MODE_UNSPECIFIED: _ClassVar[EditMode]
    EDIT_MODE_ADD: _ClassVar[EditMode]
    EDIT_MODE_SET: _ClassVar[EditMode]
IMAGE_FORMAT_UNSPECIFIED: ImageFormat
IMAGE_FORMAT_PNG: ImageFormat
IMAGE_FORMAT_JPEG: ImageFormat
IMAGE_FORMAT_RAW: ImageFormat
NOISE_MODE_UNSPECIFIED: NoiseMode
NOISE_MODE_CONST: NoiseMode
NOISE_MODE_RANDOM: NoiseMode
NOISE_MODE_NONE: NoiseMode
EDIT_MODE_UNSPECIFIED: EditMode
EDIT_MODE_ADD: EditMode
EDIT_MODE_SET: EditMode

class RawImage(_message.Message):
    __slots__ = ("pixels", "width", "height", "channels")
    PIXELS_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    pixels: bytes
    width: int
    height: int
    channels: int
    def __init__(self, pixels: _Optional[bytes] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., channels: _Optional[int] = ...) -> None: ...

class Image(_message.Message):
    __slots__ = ("encoded", "raw")
    ENCODED_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    encoded: bytes
    raw: RawImage
    def __init__(self, encoded: _Optional[bytes] = ..., raw: _Optional[_Union[RawImage, _Mapping]] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("shape", "data")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class OutputOptions(_message.Message):
    __slots__ = ("format", "jpeg_quality", "return_latents", "skip_images")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    JPEG_QUALITY_FIELD_NUMBER: _ClassVar[int]
    RETURN_LATENTS_FIELD_NUMBER: _ClassVar[int]
    SKIP_IMAGES_FIELD_NUMBER: _ClassVar[int]
    format: ImageFormat
    jpeg_quality: int
    return_latents: bool
    skip_images: bool
    def __init__(self, format: _Optional[_Union[ImageFormat, str]] = ..., jpeg_quality: _Optional[int] = ..., return_latents: _Optional[bool] = ..., skip_images: _Optional[bool] = ...) -> None: ...

class Noise(_message.Message):
    __slots__ = ("mode", "seed")
    MODE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    mode: NoiseMode
    seed: int
    def __init__(self, mode: _Optional[_Union[NoiseMode, str]] = ..., seed: _Optional[int] = ...) -> None: ...

class LatentSource(_message.Message):
    __slots__ = ("images", "latents", "seeds", "truncation_psi")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    LATENTS_FIELD_NUMBER: _ClassVar[int]
    SEEDS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATION_PSI_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[Image]
    latents: Tensor
    seeds: _containers.RepeatedScalarFieldContainer[int]
    truncation_psi: float
    def __init__(self, images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., latents: _Optional[_Union[Tensor, _Mapping]] = ..., seeds: _Optional[_Iterable[int]] = ..., truncation_psi: _Optional[float] = ...) -> None: ...

class EncodeRequest(_message.Message):
    __slots__ = ("images",)
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[Image]
    def __init__(self, images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ...) -> None: ...

class EncodeResponse(_message.Message):
    __slots__ = ("latents",)
    LATENTS_FIELD_NUMBER: _ClassVar[int]
    latents: Tensor
    def __init__(self, latents: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class DecodeRequest(_message.Message):
    __slots__ = ("latents", "noise", "output")
    LATENTS_FIELD_NUMBER: _ClassVar[int]
    NOISE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    latents: Tensor
    noise: Noise
    output: OutputOptions
    def __init__(self, latents: _Optional[_Union[Tensor, _Mapping]] = ..., noise: _Optional[_Union[Noise, _Mapping]] = ..., output: _Optional[_Union[OutputOptions, _Mapping]] = ...) -> None: ...

class ReconstructRequest(_message.Message):
    __slots__ = ("images", "noise", "output", "return_psnr")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    NOISE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    RETURN_PSNR_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[Image]
    noise: Noise
    output: OutputOptions
    return_psnr: bool
    def __init__(self, images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., noise: _Optional[_Union[Noise, _Mapping]] = ..., output: _Optional[_Union[OutputOptions, _Mapping]] = ..., return_psnr: _Optional[bool] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("seeds", "z", "truncation_psi", "truncation_cutoff", "noise", "output")
    SEEDS_FIELD_NUMBER: _ClassVar[int]
    Z_FIELD_NUMBER: _ClassVar[int]
    TRUNCATION_PSI_FIELD_NUMBER: _ClassVar[int]
    TRUNCATION_CUTOFF_FIELD_NUMBER: _ClassVar[int]
    NOISE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    seeds: _containers.RepeatedScalarFieldContainer[int]
    z: Tensor
    truncation_psi: float
    truncation_cutoff: int
    noise: Noise
    output: OutputOptions
    def __init__(self, seeds: _Optional[_Iterable[int]] = ..., z: _Optional[_Union[Tensor, _Mapping]] = ..., truncation_psi: _Optional[float] = ..., truncation_cutoff: _Optional[int] = ..., noise: _Optional[_Union[Noise, _Mapping]] = ..., output: _Optional[_Union[OutputOptions, _Mapping]] = ...) -> None: ...

class DirectionEdit(_message.Message):
    __slots__ = ("name", "vector", "strength")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    STRENGTH_FIELD_NUMBER: _ClassVar[int]
    name: str
    vector: Tensor
    strength: float
    def __init__(self, name: _Optional[str] = ..., vector: _Optional[_Union[Tensor, _Mapping]] = ..., strength: _Optional[float] = ...) -> None: ...

class EditRequest(_message.Message):
    __slots__ = ("source", "edits", "mode", "layers", "noise", "output")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    EDITS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    NOISE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    source: LatentSource
    edits: _containers.RepeatedCompositeFieldContainer[DirectionEdit]
    mode: EditMode
    layers: _containers.RepeatedScalarFieldContainer[int]
    noise: Noise
    output: OutputOptions
    def __init__(self, source: _Optional[_Union[LatentSource, _Mapping]] = ..., edits: _Optional[_Iterable[_Union[DirectionEdit, _Mapping]]] = ..., mode: _Optional[_Union[EditMode, str]] = ..., layers: _Optional[_Iterable[int]] = ..., noise: _Optional[_Union[Noise, _Mapping]] = ..., output: _Optional[_Union[OutputOptions, _Mapping]] = ...) -> None: ...

class MixRequest(_message.Message):
    __slots__ = ("a", "b", "cutoff", "noise", "output")
    A_FIELD_NUMBER: _ClassVar[int]
    B_FIELD_NUMBER: _ClassVar[int]
    CUTOFF_FIELD_NUMBER: _ClassVar[int]
    NOISE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    a: LatentSource
    b: LatentSource
    cutoff: int
    noise: Noise
    output: OutputOptions
    def __init__(self, a: _Optional[_Union[LatentSource, _Mapping]] = ..., b: _Optional[_Union[LatentSource, _Mapping]] = ..., cutoff: _Optional[int] = ..., noise: _Optional[_Union[Noise, _Mapping]] = ..., output: _Optional[_Union[OutputOptions, _Mapping]] = ...) -> None: ...

class InterpolateRequest(_message.Message):
    __slots__ = ("a", "b", "steps", "noise", "output")
    A_FIELD_NUMBER: _ClassVar[int]
    B_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    NOISE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    a: LatentSource
    b: LatentSource
    steps: int
    noise: Noise
    output: OutputOptions
    def __init__(self, a: _Optional[_Union[LatentSource, _Mapping]] = ..., b: _Optional[_Union[LatentSource, _Mapping]] = ..., steps: _Optional[int] = ..., noise: _Optional[_Union[Noise, _Mapping]] = ..., output: _Optional[_Union[OutputOptions, _Mapping]] = ...) -> None: ...

class ImagesResponse(_message.Message):
    __slots__ = ("images", "latents", "psnr")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    LATENTS_FIELD_NUMBER: _ClassVar[int]
    PSNR_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[Image]
    latents: Tensor
    psnr: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., latents: _Optional[_Union[Tensor, _Mapping]] = ..., psnr: _Optional[_Iterable[float]] = ...) -> None: ...

class InterpolateFrame(_message.Message):
    __slots__ = ("index", "t", "images", "latents")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    T_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    LATENTS_FIELD_NUMBER: _ClassVar[int]
    index: int
    t: float
    images: _containers.RepeatedCompositeFieldContainer[Image]
    latents: Tensor
    def __init__(self, index: _Optional[int] = ..., t: _Optional[float] = ..., images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., latents: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("config_name", "config_json", "resolution", "channels", "latent_size", "layer_count", "num_styles", "directions", "backend", "device", "dtype", "weights", "truncation_psi", "truncation_cutoff", "max_batch", "max_images", "max_message_bytes", "max_pixels", "max_strength", "max_steps", "version", "direction_info", "style_ranges", "method")
    CONFIG_NAME_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    LATENT_SIZE_FIELD_NUMBER: _ClassVar[int]
    LAYER_COUNT_FIELD_NUMBER: _ClassVar[int]
    NUM_STYLES_FIELD_NUMBER: _ClassVar[int]
    DIRECTIONS_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATION_PSI_FIELD_NUMBER: _ClassVar[int]
    TRUNCATION_CUTOFF_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGES_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_PIXELS_FIELD_NUMBER: _ClassVar[int]
    MAX_STRENGTH_FIELD_NUMBER: _ClassVar[int]
    MAX_STEPS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_INFO_FIELD_NUMBER: _ClassVar[int]
    STYLE_RANGES_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    config_name: str
    config_json: str
    resolution: int
    channels: int
    latent_size: int
    layer_count: int
    num_styles: int
    directions: _containers.RepeatedScalarFieldContainer[str]
    backend: str
    device: str
    dtype: str
    weights: str
    truncation_psi: float
    truncation_cutoff: int
    max_batch: int
    max_images: int
    max_message_bytes: int
    max_pixels: int
    max_strength: float
    max_steps: int
    version: str
    direction_info: _containers.RepeatedCompositeFieldContainer[DirectionInfo]
    style_ranges: _containers.RepeatedCompositeFieldContainer[StyleRange]
    method: str
    def __init__(self, config_name: _Optional[str] = ..., config_json: _Optional[str] = ..., resolution: _Optional[int] = ..., channels: _Optional[int] = ..., latent_size: _Optional[int] = ..., layer_count: _Optional[int] = ..., num_styles: _Optional[int] = ..., directions: _Optional[_Iterable[str]] = ..., backend: _Optional[str] = ..., device: _Optional[str] = ..., dtype: _Optional[str] = ..., weights: _Optional[str] = ..., truncation_psi: _Optional[float] = ..., truncation_cutoff: _Optional[int] = ..., max_batch: _Optional[int] = ..., max_images: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., max_pixels: _Optional[int] = ..., max_strength: _Optional[float] = ..., max_steps: _Optional[int] = ..., version: _Optional[str] = ..., direction_info: _Optional[_Iterable[_Union[DirectionInfo, _Mapping]]] = ..., style_ranges: _Optional[_Iterable[_Union[StyleRange, _Mapping]]] = ..., method: _Optional[str] = ...) -> None: ...

class DirectionInfo(_message.Message):
    __slots__ = ("name", "label", "min", "max")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    name: str
    label: str
    min: float
    max: float
    def __init__(self, name: _Optional[str] = ..., label: _Optional[str] = ..., min: _Optional[float] = ..., max: _Optional[float] = ...) -> None: ...

class StyleRange(_message.Message):
    __slots__ = ("name", "layers")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    name: str
    layers: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., layers: _Optional[_Iterable[int]] = ...) -> None: ...

"""Responses in wire form (alae_rt.serve.wire.frame_response): what protobuf parses from them is the message the
fields describe, for every image format, with and without the small fields, at sizes whose lengths take several
varint bytes."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from alae_rt import codecs
from alae_rt.serve import alae_rt_pb2 as pb
from alae_rt.serve.wire import (
    RequestError,
    array_to_tensor,
    encoded_parts,
    frame_response,
    image_parts,
    serialize,
)

MB = 2**20


def _images(n: int, size: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, channels), dtype=np.uint8)


def _expected_image(a: np.ndarray, fmt: int, quality: int = 0) -> pb.Image:
    """The Image message as the message API builds it."""
    if fmt == pb.IMAGE_FORMAT_RAW:
        h, w, c = a.shape
        return pb.Image(raw=pb.RawImage(pixels=a.tobytes(), width=w, height=h, channels=c))
    data = codecs.encode_png(a) if fmt == pb.IMAGE_FORMAT_PNG else codecs.encode_jpeg(a, quality or 90)
    return pb.Image(encoded=data)


@pytest.mark.parametrize("fmt", [pb.IMAGE_FORMAT_RAW, pb.IMAGE_FORMAT_PNG, pb.IMAGE_FORMAT_JPEG])
@pytest.mark.parametrize("size", [1, 8, 96])  # 96x96x3 raw: a 27,648-byte field, a three-byte varint length
def test_images_response_parses_as_the_message(fmt, size):
    images = _images(3, size)
    latents = np.random.default_rng(1).standard_normal((3, 16)).astype(np.float32)
    head = pb.ImagesResponse(psnr=[31.5, 12.25, 40.0], latents=array_to_tensor(latents))
    resp = frame_response(head, "images", [image_parts(a, fmt, 80) for a in images], 64 * MB)
    expected = pb.ImagesResponse(psnr=[31.5, 12.25, 40.0], latents=array_to_tensor(latents),
                                 images=[_expected_image(a, fmt, 80) for a in images])
    assert resp.images == 3
    assert serialize(resp) is resp.data
    assert pb.ImagesResponse.FromString(resp.data) == expected
    assert len(resp.data) == expected.ByteSize()  # the same fields, only in another order (images are field 1)


def test_interpolate_frame_and_channels():
    """InterpolateFrame's images are field 3; grey and RGBA raw images keep their channel counts; a frame with index
    0 (a proto3 default, not written) parses as index 0."""
    grey, rgba = _images(1, 5, 1)[0], _images(1, 7, 4)[0]
    for index in (0, 4):
        head = pb.InterpolateFrame(index=index, t=index / 4)
        resp = frame_response(head, "images", [image_parts(grey, pb.IMAGE_FORMAT_RAW),
                                               image_parts(rgba, pb.IMAGE_FORMAT_RAW)], MB)
        frame = pb.InterpolateFrame.FromString(resp.data)
        assert (frame.index, frame.t) == (index, index / 4)
        assert [(i.raw.height, i.raw.width, i.raw.channels) for i in frame.images] == [(5, 5, 1), (7, 7, 4)]
        assert frame.images[0].raw.pixels == grey.tobytes() and frame.images[1].raw.pixels == rgba.tobytes()


def test_no_images_and_encoded_files():
    """skip_images: the head alone; an encoded file (nvJPEG's) is written as given."""
    empty = frame_response(pb.ImagesResponse(psnr=[1.0]), "images", [], MB)
    assert (empty.images, pb.ImagesResponse.FromString(empty.data)) == (0, pb.ImagesResponse(psnr=[1.0]))
    files = [b"\xff\xd8\xff" + bytes(range(256)) * 600, b""]
    resp = frame_response(pb.ImagesResponse(), "images", [encoded_parts(f) for f in files], MB)
    assert [i.encoded for i in pb.ImagesResponse.FromString(resp.data).images] == files


def test_non_contiguous_pixels_are_written_in_c_order():
    """A view (a crop, a flipped array) is written as its C-order pixels, as tobytes() would."""
    a = _images(1, 12)[0][2:10, ::-1]
    resp = frame_response(pb.ImagesResponse(), "images", [image_parts(a, pb.IMAGE_FORMAT_RAW)], MB)
    assert pb.ImagesResponse.FromString(resp.data).images[0].raw.pixels == a.tobytes()


def test_over_the_message_limit_is_refused_before_copying():
    images = _images(2, 64)  # 2 x 12 KiB raw
    with pytest.raises(RequestError) as err:
        frame_response(pb.ImagesResponse(), "images", [image_parts(a, pb.IMAGE_FORMAT_RAW) for a in images], 16_000)
    assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.value.message.startswith("output: the response would be") and "--max-message-mb" in err.value.message
    one = frame_response(pb.ImagesResponse(), "images", [image_parts(images[0], pb.IMAGE_FORMAT_RAW)], 16_000)
    assert one.images == 1


def test_serialize_passes_messages_through_their_serializer():
    info = pb.ModelInfo(config_name="x", resolution=64)
    assert serialize(info) == info.SerializeToString()

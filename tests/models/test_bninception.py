"""BN-Inception (ProxyGML's backbone): the converted Caffe checkpoint's layer names, its layout, loading it,
and the Caffe-style preprocessing."""

import pytest
import torch

from pygml.models import BNInception, WeightsMismatchError
from pygml.models.bninception import checkpoint_name

# names of the converted checkpoint bn_inception-52deb4733.pth (pretrainedmodels)
CHECKPOINT_KEYS = [
    "conv1_7x7_s2.weight", "conv1_7x7_s2.bias", "conv1_7x7_s2_bn.weight", "conv1_7x7_s2_bn.running_mean",
    "conv2_3x3_reduce.weight", "conv2_3x3_bn.running_var", "inception_3a_1x1.weight", "inception_3a_pool_proj_bn.bias",
    "inception_3c_double_3x3_2.weight", "inception_4e_3x3_bn.weight", "inception_5a_double_3x3_1_bn.running_mean",
    "inception_5b_pool_proj.weight", "inception_5b_pool_proj_bn.running_var",
]


def test_bninception_names_shape_and_roundtrip(tmp_path):
    torch.manual_seed(0)
    net = BNInception(None).eval()
    names = [checkpoint_name(k) for k in net.state_dict()]
    assert set(CHECKPOINT_KEYS) <= set(names)
    # 3 in the stem, 7 per block, 5 per grid reduction (3c, 4e): 69 convolutions, each with its BatchNorm
    assert len([n for n in names if n.endswith("_bn.running_var")]) == 69
    assert dict(net.state_dict())["stages.stem.conv2_3x3.weight"].shape == (192, 64, 3, 3)
    with torch.no_grad():
        assert net(torch.rand(1, 3, 224, 224)).shape == (1, 1024) and net.out_dim == 1024
        x = torch.rand(2, 3, 32, 32)
        out = net(x)
    # the converted file's layout: checkpoint names, BN vectors as (1, C), a classifier, no num_batches_tracked
    state = {checkpoint_name(k): (v.view(1, -1) if "_bn." in k else v) for k, v in net.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    state["last_linear.weight"], state["last_linear.bias"] = torch.randn(1000, 1024), torch.randn(1000)
    torch.save(state, tmp_path / "bn_inception.pth")
    torch.save(net.state_dict(), tmp_path / "own.pth")
    for file in ("bn_inception.pth", "own.pth"):
        other = BNInception(str(tmp_path / file)).eval()
        with torch.no_grad():
            torch.testing.assert_close(other(x), out)
    del state["inception_4a_1x1.bias"]
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(WeightsMismatchError, match=r"broken\.pth does not fit BNInception: 1 missing keys "
                                                   r"\(e\.g\. \['stages\.inception_4a\.inception_4a_1x1\.bias'\]\)"):
        BNInception(str(tmp_path / "broken.pth"))


def test_bninception_caffe_preprocessing_and_missing_file(tmp_path):
    net = BNInception(None)
    img = torch.zeros(1, 3, 2, 2)
    img[0, 0] = 1.0  # pure red
    pre = net.preprocess(img)
    assert pre[0, :, 0, 0].tolist() == [-104.0, -117.0, 255.0 - 128.0]  # BGR, ×255, Caffe means
    missing = tmp_path / "bn_inception-52deb4733.pth"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        BNInception(str(missing))

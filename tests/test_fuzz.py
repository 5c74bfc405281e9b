"""Property tests: the image loaders and the config / --set parser let only MedxganError escape."""

from __future__ import annotations

import io
import json

import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from medxgan.config import RunConfig, apply_overrides, from_dict
from medxgan.data import load_image, load_mask
from medxgan.errors import MedxganError


def _png_bytes(seed: int, mode: str) -> bytes:
    rng = np.random.default_rng(seed)
    a = (rng.random((7, 9)) * 255).astype("uint8")
    im = Image.fromarray(a).convert(mode)
    buf = io.BytesIO()
    im.save(buf, format="PNG" if mode != "CMYK" else "TIFF")
    return buf.getvalue()


@settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 5), mode=st.sampled_from(["L", "RGB", "RGBA", "P", "I;16", "1", "CMYK"]),
       cut=st.integers(0, 400), flips=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=4),
       ext=st.sampled_from([".png", ".tif", ".jpg", ".bmp", ".dcm", ".nii"]))
def test_damaged_image_files_raise_only_medxgan_errors(tmp_path, seed, mode, cut, flips, ext):
    raw = bytearray(_png_bytes(seed, mode))
    for pos, val in flips:
        if pos < len(raw):
            raw[pos] = val
    raw = bytes(raw[: max(0, len(raw) - cut)])
    p = tmp_path / f"img{ext}"
    p.write_bytes(raw)
    for fn in (lambda: load_image(p, 16, channels=1), lambda: load_image(p, 16, channels=3), lambda: load_mask(p, 16)):
        try:
            out = fn()
        except MedxganError as e:
            assert "\n" not in str(e)
        else:
            assert out.shape[-2:] == (16, 16)
            if out.dtype.is_floating_point:
                assert bool(out.isfinite().all()) and float(out.min()) >= -1 and float(out.max()) <= 1


_key = st.sampled_from(["data", "classifier", "gan", "gan.lr_g", "gan.steps", "gan.ema", "data.size", "data.split_fractions",
                        "data.dicom_window", "classifier.augment", "gan.code", "gan.nothing", "", "."]) | st.text(max_size=12)
_value = st.text(max_size=12) | st.integers(-10**6, 10**6).map(str) | st.floats(allow_nan=True).map(str) \
    | st.sampled_from(["true", "no", "nan", "inf", "1e-3", "(1,2)", "0.7,0.15,0.15", "[]", "64"])


@settings(max_examples=300, deadline=None, derandomize=True)
@given(pairs=st.lists(st.tuples(_key, _value), max_size=4), bare=st.booleans())
def test_set_overrides_raise_only_medxgan_errors(pairs, bare):
    items = [k if bare else f"{k}={v}" for k, v in pairs]
    try:
        cfg = apply_overrides(RunConfig(), items)
    except MedxganError as e:
        assert "\n" not in str(e)
    else:
        assert isinstance(cfg, RunConfig)
        assert RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg  # what is accepted round-trips


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
                     lambda ch: st.lists(ch, max_size=3) | st.dictionaries(st.text(max_size=8), ch, max_size=3), max_leaves=10)
_sections = st.fixed_dictionaries({}, optional={
    "data": st.dictionaries(st.sampled_from(["size", "channels", "resize", "split_fractions", "layout", "dicom_window"]), _json, max_size=3) | _json,
    "gan": st.dictionaries(st.sampled_from(["steps", "lam", "z1_dim", "code", "ema", "arch"]), _json, max_size=3) | _json,
    "classifier": _json,
})


@settings(max_examples=300, deadline=None, derandomize=True)
@given(d=_sections | _json)
@example(d={"classifier": {"\n": 0}})  # found by a random run: the unknown key's newline reached the message
def test_config_files_raise_only_medxgan_errors(d):
    try:
        cfg = from_dict(RunConfig, d)
    except MedxganError as e:
        assert "\n" not in str(e)
    else:
        assert isinstance(cfg, RunConfig)

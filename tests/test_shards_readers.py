"""Readers and processing: bit depth, DICOM LUTs, formats, keys, splits, the tar writer and its index."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.filebase import DicomBytesIO

from shards import keys
from shards.process import ProcessOptions, decode_png_any, encode_png, pixel_sha256, render, target_shape
from shards.readers import ReadOptions, Reject, parse_age, read, sniff
from shards.samples import SampleOptions, make_samples
from shards.writer import ShardWriter

RO = ReadOptions()
# the real DICOM files shipped inside the pydicom wheel (no download)
TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def _png_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def _dicom_bytes(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=False)
    return buf.getvalue()


def test_png16_round_trip_bit_exact(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 65536, size=(61, 83), dtype=np.uint16)
    a[0, 0], a[0, 1] = 0, 65535
    p = tmp_path / "x16.png"
    p.write_bytes(_png_bytes(a))
    res = make_samples((0, str(p), None, None, SampleOptions(name="t")))
    (s,) = res.samples
    back = decode_png_any(s.image)
    assert back.dtype == np.uint16 and np.array_equal(back, a)  # smaller than --size: never upscaled
    assert pixel_sha256(back) == s.sha256
    assert b'"bits":16' in s.json


def test_png8_stays_8bit_and_bits16_scales_exactly():
    a = np.arange(256, dtype=np.uint8).reshape(16, 16)
    dec = read(_png_bytes(a), "x.png", RO)
    assert dec.source_bits == 8
    out8 = render(dec.frames[0], ProcessOptions(), 8)
    out16 = render(dec.frames[0], ProcessOptions(), 16)
    assert np.array_equal(out8, a) and np.array_equal(out16, a.astype(np.uint16) * 257)


def test_resize_shorter_side_and_no_upscale():
    assert target_shape(2048, 1500, 518, False) == (round(2048 * 518 / 1500), 518)
    assert target_shape(300, 400, 518, False) == (300, 400)
    assert target_shape(300, 400, 518, True) == (518, round(400 * 518 / 300))
    a = np.tile(np.linspace(0, 255, 600), (400, 1)).astype(np.uint8)
    dec = read(_png_bytes(a), "x.png", RO)
    for resample in ("bicubic", "lanczos", "bspline"):
        out = render(dec.frames[0], ProcessOptions(size=100, resample=resample), 8)
        assert out.shape == (100, 150)
        # a smooth ramp stays a ramp: resampling error is small
        expect = np.linspace(0, 255, 150)
        assert np.abs(out[50].astype(float) - expect).max() < 6, resample


def test_dicom_rescale_slope_intercept_and_window_applied():
    ds = pydicom.dcmread(str(TEST_FILES / "MR_small.dcm"))
    raw = ds.pixel_array.astype(np.float64)
    ds.RescaleSlope, ds.RescaleIntercept = 2, -100
    ds.WindowCenter, ds.WindowWidth = 500, 1001
    dec = read(_dicom_bytes(ds), "mr.dcm", RO)
    fr = dec.frames[0]
    assert np.array_equal(fr.pixels, raw * 2 - 100)
    out = render(fr, ProcessOptions(size=0), 16)
    lo = 500 - 0.5 - 500  # DICOM linear window: c - 0.5 - (w - 1) / 2
    expect = np.rint(np.clip(((raw * 2 - 100) - lo) / 1000, 0, 1) * 65535).astype(np.uint16)
    assert np.array_equal(out, expect)
    assert fr.window == "window c=500 w=1001" and dec.tags["modality"] == "MR"
    # without the rescale the same window gives a different image: the LUT really was applied
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    assert not np.array_equal(render(read(_dicom_bytes(ds), "mr.dcm", RO).frames[0], ProcessOptions(size=0), 16), out)


def test_dicom_monochrome1_inverted():
    ds = pydicom.dcmread(str(TEST_FILES / "MR_small.dcm"))
    m2 = render(read(_dicom_bytes(ds), "a.dcm", ReadOptions(dicom_window="minmax")).frames[0], ProcessOptions(), 16)
    ds.PhotometricInterpretation = "MONOCHROME1"
    fr = read(_dicom_bytes(ds), "b.dcm", ReadOptions(dicom_window="minmax")).frames[0]
    assert fr.invert
    m1 = render(fr, ProcessOptions(), 16)
    assert np.array_equal(m1.astype(np.int64), 65535 - m2.astype(np.int64))


def test_dicom_tags_and_no_meta_raw_dataset():
    ds = pydicom.dcmread(str(TEST_FILES / "CT_small.dcm"))
    ds.PatientAge, ds.PatientSex, ds.ViewPosition = "065Y", "F", "AP"
    ds.BodyPartExamined = "CHEST"
    # a raw dataset: no 128-byte preamble, no 'DICM', no file meta (read with force=True)
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, True
    pydicom.filewriter.write_dataset(buf, ds)
    raw = buf.getvalue()
    assert raw[128:132] != b"DICM"
    dec = read(raw, "noext", RO)
    t = dec.tags
    assert t["age"] == 65 and t["sex"] == "F" and t["view"] == "AP" and t["body_part"] == "CHEST"
    assert t["modality"] == "CT" and t["patient_id"] == str(ds.PatientID)
    assert t["spacing"] == [float(x) for x in ds.PixelSpacing]
    assert np.array_equal(dec.frames[0].pixels, ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept))


def test_dicom_multiframe_all_and_middle():
    data = (TEST_FILES / "rtdose.dcm").read_bytes()
    n = int(pydicom.dcmread(io.BytesIO(data)).NumberOfFrames)
    assert [f.index for f in read(data, "e.dcm", RO).frames] == list(range(n))
    assert [f.index for f in read(data, "e.dcm", ReadOptions(frames="middle")).frames] == [n // 2]


@pytest.mark.parametrize("name,blob,reason", [
    ("empty.png", b"", "empty_file"),
    ("notes.txt", b"hello, not an image\n", "unsupported_format"),
    ("trunc.png", None, "decode_error"),
    ("obj.npy", None, "unsupported_format"),
])
def test_rejects(name, blob, reason):
    if name == "trunc.png":
        blob = _png_bytes(np.full((64, 64), 7, np.uint8))[:60]
    if name == "obj.npy":
        buf = io.BytesIO()
        np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
        blob = buf.getvalue()
    with pytest.raises(Reject) as e:
        read(blob, name, RO)
    assert e.value.reason == reason


def test_nifti_slices_and_npz_and_tiff(tmp_path):
    import nibabel as nib

    vol = np.arange(20 * 30 * 8, dtype=np.int16).reshape(20, 30, 8)
    img = nib.Nifti1Image(vol, np.diag([0.5, 0.7, 2.0, 1.0]))
    raw = img.to_bytes()
    dec = read(gzip.compress(raw), "v.nii.gz", ReadOptions(slice_stride=3))
    assert sniff(raw, "v.nii") == "nifti" and [f.index for f in dec.frames] == [0, 3, 6]
    assert dec.frames[0].pixels.shape == (30, 20) and dec.tags["spacing"] == [0.7, 0.5]
    # one window per volume: the first slice is darker than the last
    assert render(dec.frames[0], ProcessOptions(), 16).mean() < render(dec.frames[-1], ProcessOptions(), 16).mean()
    dec = read(raw, "v.nii", ReadOptions(axis=0, ct_window=(40.0, 400.0)))
    assert len(dec.frames) == 20 and dec.frames[0].pixels.shape == (8, 30)

    buf = io.BytesIO()
    np.savez(buf, images=np.zeros((5, 28, 28), np.uint8), labels=np.ones((5, 1), np.int64))
    dec = read(buf.getvalue(), "m.npz", RO)
    assert len(dec.frames) == 5 and dec.tags["arrays"] == ["images"]

    pages = [Image.fromarray(np.full((16, 16), v, np.uint8)) for v in (10, 20, 30)]
    tb = io.BytesIO()
    pages[0].save(tb, format="TIFF", save_all=True, append_images=pages[1:])
    dec = read(tb.getvalue(), "s.tif", RO)
    assert [int(f.pixels[0, 0]) for f in dec.frames] == [10, 20, 30]


def test_rgb_kept_with_channels3_else_luma():
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[..., 0] = 200
    dec = read(_png_bytes(rgb), "c.png", RO)
    assert render(dec.frames[0], ProcessOptions(channels=3), 8).shape == (20, 30, 3)
    gray = render(dec.frames[0], ProcessOptions(channels=1), 8)
    assert gray.shape == (20, 30) and int(gray[0, 0]) == round(200 * 0.299)
    a16 = (np.arange(20 * 30 * 3).reshape(20, 30, 3) * 37 % 65536).astype(np.uint16)
    assert np.array_equal(decode_png_any(encode_png(a16)), a16)


def test_age_keys_and_splits():
    assert parse_age("065Y") == 65 and parse_age("018M") == 1.5 and parse_age("") is None and parse_age("x") is None
    k = keys.sample_key("/data/1.2.840.10008.dcm", 3)
    assert len(k) == 16 and "." not in k and k == keys.sample_key("/data/1.2.840.10008.dcm", 3)
    assert k != keys.sample_key("/data/1.2.840.10008.dcm", 4)
    splits = [keys.assign_split(keys.patient_hash(f"p{i}", "s"), 0.1, 0.2) for i in range(4000)]
    frac = {s: splits.count(s) / len(splits) for s in keys.SPLITS}
    assert abs(frac["val"] - 0.1) < 0.02 and abs(frac["test"] - 0.2) < 0.025
    # another salt reshuffles patients
    other = [keys.assign_split(keys.patient_hash(f"p{i}", "t"), 0.1, 0.2) for i in range(4000)]
    assert other != splits


def test_writer_index_matches_dali_wds2idx(tmp_path):
    from wds2idx import IndexCreator

    path = tmp_path / "s.tar"
    w = ShardWriter(str(path))
    rng = np.random.default_rng(1)
    for i in range(5):
        w.add(f"{i:016x}", [("png", rng.bytes(int(rng.integers(1, 3000)))), ("json", b"{}")])
    facts = w.close()
    with IndexCreator(str(path), str(tmp_path / "ref.idx"), verbose=False) as ic:
        ic.create_index()
    assert facts["index"] == (tmp_path / "ref.idx").read_text()
    assert facts["bytes"] == path.stat().st_size
    with tarfile.open(path) as tf:
        m = tf.getmembers()
    assert [x.name for x in m][:2] == ["0000000000000000.png", "0000000000000000.json"]
    assert all(x.mtime == 0 and x.uid == 0 and x.uname == "" for x in m)
    with pytest.raises(ValueError, match="dot-free"):
        ShardWriter(str(tmp_path / "t.tar")).add("1.2.3", [("png", b"x")])


@pytest.mark.parametrize("sizes", [[1, 511, 512, 513], [10240 - 512 * 3], [0, 7]])
def test_writer_bytes_equal_tarfiles_own(tmp_path, sizes):
    # the writer builds headers itself; tarfile (USTAR, same fixed header fields) is the reference,
    # including the end-of-archive blocks and the padding to a whole 10240-byte record
    import hashlib
    import io

    from shards.writer import tarinfo

    rng = np.random.default_rng(2)
    members = [(f"{i:016x}", rng.bytes(n)) for i, n in enumerate(sizes)]
    w = ShardWriter(str(tmp_path / "ours.tar"))
    for key, data in members:
        w.add(key, [("png", data), ("json", b'{"a":1}')])
    facts = w.close()
    ref = io.BytesIO()
    with tarfile.open(fileobj=ref, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for key, data in members:
            for name, d in ((f"{key}.png", data), (f"{key}.json", b'{"a":1}')):
                tf.addfile(tarinfo(name, len(d)), io.BytesIO(d))
    ours = (tmp_path / "ours.tar").read_bytes()
    assert ours == ref.getvalue()
    assert facts["sha256"] == hashlib.sha256(ours).hexdigest() and facts["bytes"] == len(ours)


def test_dicom_window_none_uses_the_stored_range():
    ds = pydicom.dcmread(str(TEST_FILES / "CT_small.dcm"))
    fr = read(_dicom_bytes(ds), "ct.dcm", ReadOptions(dicom_window="none")).frames[0]
    bits, slope, icpt = int(ds.BitsStored), float(ds.RescaleSlope), float(ds.RescaleIntercept)
    lo_raw = -(2 ** (bits - 1)) if int(ds.PixelRepresentation) else 0
    hi_raw = 2 ** (bits - 1) - 1 if int(ds.PixelRepresentation) else 2**bits - 1
    assert (fr.lo, fr.hi) == (lo_raw * slope + icpt, hi_raw * slope + icpt) and fr.window == "none"
    mm = read(_dicom_bytes(ds), "ct.dcm", ReadOptions(dicom_window="minmax")).frames[0]
    assert (mm.lo, mm.hi) == (float(fr.pixels.min()), float(fr.pixels.max()))

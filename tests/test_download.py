"""mmser.corpus.download on local fixtures: file:// URLs, a tiny HTTP server, archives built here."""

import dataclasses
import hashlib
import http.server
import io
import tarfile
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mmser.corpus import corpora
from mmser.corpus import download as dl
from mmser.corpus.download import (CORPORA, ChecksumError, DownloadError, IncompleteDownload,
                            LicenceNotAccepted, NoPublishedChecksum, UnsafeArchiveError)

DATA = bytes(range(256)) * 800  # 204,800 bytes


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(autouse=True)
def short_timeout(monkeypatch):
    monkeypatch.setattr(dl, "TIMEOUT", 5)


@pytest.fixture
def source(tmp_path) -> Path:
    path = tmp_path / "src" / "blob.bin"
    path.parent.mkdir()
    path.write_bytes(DATA)
    return path


def wav_bytes(seconds: float = 0.1, sr: int = 16_000) -> bytes:
    """A clip of its own noise: `prepare` refuses identical audio under two ids."""
    wav_bytes.made = getattr(wav_bytes, "made", 0) + 1
    noise = np.random.default_rng(wav_bytes.made).uniform(-0.1, 0.1, int(seconds * sr))
    buf = io.BytesIO()
    sf.write(buf, noise, sr, format="WAV")
    return buf.getvalue()


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def make_tar(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def local(monkeypatch, name: str, archive: Path, checksum: str | None, algorithm="sha256"):
    """Point a registry entry at a local archive, keeping everything else."""
    corpus = CORPORA[name]
    arch = dataclasses.replace(corpus.archives[0], urls=(archive.as_uri(),),
                               checksum=checksum, algorithm=algorithm, size=None)
    monkeypatch.setitem(CORPORA, name, dataclasses.replace(corpus, archives=(arch,)))


# ---------------------------------------------------------------------------- fetch


def test_fetch_file_url_with_right_checksum(tmp_path, source):
    out = dl.fetch(source.as_uri(), tmp_path / "out.bin", expected=sha256(DATA),
                   chunk=4096, progress=False)
    assert out.read_bytes() == DATA
    assert not (tmp_path / "out.bin.part").exists()
    md5 = hashlib.md5(DATA).hexdigest()  # an existing file is checked again, not refetched
    assert dl.fetch(source.as_uri(), out, expected=md5, algorithm="md5") == out


def test_wrong_checksum_names_file_and_both_checksums(tmp_path, source):
    wrong = "0" * 64
    with pytest.raises(ChecksumError) as err:
        dl.fetch(source.as_uri(), tmp_path / "out.bin", expected=wrong, progress=False)
    message = str(err.value)
    assert "out.bin" in message and wrong in message and sha256(DATA) in message
    assert not (tmp_path / "out.bin").exists() and not (tmp_path / "out.bin.part").exists()


def test_resume_from_part_file_gives_same_bytes(tmp_path, source):
    (tmp_path / "out.bin.part").write_bytes(DATA[:70_000])
    out = dl.fetch(source.as_uri(), tmp_path / "out.bin", expected=sha256(DATA),
                   chunk=8192, progress=False)
    assert out.read_bytes() == DATA


def test_resume_appends_so_a_bad_part_is_caught_by_the_checksum(tmp_path, source):
    (tmp_path / "out.bin.part").write_bytes(b"\0" * 1000)  # appended to, not refetched
    with pytest.raises(ChecksumError):
        dl.fetch(source.as_uri(), tmp_path / "out.bin", expected=sha256(DATA), progress=False)
    assert not (tmp_path / "out.bin.part").exists()  # so the next run starts afresh


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves DATA; honours 'Range: bytes=N-' unless told not to; can cut off once."""

    ranges: list = []
    honour_range = True
    cut_after: int | None = None  # send only this many bytes, once, then drop

    def do_GET(self):  # noqa: N802 (http.server's name)
        header = self.headers.get("Range")
        type(self).ranges.append(header)
        start = int(header[6:-1]) if header and self.honour_range else 0
        body = DATA[start:]
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(DATA) - 1}/{len(DATA)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if type(self).cut_after is not None:
            body, type(self).cut_after = body[:type(self).cut_after], None
        self.wfile.write(body)
        self.wfile.flush()

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    handler = type("Handler", (RangeHandler,), {"ranges": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield handler, f"http://127.0.0.1:{httpd.server_address[1]}/blob.bin"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_http_range_resume_after_a_dropped_connection(tmp_path, server):
    handler, url = server
    handler.cut_after = 50_000
    with pytest.raises(IncompleteDownload, match="run again to resume"):
        dl.fetch(url, tmp_path / "out.bin", expected=sha256(DATA), progress=False)
    assert (tmp_path / "out.bin.part").stat().st_size == 50_000
    out = dl.fetch(url, tmp_path / "out.bin", expected=sha256(DATA), progress=False)
    assert out.read_bytes() == DATA
    assert handler.ranges == [None, "bytes=50000-"]


def test_http_server_without_range_support_starts_again(tmp_path, server):
    handler, url = server
    handler.honour_range = False
    (tmp_path / "out.bin.part").write_bytes(b"\0" * 1000)
    out = dl.fetch(url, tmp_path / "out.bin", expected=sha256(DATA), progress=False)
    assert out.read_bytes() == DATA and handler.ranges == ["bytes=1000-"]


# ---------------------------------------------------------------------------- unpack


@pytest.mark.parametrize("member", ["../evil.txt", "ABSOLUTE", "ok/../../evil.txt"])
@pytest.mark.parametrize("maker", [make_zip, make_tar])
def test_unpack_refuses_path_traversal(tmp_path, member, maker):
    member = (tmp_path / "evil.txt").as_posix() if member == "ABSOLUTE" else member
    archive = maker(tmp_path / "a" / ("x.zip" if maker is make_zip else "x.tar.gz"),
                    {"fine.txt": b"ok", member: b"evil"})
    with pytest.raises(UnsafeArchiveError, match="outside"):
        dl.unpack(archive, tmp_path / "dest")
    assert not (tmp_path / "evil.txt").exists()


def test_unpack_zip_and_tar(tmp_path):
    members = {"top/a.txt": b"a", "top/sub/b.txt": b"b"}
    for archive in (make_zip(tmp_path / "x.zip", members),
                    make_tar(tmp_path / "x.tar.gz", members)):
        dest = dl.unpack(archive, tmp_path / archive.name.replace(".", "_"))
        assert (dest / "top/sub/b.txt").read_bytes() == b"b"


# ---------------------------------------------------------------------------- registry


def test_registry_entries_name_licence_layout_and_checksum():
    for name, c in CORPORA.items():
        assert c.name == name and c.loader in corpora.LOADERS, name
        assert c.licence and c.licence_url.startswith("https://"), name
        assert c.layout.strip() and c.check and c.root and c.size, name
        assert bool(c.archives) != bool(c.lfs), name  # one way to obtain it
        for a in c.archives:
            assert a.urls and all(u.startswith(("http://", "https://")) for u in a.urls)
            if a.checksum is not None:  # a real hex digest of the right length
                assert len(a.checksum) == dl.ALGORITHMS[a.algorithm], name
                int(a.checksum, 16)
                assert a.source, name
    assert CORPORA["crema_d"].lfs.media_url.startswith("https://media.githubusercontent.com")
    assert "ODbL" in CORPORA["crema_d"].licence and "DbCL" in CORPORA["crema_d"].licence


def test_list_and_unknown_name(capsys):
    assert dl.main(["--list"]) == 0
    assert "librispeech-train-other-500" in capsys.readouterr().out
    with pytest.raises(DownloadError, match="unknown corpus 'nope'"):
        dl.download("nope", accept_licence=True)


# ---------------------------------------------------------------------------- download


def test_download_refuses_without_accepting_the_licence(tmp_path, capsys):
    with pytest.raises(LicenceNotAccepted, match="--accept-licence"):
        dl.download("ravdess", tmp_path / "data")
    assert "CC BY-NC-SA 4.0" in capsys.readouterr().out
    assert not (tmp_path / "data").exists()
    assert dl.main(["ravdess", "--dest", str(tmp_path / "data")]) == 2


def test_pinned_corpus_downloads_verifies_and_lands_in_loader_layout(tmp_path, monkeypatch):
    zipped = make_zip(tmp_path / "remote" / "ravdess.zip", {
        "Actor_01/03-01-05-01-02-01-01.wav": wav_bytes(),
        "Actor_02/03-01-04-01-01-01-02.wav": wav_bytes()})
    local(monkeypatch, "ravdess", zipped, hashlib.md5(zipped.read_bytes()).hexdigest(), "md5")
    root = dl.download("ravdess", tmp_path / "data", accept_licence=True, progress=False)
    assert root == tmp_path / "data" / "ravdess"
    df, _ = corpora.load("ravdess", root, max_lost_fraction=1.0)  # 2 of 120 files
    assert sorted(df["label"]) == ["angry", "sad"]
    assert not (tmp_path / "data" / ".downloads").exists()  # archive removed once unpacked
    assert dl.download("ravdess", tmp_path / "data", accept_licence=True) == root  # no-op


def test_librispeech_folder_is_moved_out_of_the_archive_top_folder(tmp_path, monkeypatch):
    tarred = make_tar(tmp_path / "remote" / "dev-clean.tar.gz", {
        "LibriSpeech/LICENSE.TXT": b"CC BY 4.0",
        "LibriSpeech/dev-clean/84/121123/84-121123.trans.txt": b"84-121123-0000 HELLO\n",
        "LibriSpeech/dev-clean/84/121123/84-121123-0000.flac": b"not decoded here"})
    local(monkeypatch, "librispeech-dev-clean", tarred, sha256(tarred.read_bytes()))
    root = dl.download("librispeech-dev-clean", tmp_path / "data", accept_licence=True,
                       progress=False)
    assert (root / "dev-clean/84/121123/84-121123-0000.flac").is_file()
    assert (root / "LICENSE.TXT").is_file() and not (root / "LibriSpeech").exists()


def test_unpublished_checksum_refuses_until_no_verify(tmp_path, monkeypatch, capsys):
    zipped = make_zip(tmp_path / "remote" / "download.zip",
                      {"wav/03a01Fa.wav": wav_bytes(), "lablaut/03a01Fa.lab": b"x"})
    local(monkeypatch, "emodb", zipped, None)
    data = tmp_path / "data"
    with pytest.raises(NoPublishedChecksum, match=sha256(zipped.read_bytes())):
        dl.download("emodb", data, accept_licence=True, progress=False)
    assert not (data / "emodb").exists()  # downloaded, but left packed
    assert dl.main(["emodb", "--dest", str(data), "--accept-licence"]) == 1
    assert "--no-verify" in capsys.readouterr().err
    assert dl.main(["emodb", "--dest", str(data), "--accept-licence", "--no-verify"]) == 0
    out = capsys.readouterr().out
    assert sha256(zipped.read_bytes()) in out  # printed, to pin it
    assert "dvc add" in out and "name: emodb" in out and f"root: {data.as_posix()}/emodb" in out
    df, _ = corpora.load("emodb", data / "emodb")
    assert list(df["label"]) == ["happy"]


def test_layout_mismatch_is_an_error_showing_the_expected_layout(tmp_path, monkeypatch):
    zipped = make_zip(tmp_path / "remote" / "r.zip", {"RAVDESS/Actor_01/x.wav": wav_bytes()})
    local(monkeypatch, "ravdess", zipped, sha256(zipped.read_bytes()))
    with pytest.raises(DownloadError, match=r"(?s)Actor_\*/\*\.wav.*found \['RAVDESS'\]"):
        dl.download("ravdess", tmp_path / "data", accept_licence=True, progress=False)


def test_crema_d_needs_git_lfs_and_says_how_else(tmp_path, monkeypatch):
    monkeypatch.setattr(dl, "_have_git_lfs", lambda: False)
    with pytest.raises(DownloadError, match="git-lfs.*media.githubusercontent.com"):
        dl.download("crema_d", tmp_path / "data", accept_licence=True)


@pytest.mark.parametrize("pointer", [False, True])
def test_crema_d_lfs_clone_is_moved_into_the_loader_layout(tmp_path, monkeypatch, pointer):
    calls = []

    def fake_git(*args, cwd=None):  # stands in for git clone + git lfs pull
        calls.append(args)
        if args[0] == "clone":
            clone = Path(args[-1])
            (clone / ".git").mkdir(parents=True)
            (clone / "AudioWAV").mkdir()
            (clone / "LICENSE.txt").write_text("ODbL")
            body = b"version https://git-lfs.github.com/spec/v1\n" if pointer else wav_bytes()
            (clone / "AudioWAV" / "1001_DFA_ANG_XX.wav").write_bytes(body)

    monkeypatch.setattr(dl, "_have_git_lfs", lambda: True)
    monkeypatch.setattr(dl, "_git", fake_git)
    if pointer:
        with pytest.raises(DownloadError, match="still Git LFS pointers"):
            dl.download("crema_d", tmp_path / "data", accept_licence=True)
        return
    root = dl.download("crema_d", tmp_path / "data", accept_licence=True)
    assert [c[:2] for c in calls] == [("clone", "--depth"), ("lfs", "pull")]
    df, _ = corpora.load("crema_d", root)
    assert list(df["label"]) == ["angry"] and (root / "LICENSE.txt").is_file()

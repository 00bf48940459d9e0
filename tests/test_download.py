"""Downloads against a real HTTP server on 127.0.0.1: resume, verify, fail clearly."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import pytest

from stylepipe.cli import main as cli
from stylepipe.data.archive import ArchiveError, extract_archive
from stylepipe.data.download import ChecksumError, DownloadError, download

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
MD5 = hashlib.md5(PAYLOAD).hexdigest()


class Handler(http.server.BaseHTTPRequestHandler):
    """/ok: honours Range. /drop: the first response stops mid-file and closes
    the connection. /norange-drop: same, and the server ignores Range.
    /zip, /tar: archives with a member escaping the target. /huge: an exabyte's headers, no body.
    Else 404."""

    files: dict[str, bytes] = {}
    requests: list[tuple[str, str | None]] = []
    dropped: set[str] = set()
    healed = False  # /always-drop serves whole files again
    if_range: list[str | None] = []

    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):
        Handler.requests.append((self.path, self.headers.get("Range")))
        if self.path.startswith("/huge"):  # a file larger than any disk: only its size is sent
            self.send_response(200)
            self.send_header("Content-Length", str(1 << 60))
            self.end_headers()
            self.close_connection = True
            return
        body = Handler.files.get(self.path.rsplit("/", 1)[-1])
        if body is None:
            self.send_error(404, "Not Found")
            return
        Handler.if_range.append(self.headers.get("If-Range"))
        etag = '"' + hashlib.md5(body).hexdigest() + '"'
        honour_range = not self.path.startswith("/norange")
        if self.headers.get("If-Range") not in (None, etag):
            honour_range = False  # the file changed since the client's copy began: all of it (RFC 9110)
        start = 0
        if honour_range and self.headers.get("Range"):
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            if "wrongrange" in self.path:  # a broken server: the whole file, called a range
                start = 0
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("ETag", etag)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        drop = ("always-drop" in self.path and not Handler.healed) or (
            self.path.startswith(("/drop", "/norange")) and self.path not in Handler.dropped
        )
        if drop:
            Handler.dropped.add(self.path)
            self.wfile.write(body[start : start + len(body) // 3])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body[start:])


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    Handler.files["data.bin"] = PAYLOAD
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(autouse=True)
def _reset():
    Handler.requests.clear()
    Handler.dropped.clear()
    Handler.if_range.clear()
    Handler.healed = False
    Handler.files["data.bin"] = PAYLOAD


def test_plain_download_verifies_sha256_prefix(server, tmp_path):
    out = download(f"{server}/ok/data.bin", tmp_path / "data.bin", sha256=SHA256[:8], progress=False)
    assert out.read_bytes() == PAYLOAD
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.bin"]  # no .part left


def test_dropped_connection_resumes_with_range_and_verifies(server, tmp_path):
    out = download(f"{server}/drop/data.bin", tmp_path / "data.bin", md5=MD5, backoff=0.01, progress=False)
    assert out.read_bytes() == PAYLOAD
    assert len(Handler.requests) == 2
    assert Handler.requests[0][1] is None
    assert Handler.requests[1][1] == f"bytes={len(PAYLOAD) // 3}-"  # resumed, not restarted


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    out = download(f"{server}/norange/data.bin", tmp_path / "data.bin", sha256=SHA256, backoff=0.01, progress=False)
    assert out.read_bytes() == PAYLOAD  # not the first third twice
    assert Handler.requests[1][1] is not None  # it asked for a range, got the whole file


def test_a_part_of_unknown_origin_is_downloaded_again(server, tmp_path, capsys):
    """Only a .part this program began for the same URL is resumed: bytes of another file would be kept."""
    (tmp_path / "data.bin.part").write_bytes(PAYLOAD[:1000])
    download(f"{server}/ok/data.bin", tmp_path / "data.bin", sha256=SHA256, progress=False)
    assert Handler.requests == [("/ok/data.bin", None)]
    assert "data.bin.part is of unknown origin; starting over" in capsys.readouterr().err
    assert (tmp_path / "data.bin").read_bytes() == PAYLOAD


def test_a_part_of_another_url_is_downloaded_again(server, tmp_path, capsys):
    with pytest.raises(DownloadError):
        download(f"{server}/always-drop/data.bin", tmp_path / "data.bin", sha256=SHA256, retries=0, progress=False)
    download(f"{server}/ok/data.bin", tmp_path / "data.bin", sha256=SHA256, progress=False)
    assert Handler.requests[-1] == ("/ok/data.bin", None)
    assert f"is a download of {server}/always-drop/data.bin; starting over" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.bin"]


def test_a_file_changed_upstream_since_the_part_began_is_downloaded_whole(server, tmp_path):
    """The resume asks for the rest only of the version the .part began (If-Range with its ETag); a style
    image has no checksum to catch two versions glued together."""
    with pytest.raises(DownloadError):
        download(f"{server}/always-drop/data.bin", tmp_path / "data.bin", retries=0, progress=False)
    newer = PAYLOAD[::-1]
    Handler.files["data.bin"], Handler.healed = newer, True
    download(f"{server}/always-drop/data.bin", tmp_path / "data.bin", progress=False)
    assert Handler.if_range[-1] == '"' + MD5 + '"'
    assert (tmp_path / "data.bin").read_bytes() == newer


def test_a_range_answered_from_another_byte_is_not_appended(server, tmp_path):
    with pytest.raises(DownloadError):
        download(f"{server}/wrongrange-always-drop/data.bin", tmp_path / "data.bin", retries=0, progress=False)
    Handler.healed = True
    download(f"{server}/wrongrange-always-drop/data.bin", tmp_path / "data.bin", sha256=SHA256, progress=False)
    assert (tmp_path / "data.bin").read_bytes() == PAYLOAD


def test_an_unsupported_url_scheme_fails_at_once(tmp_path, capsys):
    import signal

    before = signal.getsignal(signal.SIGTERM)
    assert cli(["download", "htp://example.org/f.bin", "--output", str(tmp_path / "f"), "--md5", MD5]) == 2
    assert "htp://example.org/f.bin: unsupported URL scheme 'htp'; give an https://" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is before  # the command's SIGTERM handler is its own


def test_giving_up_keeps_the_part_for_the_next_run(server, tmp_path):
    with pytest.raises(DownloadError, match="run again to resume"):
        download(f"{server}/always-drop/data.bin", tmp_path / "data.bin", sha256=SHA256, retries=1,
                 backoff=0.01, progress=False)
    assert not (tmp_path / "data.bin").exists()
    kept = (tmp_path / "data.bin.part").stat().st_size
    assert 0 < kept < len(PAYLOAD)
    Handler.healed = True
    download(f"{server}/always-drop/data.bin", tmp_path / "data.bin", sha256=SHA256, progress=False)
    assert Handler.requests[-1] == ("/always-drop/data.bin", f"bytes={kept}-")
    assert Handler.if_range[-1] == '"' + MD5 + '"'  # the rest of the version it began
    assert (tmp_path / "data.bin").read_bytes() == PAYLOAD
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.bin"]  # nor its record


def _part_of(url: str, part: Path, content: bytes) -> None:
    """The .part an earlier run left, with its record of what it is a download of."""
    from stylepipe.data.download import _source_record

    part.write_bytes(content)
    _source_record(part).write_text(json.dumps({"url": url, "validator": None}))


def test_complete_part_is_verified_not_refetched(server, tmp_path):
    _part_of(f"{server}/ok/data.bin", tmp_path / "data.bin.part", PAYLOAD)  # stopped between download and rename
    download(f"{server}/ok/data.bin", tmp_path / "data.bin", sha256=SHA256, progress=False)
    assert Handler.requests == [("/ok/data.bin", f"bytes={len(PAYLOAD)}-")]
    assert (tmp_path / "data.bin").read_bytes() == PAYLOAD


def test_wrong_bytes_clear_error_and_nothing_left(server, tmp_path):
    wrong = "0" * 64
    with pytest.raises(ChecksumError) as err:
        download(f"{server}/ok/data.bin", tmp_path / "data.bin", sha256=wrong, progress=False)
    message = str(err.value)
    assert f"{server}/ok/data.bin" in message and wrong in message and SHA256 in message
    assert list(tmp_path.iterdir()) == []  # neither the final file nor the bad .part


def test_404_is_a_clear_error(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404") as err:
        download(f"{server}/ok/missing.bin", tmp_path / "m.bin", md5=MD5, progress=False)
    assert "missing.bin" in str(err.value)
    assert list(tmp_path.iterdir()) == []
    assert len(Handler.requests) == 1  # a 404 is not retried


def test_existing_verified_file_is_reused(server, tmp_path):
    (tmp_path / "data.bin").write_bytes(PAYLOAD)
    download(f"{server}/ok/data.bin", tmp_path / "data.bin", md5=MD5[:8], progress=False)
    assert Handler.requests == []


def test_wrong_file_at_the_output_is_kept_and_named_not_replaced(server, tmp_path):
    # e.g. copied by hand into the download cache on an offline machine
    placed = tmp_path / "data.bin"
    placed.write_bytes(b"fake\n")
    found = hashlib.sha256(b"fake\n").hexdigest()
    start = time.monotonic()
    with pytest.raises(ChecksumError) as err:
        download(f"{server}/ok/data.bin", placed, sha256=SHA256[:8], progress=False)
    assert time.monotonic() - start < 5  # no network retries
    message = str(err.value)
    assert str(placed) in message and SHA256[:8] in message and found in message and "wrong file?" in message
    assert placed.read_bytes() == b"fake\n"  # kept as it was
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.bin"]
    assert Handler.requests == []  # nothing downloaded over it

    # moved away (as the message says), the download proceeds
    placed.rename(tmp_path / "mine.bin")
    download(f"{server}/ok/data.bin", placed, sha256=SHA256[:8], progress=False)
    assert placed.read_bytes() == PAYLOAD


def test_cli_fetch_reports_a_wrong_cached_file_and_keeps_it(server, tmp_path, capsys):
    import yaml

    from conftest import tiny_params_dict

    Handler.files["vgg16-397923af.pth"] = PAYLOAD
    params = tiny_params_dict()
    params["loss_network"] = {"weights": "imagenet", "url": f"{server}/ok/vgg16-397923af.pth", "sha256": SHA256[:8]}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(params))
    cached = tmp_path / "dl" / server.split("//")[1].replace(":", "_") / "ok" / "vgg16-397923af.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"fake\n")
    rc = cli(["fetch", "loss-network", "--params", str(tmp_path / "p.yaml"), "--output", str(tmp_path / "x.pth"),
              "--downloads", str(tmp_path / "dl")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "key loss_network.url" in err and str(cached) in err and "wrong file?" in err
    assert cached.read_bytes() == b"fake\n" and Handler.requests == []
    assert not (tmp_path / "x.pth").exists()


def test_complete_but_wrong_part_is_a_failed_download_and_discarded(server, tmp_path):
    # a .part is this program's own download: resumed while short (see above), and
    # once complete but wrong it is the download that failed, not a file of the user's
    _part_of(f"{server}/ok/data.bin", tmp_path / "data.bin.part", b"x" * len(PAYLOAD))
    with pytest.raises(ChecksumError, match="was discarded"):
        download(f"{server}/ok/data.bin", tmp_path / "data.bin", sha256=SHA256, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_cache_path_mirrors_the_url():
    from stylepipe.data.download import cache_path

    assert cache_path("http://images.cocodataset.org/zips/train2014.zip", "dl") == Path(
        "dl/images.cocodataset.org/zips/train2014.zip")
    a = cache_path("https://h.org/a/image.jpg?x=1", "dl")
    assert a != cache_path("https://h.org/a/image.jpg?x=2", "dl") and a.parent == Path("dl/h.org/a")
    assert cache_path("https://h.org/../../etc/passwd", "dl") == Path("dl/h.org/etc/passwd")
    assert cache_path("file:///data/x.pth", "dl") == Path("dl/local/data/x.pth")


def test_file_url(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(PAYLOAD)
    out = download(src.as_uri(), tmp_path / "copy.bin", sha256=SHA256, progress=False)
    assert out.read_bytes() == PAYLOAD


def test_missing_file_url_fails_at_once_with_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "src.bin"
    start = time.monotonic()
    with pytest.raises(DownloadError) as err:
        download(missing.as_uri(), tmp_path / "copy.bin", sha256=SHA256, backoff=10, progress=False)
    assert time.monotonic() - start < 5  # not retried: a missing local file does not appear by waiting
    assert str(missing) in str(err.value) and "does not exist" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_cli_requires_a_checksum_and_reports_errors(server, tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli(["download", f"{server}/ok/data.bin", "--output", str(tmp_path / "x")])
    assert cli(["download", f"{server}/ok/nope.bin", "--output", str(tmp_path / "x"), "--md5", MD5]) == 2
    assert "HTTP 404" in capsys.readouterr().err


def test_a_sha256_given_as_md5_is_refused_before_any_request(server, tmp_path, capsys):
    Handler.requests.clear()
    assert cli(["download", f"{server}/ok/data.bin", "--output", str(tmp_path / "x"), "--md5", SHA256]) == 2
    assert "is not 8 to 32 hex digits (64 digits: a sha256? give it with --sha256)" in capsys.readouterr().err
    assert Handler.requests == [] and not list(tmp_path.iterdir())


def test_a_file_larger_than_the_free_space_is_refused_before_any_byte(server, tmp_path):
    with pytest.raises(DownloadError, match=r"1,152,921,504.6 GB still to download into .*data.bin.part, but only "
                                            r".* are free on that disk: free space there, then run again"):
        download(f"{server}/huge/data.bin", tmp_path / "data.bin", sha256=SHA256, progress=False)
    assert list(tmp_path.iterdir()) == [] and len(Handler.requests) == 1  # refused, not retried


def test_a_disk_that_fills_up_keeps_the_part_and_a_second_run_resumes(server, tmp_path):
    """The real command under a file-size limit (writes past it fail as on a full disk)."""
    import subprocess
    import sys

    from conftest import file_size_limit

    out = tmp_path / "data.bin"
    stylepipe = Path(sys.executable).with_name("stylepipe")
    result = subprocess.run([str(stylepipe), "download", f"{server}/ok/data.bin", "--output", str(out),
                             "--sha256", SHA256], capture_output=True, text=True, timeout=120,
                            preexec_fn=file_size_limit(300_000))
    assert result.returncode == 2, result.stderr[-3000:]
    kept = (tmp_path / "data.bin.part").stat().st_size
    assert 0 < kept <= 300_000 and not out.exists()
    assert result.stderr.strip().splitlines()[-1] == (
        f"stylepipe download: error: {out}.part: File too large after {kept:,} of {len(PAYLOAD):,} bytes of "
        f"{server}/ok/data.bin; the partial download is kept: free space on that disk, then run again to resume")
    Handler.requests.clear()
    download(f"{server}/ok/data.bin", out, sha256=SHA256, progress=False)
    assert Handler.requests == [("/ok/data.bin", f"bytes={kept}-")] and out.read_bytes() == PAYLOAD


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _tar(members: dict[str, bytes], links: dict[str, str] = {}) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in links.items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tf.addfile(info)
    return buf.getvalue()


def test_extract_zip_over_http(server, tmp_path):
    Handler.files["good.zip"] = data = _zip({"train2014/a.jpg": b"a", "train2014/b.jpg": b"b"})
    out = download(f"{server}/ok/good.zip", tmp_path / "content", md5=hashlib.md5(data).hexdigest(),
                   extract=True, archive=tmp_path / "cache" / "good.zip", progress=False)
    assert (out / "train2014" / "b.jpg").read_bytes() == b"b"
    assert (tmp_path / "cache" / "good.zip").is_file()  # kept for reruns


def test_extract_replaces_its_own_folder_and_refuses_anyone_elses(server, tmp_path, capsys):
    """Extracting replaces the folder whole: an earlier extraction may go, the user's files may not."""
    Handler.files["good.zip"] = data = _zip({"train2014/a.jpg": b"a"})
    requests_before = len(Handler.requests)
    content = tmp_path / "content"
    (content / "my_photos").mkdir(parents=True)
    (content / "my_photos" / "holiday.jpg").write_bytes(b"mine")
    argv = ["download", f"{server}/ok/good.zip", "--output", str(content), "--extract",
            "--archive", str(tmp_path / "good.zip"), "--md5", hashlib.md5(data).hexdigest()]
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert f"{content}: folder already holds files that are not a previous extracted archive" in err
    assert (content / "my_photos" / "holiday.jpg").read_bytes() == b"mine"
    assert len(Handler.requests) == requests_before  # refused before the download
    assert not (tmp_path / "good.zip").exists()

    (content / "my_photos" / "holiday.jpg").unlink()
    (content / "my_photos").rmdir()  # an empty folder is fine, and so is a rerun over our own output
    assert cli(argv) == 0 and cli(argv) == 0
    assert sorted(p.relative_to(content).as_posix() for p in content.rglob("*") if p.is_file()) == [
        ".stylepipe-extracted", "train2014/a.jpg"]


def test_extract_refuses_an_archive_kept_inside_the_folder_it_replaces(server, tmp_path, capsys):
    Handler.files["good.zip"] = data = _zip({"a.jpg": b"a"})
    rc = cli(["download", f"{server}/ok/good.zip", "--output", str(tmp_path / "data"), "--extract",
              "--archive", str(tmp_path / "data" / "good.zip"), "--md5", hashlib.md5(data).hexdigest()])
    assert rc == 2
    assert "give --archive a path outside it" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


def test_download_to_a_folder_is_refused_before_the_first_byte(server, tmp_path, capsys):
    Handler.files["good.zip"] = data = _zip({"a.jpg": b"a"})
    (tmp_path / "raw").mkdir()
    requests_before = len(Handler.requests)
    rc = cli(["download", f"{server}/ok/good.zip", "--output", str(tmp_path / "raw"), "--md5", hashlib.md5(data).hexdigest()])
    assert rc == 2
    assert f"{tmp_path / 'raw'}: is a folder" in capsys.readouterr().err
    assert len(Handler.requests) == requests_before
    assert list(tmp_path.iterdir()) == [tmp_path / "raw"]  # no .part left


@pytest.mark.parametrize(
    "kind, data",
    [
        ("zip", _zip({"ok.txt": b"x", "../evil.txt": b"x"})),
        ("zip", _zip({"/abs/evil.txt": b"x"})),
        ("tar", _tar({"ok.txt": b"x", "sub/../../evil.txt": b"x"})),
        ("tar", _tar({"ok.txt": b"x"}, links={"link": "../../etc"})),
    ],
)
def test_archive_escaping_member_is_refused(tmp_path, kind, data):
    archive = tmp_path / f"bad.{kind}"
    archive.write_bytes(data)
    with pytest.raises(ArchiveError, match="refusing"):
        extract_archive(archive, tmp_path / "out" / "content", progress=False)
    assert not (tmp_path / "out" / "content").exists()
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "out" / "evil.txt").exists()
    assert list((tmp_path / "out").iterdir()) == []  # no half-extracted temp folder


def test_a_member_escaping_through_a_link_to_the_folder_is_refused_not_called_damaged(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        link = tarfile.TarInfo("d")
        link.type, link.linkname = tarfile.SYMTYPE, "."
        tf.addfile(link)
        member = tarfile.TarInfo("d/../evil.txt")
        member.size = 1
        tf.addfile(member, io.BytesIO(b"x"))
    (tmp_path / "bad.tar.gz").write_bytes(buf.getvalue())
    with pytest.raises(ArchiveError, match="refusing a member .*nothing was extracted") as err:
        extract_archive(tmp_path / "bad.tar.gz", tmp_path / "out" / "content", progress=False)
    assert "damaged" not in str(err.value) and "download again" not in str(err.value)
    assert not (tmp_path / "out" / "evil.txt").exists() and list((tmp_path / "out").iterdir()) == []


def test_cli_extract_refuses_escaping_zip(server, tmp_path, capsys):
    Handler.files["evil.zip"] = data = _zip({"../evil.txt": b"x"})
    rc = cli(["download", f"{server}/ok/evil.zip", "--output", str(tmp_path / "content"), "--extract",
              "--archive", str(tmp_path / "evil.zip"), "--sha256", hashlib.sha256(data).hexdigest()])
    assert rc == 2
    assert "escapes the target folder" in capsys.readouterr().err
    assert not (tmp_path / "content").exists()


def test_a_shared_cache_downloads_each_file_once_at_a_time(server, tmp_path, capsys):
    """Two processes filling one cache ($STYLEPIPE_DOWNLOADS): the second waits for the first's lock, then
    reuses its verified file; it never appends to the same .part."""
    import fcntl

    out = tmp_path / "cache" / "data.bin"
    out.parent.mkdir()
    result: list = []
    with open(out.parent / ".data.bin.lock", "a") as held:  # the other process, downloading
        fcntl.flock(held, fcntl.LOCK_EX)
        waiter = threading.Thread(target=lambda: result.append(
            download(f"{server}/ok/data.bin", out, sha256=SHA256, progress=False, lock=True)))
        waiter.start()
        time.sleep(0.5)
        assert waiter.is_alive() and not out.with_name("data.bin.part").exists() and Handler.requests == []
        out.write_bytes(PAYLOAD)  # what the other process leaves: the verified file
    waiter.join(timeout=30)
    assert result == [out] and out.read_bytes() == PAYLOAD
    assert Handler.requests == []  # reused, not downloaded again
    assert "waiting for another process downloading" in capsys.readouterr().err

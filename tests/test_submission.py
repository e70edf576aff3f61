"""The submission zip, written from this checkout: what it holds, its ReadMe.txt, and clear refusals."""

from __future__ import annotations

import os
import stat
import subprocess
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from clouddetect.cli import main
from clouddetect.submission import BundleError, Submission, write_bundle

ROOT = Path(__file__).resolve().parents[1]
SERVICE_URL = "http://203.0.113.7:30500"
VIDEO_URL = "https://video.example/clouddetect-demo"
# A small but complete PDF (one empty page), enough to stand for the report.
PDF = (b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj 2 0 obj<</Type/Pages/Kids[3 0 R]/Count 1>>endobj\n"
       b"3 0 obj<</Type/Page/Parent 2 0 R/MediaBox[0 0 612 792]>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n")


@pytest.fixture
def report_pdf(tmp_path: Path) -> Path:
    path = tmp_path / "capacity-report.pdf"
    path.write_bytes(PDF)
    return path


@pytest.fixture(autouse=True)
def in_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    """``lab bundle`` reads the checkout it is run in."""
    monkeypatch.chdir(ROOT)


def bundle(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["lab", "bundle", *args])
    return result.exit_code, result.output


def written(tmp_path: Path, report_pdf: Path, *extra: str) -> zipfile.ZipFile:
    out = tmp_path / "submission.zip"
    code, output = bundle("--report-pdf", str(report_pdf), "--service-url", SERVICE_URL, "--out", str(out), *extra)
    assert code == 0, output
    return zipfile.ZipFile(out)


def test_zip_holds_dockerfile_source_yamls_locust_and_lab_scripts_and_the_report(tmp_path: Path,
                                                                                 report_pdf: Path) -> None:
    with written(tmp_path, report_pdf) as archive:
        names = set(archive.namelist())
        assert archive.read("report.pdf") == PDF
        mode = archive.getinfo("deploy/cluster/controller-init").external_attr >> 16
    assert {"Dockerfile", "ReadMe.txt", "report.pdf", "pyproject.toml", "src/clouddetect/api.py",
            "src/clouddetect/detector.py", "src/clouddetect/loadtest/locustfile.py", "src/clouddetect/lab/cli.py",
            "deploy/k8s/base/deployment.yaml", "deploy/k8s/base/service.yaml", "README.md"} <= names
    assert {f"docs/{page.name}" for page in (ROOT / "docs").glob("*.md")} <= names  # the pages README.md links to
    assert {f"deploy/k8s/overlays/replicas-{n}/kustomization.yaml" for n in (1, 2, 4, 8)} <= names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc") or ".egg-info" in n]
    assert not [n for n in names if n.startswith(("tests/", ".venv/", "results/"))]
    assert mode & stat.S_IXUSR  # scripts stay executable


def exported(tmp_path: Path) -> Path:
    """This checkout's committed files in a folder of their own."""
    folder = tmp_path / "checkout"
    folder.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "HEAD"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def test_a_checkout_ships_only_what_git_tracks(tmp_path: Path, report_pdf: Path) -> None:
    checkout = exported(tmp_path)
    git = ["git", "-C", str(checkout), "-c", "user.name=test", "-c", "user.email=test@example.invalid"]
    alone = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}  # no one's hooks or signing
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "the checkout"]):
        subprocess.run([*git, *command], check=True, env=alone)
    strays = ["src/clouddetect/lab/api-key.env", "deploy/k8s/base/local-patch.yaml"]
    for stray in strays:
        (checkout / stray).write_text("never in the zip\n")
    names = write_bundle(checkout, Submission(SERVICE_URL, None, report_pdf), tmp_path / "submission.zip")
    assert "src/clouddetect/lab/cli.py" in names and "deploy/k8s/base/deployment.yaml" in names
    assert not set(strays) & set(names)


def test_a_checkout_git_cannot_read_is_refused_rather_than_bundled_whole(tmp_path: Path, report_pdf: Path) -> None:
    checkout = exported(tmp_path)
    (checkout / ".git").write_text("gitdir: /nonexistent\n")  # a broken checkout: git cannot list its files
    with pytest.raises(BundleError, match="git cannot list its files"):
        write_bundle(checkout, Submission(SERVICE_URL, None, report_pdf), tmp_path / "submission.zip")


def test_readme_names_the_service_endpoint_and_the_video(tmp_path: Path, report_pdf: Path) -> None:
    with written(tmp_path, report_pdf, "--video-url", VIDEO_URL) as archive:
        readme = archive.read("ReadMe.txt").decode()
    assert f"Service endpoint: {SERVICE_URL}/api/object_detection\n" in readme
    assert f"Video: {VIDEO_URL}\n" in readme
    assert "src/clouddetect/loadtest/locustfile.py" in readme and "report.pdf" in readme


def test_readme_keeps_a_place_for_the_video_and_takes_the_endpoints_full_url(tmp_path: Path,
                                                                             report_pdf: Path) -> None:
    out = tmp_path / "submission.zip"
    code, output = bundle("--report-pdf", str(report_pdf), "--service-url", f"{SERVICE_URL}/api/object_detection",
                          "--out", str(out))
    assert code == 0, output
    readme = zipfile.ZipFile(out).read("ReadMe.txt").decode()
    assert f"Service endpoint: {SERVICE_URL}/api/object_detection\n" in readme
    assert "Video: (not given yet)\n" in readme


def test_a_missing_report_pdf_is_a_clear_error(tmp_path: Path) -> None:
    out = tmp_path / "submission.zip"
    code, output = bundle("--report-pdf", str(tmp_path / "report.pdf"), "--service-url", SERVICE_URL,
                          "--out", str(out))
    assert code != 0 and "report PDF" in output and "not found" in output
    assert not out.exists()


def test_a_file_that_is_not_a_pdf_or_a_url_without_host_is_refused(tmp_path: Path, report_pdf: Path) -> None:
    not_pdf = tmp_path / "report.pdf"
    not_pdf.write_text("# report\n")
    code, output = bundle("--report-pdf", str(not_pdf), "--service-url", SERVICE_URL)
    assert code != 0 and "is not a PDF" in output
    code, output = bundle("--report-pdf", str(report_pdf), "--service-url", "30500")
    assert code != 0 and "is not an http(s) URL" in output


def test_make_dist_writes_the_zip_and_says_what_is_missing(tmp_path: Path, report_pdf: Path) -> None:
    out = tmp_path / "dist.zip"
    made = subprocess.run(["make", "-s", "dist", f"REPORT_PDF={report_pdf}", f"SERVICE_URL={SERVICE_URL}",
                           f"VIDEO_URL={VIDEO_URL}", f"DIST_ZIP={out}"], cwd=ROOT, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    assert f"Video: {VIDEO_URL}" in zipfile.ZipFile(out).read("ReadMe.txt").decode()
    missing = subprocess.run(["make", "-s", "dist", f"SERVICE_URL={SERVICE_URL}", f"DIST_ZIP={out}"], cwd=ROOT,
                             capture_output=True, text=True)
    assert missing.returncode != 0 and "report PDF" in missing.stderr

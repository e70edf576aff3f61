"""The submission zip: the container's Dockerfile, the service's source, the Kubernetes YAMLs, the Locust script,
the experiment scripts, the report PDF and a ReadMe.txt naming the service's endpoint and the video.

Files come from a source checkout (found upwards from the working directory), never from an installed package:
the Dockerfile and the manifests are not part of the package. In a git checkout only the files git tracks go in,
so a local file beside them (a secret, a results folder) never ships; elsewhere caches and build output are left out.
"""

from __future__ import annotations

import subprocess
import zipfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import click

from clouddetect.verdicts import ENDPOINT

# What the zip holds from the checkout (folders end in "/"), with what each is for; ReadMe.txt lists them so.
BUNDLED = {
    "Dockerfile": "the container image: docker build -t clouddetect . (or make image)",
    ".dockerignore": "what the image's build context leaves out",
    "src/clouddetect/": "the service: api.py (routes), detector.py (YOLOv3-tiny), server/, config.py",
    "src/clouddetect/loadtest/locustfile.py": "the Locust script: one user sending the test images",
    "src/clouddetect/lab/": "the capacity lab: clouddetect lab run, lab report, lab link, lab faults",
    "deploy/k8s/": "the Kubernetes YAMLs: base (Deployment, NodePort 30500), overlays replicas-1/2/4/8",
    "deploy/cluster/": "the three-VM kubeadm cluster: scripts and step-by-step guide",
    "benchmarks/": "the benchmark scripts behind the figures in docs/",
    "scripts/docker-engine": "starts the Docker engine (make image)",
    "scripts/base-image": "provides the image's base where it cannot be pulled (make image)",
    "pyproject.toml": "the package and its dependencies",
    "Makefile": "make run, make test, make image, make dist",
    "README.md": "how to run and test it, the API in brief, a map of the code",
    "docs/": "how to use, deploy and measure everything, by topic, with the measured figures",
}
SKIPPED_DIRECTORIES = {"__pycache__"}
SKIPPED_SUFFIXES = {".pyc"}
REPORT_NAME = "report.pdf"
README_NAME = "ReadMe.txt"
PDF_MAGIC = b"%PDF-"
VIDEO_MISSING = "(not given yet)"


class BundleError(RuntimeError):
    """The submission cannot be made: no checkout, no report PDF, no valid endpoint URL."""


@dataclass(frozen=True)
class Submission:
    service_url: str
    video_url: str | None
    report_pdf: Path

    @property
    def endpoint(self) -> str:
        base = self.service_url.rstrip("/").removesuffix(ENDPOINT)
        return base + ENDPOINT


def project_root(start: Path) -> Path:
    """The checkout holding ``start``: the first folder upwards with pyproject.toml and a Dockerfile."""
    for folder in (start.resolve(), *start.resolve().parents):
        if (folder / "pyproject.toml").is_file() and (folder / "Dockerfile").is_file():
            return folder
    raise BundleError(f"no CloudDetect checkout (pyproject.toml and Dockerfile) at or above {start}")


def check(submission: Submission) -> None:
    pdf = submission.report_pdf
    if not pdf.is_file():
        raise BundleError(f"report PDF {str(pdf)!r} not found: write it first (clouddetect lab report) "
                          "and pass its path (--report-pdf, or make dist REPORT_PDF=...)")
    with pdf.open("rb") as head:
        if head.read(len(PDF_MAGIC)) != PDF_MAGIC:
            raise BundleError(f"{pdf} is not a PDF file")
    url = urlsplit(submission.service_url)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise BundleError(f"--service-url {submission.service_url!r} is not an http(s) URL with a host")


def _included(path: Path) -> bool:
    skipped_folder = any(part in SKIPPED_DIRECTORIES or part.endswith(".egg-info") for part in path.parts)
    return not skipped_folder and path.suffix not in SKIPPED_SUFFIXES


def tracked_files(root: Path) -> set[str] | None:
    """The files git tracks in ``root``, or None where ``root`` is no git checkout (an unpacked source archive)."""
    if not (root / ".git").exists():
        return None
    try:
        listed = subprocess.run(["git", "-C", str(root), "ls-files", "-z"], capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = exc.stderr.decode().strip() if isinstance(exc, subprocess.CalledProcessError) else str(exc)
        raise BundleError(f"{root} is a git checkout, but git cannot list its files ({detail}); "
                          "fix that rather than bundle files git does not track") from None
    return set(listed.decode().split("\0")) - {""}


def bundled_files(root: Path) -> list[str]:
    """The checkout's files that go into the zip, as paths relative to ``root``."""
    tracked = tracked_files(root)
    names: set[str] = set()
    for entry in BUNDLED:
        path = root / entry
        if entry.endswith("/") and path.is_dir():
            names |= {str(f.relative_to(root)) for f in path.rglob("*") if f.is_file() and _included(f)}
        elif path.is_file():
            names.add(entry)
        else:
            raise BundleError(f"{path} is missing from the checkout")
    return sorted(names if tracked is None else names & tracked)


def readme_text(submission: Submission) -> str:
    width = max(len(name) for name in (*BUNDLED, REPORT_NAME)) + 2
    contents = [f"  {REPORT_NAME:<{width}}the report: experiments, results, observations, challenges"]
    contents += [f"  {name:<{width}}{what}" for name, what in BUNDLED.items()]
    return "\n".join([
        "CloudDetect: object detection (YOLOv3-tiny on OpenCV DNN) as a web service on Kubernetes,",
        "with capacity experiments from the controller and from a remote client.",
        "",
        f"Service endpoint: {submission.endpoint}",
        '  POST JSON {"id": "<uuid>", "image": "<base64 of the image file>"};',
        '  answer {"id": "<the same>", "objects": [{"label", "accuracy", "rectangle"}, ...]}',
        f"Video: {submission.video_url or VIDEO_MISSING}",
        "",
        "Contents",
        *contents,
        "",
        "Start with README.md: make run serves the API locally, make test runs the tests.",
        "",
    ])


def write_bundle(root: Path, submission: Submission, out: Path) -> list[str]:
    """Write the zip to ``out``; returns the names it holds."""
    check(submission)
    files = bundled_files(root)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in files:
            archive.write(root / name, name)  # keeps each file's mode: the scripts stay executable
        archive.write(submission.report_pdf, REPORT_NAME)
        archive.writestr(README_NAME, readme_text(submission))
    partial.replace(out)
    return [README_NAME, REPORT_NAME, *files]


@click.command("bundle")
@click.option("--report-pdf", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The report as PDF (clouddetect lab report writes it).")
@click.option("--service-url", required=True,
              help=f"The deployed service, e.g. http://NODE_PUBLIC_IP:30500 ({ENDPOINT} is added).")
@click.option("--video-url", help="Link to the video; ReadMe.txt keeps a place for it when not given.")
@click.option("--out", "out_path", default=Path("dist/clouddetect-submission.zip"), show_default=True,
              type=click.Path(dir_okay=False, path_type=Path), help="The zip to write.")
def bundle_command(report_pdf: Path, service_url: str, video_url: str | None, out_path: Path) -> None:
    """Write the submission zip from this checkout: image, source, YAMLs, Locust and lab scripts, report, ReadMe."""
    submission = Submission(service_url, video_url, report_pdf)
    try:
        names = write_bundle(project_root(Path.cwd()), submission, out_path)
    except BundleError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{out_path}: {len(names)} files; {README_NAME} names {submission.endpoint}")

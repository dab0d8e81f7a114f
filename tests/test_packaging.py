"""Packaging: the pins are the single source of versions, and workers get every module."""

import glob
import os
import re
import subprocess
import sys
import tarfile

import pytest
from apache_beam.options.pipeline_options import (
    GoogleCloudOptions,
    PipelineOptions,
    SetupOptions,
    StandardOptions,
)

from pipeline.config import config_from_dict
from pipeline.make_dataset import build_pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pins() -> dict[str, str]:
    found = {}
    for line in open(os.path.join(ROOT, "constraints.txt")):
        match = re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)$", line.strip())
        if match:
            found[match.group(1).lower().replace("_", "-")] = match.group(2)
    return found


def test_core_stack_pins():
    versions = pins()
    assert versions["tensorflow"] == "2.16.2" and versions["tensorflow-io"] == "0.37.1"
    assert versions["apache-beam"] == "2.67.0" and versions["protobuf"].startswith("4.25.")
    assert versions["numpy"].startswith("1.")


@pytest.mark.parametrize("dockerfile, base_pattern, package", [
    ("docker/pipeline/Dockerfile", r"^FROM apache/beam_python3\.11_sdk:(\S+)$", "apache-beam"),
    ("docker/trainer/Dockerfile", r"^FROM tensorflow/tensorflow:(\S+)-gpu$", "tensorflow"),
])
def test_dockerfiles_install_from_the_same_pins(dockerfile, base_pattern, package):
    text = open(os.path.join(ROOT, dockerfile)).read()
    assert re.search(r"pip install [^\n]*-c constraints\.txt", text)
    assert "COPY constraints.txt" in text
    base = re.search(base_pattern, text, re.M)
    assert base and base.group(1) == pins()[package]


PACKAGES = sorted(name for name in os.listdir(ROOT)
                  if name != "tests" and os.path.isfile(os.path.join(ROOT, name, "__init__.py")))
"""The project's top-level packages: every directory of the repository with an __init__.py."""


@pytest.mark.parametrize("dockerfile", ["docker/pipeline/Dockerfile", "docker/trainer/Dockerfile"])
def test_dockerfiles_copy_every_package(dockerfile):
    with open(os.path.join(ROOT, dockerfile), encoding="utf-8") as handle:
        copied = set(re.findall(r"^COPY\s+(\w+)/?\s", handle.read(), flags=re.MULTILINE))
    assert set(PACKAGES) <= copied, sorted(set(PACKAGES) - copied)


def test_sdist_contains_every_module_and_the_pins(tmp_path):
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(tmp_path)], cwd=ROOT,
                   check=True, capture_output=True)
    (archive,) = glob.glob(str(tmp_path / "ctdeblur-*.tar.gz"))
    names = {name.split("/", 1)[1] for name in tarfile.open(archive).getnames() if "/" in name}
    modules = {os.path.relpath(path, ROOT) for package in PACKAGES
               for path in glob.glob(os.path.join(ROOT, package, "**", "*.py"), recursive=True)}
    assert {"ct_io", "pipeline", "model", "tfrecords_schema", "cli_shell"} <= set(PACKAGES)
    assert modules and modules <= names, sorted(modules - names)
    assert "constraints.txt" in names and "setup.py" in names


def test_dataflow_options_parse_and_the_graph_builds():
    """Dataflow options as the README gives them, plus a localhost endpoint: Beam then skips the
    checks that call Google Cloud Storage (there is no network here) but builds the same graph."""
    options = PipelineOptions([
        "--runner", "DataflowRunner", "--project", "my-project", "--region", "us-central1",
        "--temp_location", "gs://my-bucket/tmp", "--setup_file", "./setup.py",
        "--sdk_container_image", "us-docker.pkg.dev/my-project/ctdeblur/pipeline:0.1.0",
        "--dataflow_endpoint", "http://localhost:9",
    ])
    assert options.view_as(StandardOptions).runner == "DataflowRunner"
    assert options.view_as(GoogleCloudOptions).temp_location == "gs://my-bucket/tmp"
    assert options.view_as(SetupOptions).setup_file == "./setup.py"
    config = config_from_dict({})
    pipeline = build_pipeline(config, ["phantom", "dicom-dir"], "gs://my-bucket/ct", "gs://my-bucket/dataset",
                              "gs://my-bucket/phantoms", options)
    labels = {t.unique_name for t in pipeline.to_runner_api().components.transforms.values()}
    for label in ("Read_phantom", "Read_dicom-dir", "MakeDataset/ScanSlices", "MakeDataset/PlanDataset",
                  "MakeDataset/WriteShards", "MakeDataset/WriteDeadLetters/WriteDeadLetter/Write"):
        assert label in labels

"""ctdeblur: CT motion-blur training data (Apache Beam) and a WGAN-GP deblurring model.

Every requirement is pinned to the exact version in constraints.txt, the project's one list of
versions, so `pip install .` on a Dataflow worker gets the stack that was tested.
"""

import os
import re

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))

REQUIREMENTS = [
    "apache-beam[gcp]",
    "tensorflow",
    "tensorflow-io",
    "protobuf",
    "numpy",
    "scipy",
    "pydicom",
    "pylibjpeg",
    "pylibjpeg-openjpeg",
    "pylibjpeg-libjpeg",
    "SimpleITK",
    "google-crc32c",
    "PyYAML",
    "tqdm",
    "matplotlib",
    "scikit-image",
    "idc-index-data",
    "Pillow",
]
TEST_REQUIREMENTS = ["pytest", "psutil"]


def _pins() -> dict[str, str]:
    pins = {}
    with open(os.path.join(HERE, "constraints.txt"), encoding="utf-8") as handle:
        for line in handle:
            match = re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)", line.strip())
            if match:
                pins[re.sub(r"[-_.]+", "-", match.group(1)).lower()] = match.group(2)
    return pins


def _pinned(requirements: list[str]) -> list[str]:
    pins = _pins()
    pinned = []
    for requirement in requirements:
        name = re.sub(r"\[.*\]", "", requirement)
        version = pins.get(re.sub(r"[-_.]+", "-", name).lower())
        if version is None:
            raise RuntimeError(f"{name} has no exact pin in constraints.txt")
        pinned.append(f"{requirement}=={version}")
    return pinned


setup(
    name="ctdeblur",
    version="0.1.0",
    description="CT motion-blur training data with Apache Beam and a WGAN-GP deblurring model",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["ct_io", "tfrecords_schema", "cli_shell", "pipeline", "pipeline.*", "model",
                                    "model.*"]),
    package_data={"pipeline": ["presets/*.yaml"]},
    install_requires=_pinned(REQUIREMENTS),
    extras_require={"test": _pinned(TEST_REQUIREMENTS)},
    entry_points={
        "console_scripts": [
            "ctdeblur-make-dataset=pipeline.make_dataset:main",
            "ctdeblur-phantom=pipeline.phantom_cli:main",
            "ctdeblur-shard-stats=pipeline.stats.cli:main",
            "ctdeblur-train=model.train:main",
            "ctdeblur-evaluate=model.evaluate:main",
            "ctdeblur-deblur=model.deblur:main",
        ]
    },
)

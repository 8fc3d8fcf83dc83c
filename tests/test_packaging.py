"""The configs install with the package: `vae-run` works from a wheel, from any working directory."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_wheel_carries_the_configs_and_runs_from_elsewhere(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"), str(REPO)],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("vae_runner-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for config in ("config.yaml", "model/cvae.yaml", "dataset/image_folder.yaml", "hydra/job_logging/rich.yaml"):
        assert f"vae_runner/configs/{config}" in names, config
    assert not any(n.startswith("configs/") for n in names)  # no top-level package named `configs`

    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
        check=True, capture_output=True, timeout=300,
    )
    code = (
        f"import sys; sys.path.insert(0, {str(site)!r}); import vae_runner.cli as c; print('FROM', c.__file__); "
        "sys.argv = ['vae-run', 'model=cvae', 'dataset=cifar10', '--cfg', 'job']; c.main()"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"FROM {site}" in proc.stdout
    assert "conditional: true" in proc.stdout and "name: cifar10" in proc.stdout
    assert not (tmp_path / "outputs").exists()  # printing the config creates no run folder

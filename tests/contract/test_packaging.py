"""A non-editable install carries its configs: the wheel holds every file of ``prompt_tuning/configs``, and the
installed package, run from another folder, composes a run from them alone."""

import subprocess
import sys
import zipfile

import pytest

from tests.conftest import CONFIGS, REPO


@pytest.mark.slow
def test_a_wheel_installed_elsewhere_composes_runs_from_its_own_configs(tmp_path, shapes_dir):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(REPO),
                    "-w", str(wheels)], check=True, cwd=tmp_path, capture_output=True)
    (wheel,) = wheels.glob("prompt_tuning-*.whl")
    shipped = {n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("prompt_tuning/configs/")}
    expected = {f"prompt_tuning/configs/{p.relative_to(CONFIGS)}" for p in CONFIGS.rglob("*.yaml")}
    assert expected and shipped == expected
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import prompt_tuning.config.compose as c; "
            "from prompt_tuning.apps.cli import main; print(c.PACKAGE_CONFIGS); "
            "sys.exit(main(['train', 'model=tiny', 'method=promptsrc', 'dataset=' + sys.argv[2], '--print-config']))")
    out = subprocess.run([sys.executable, "-c", code, str(site), str(shapes_dir)], capture_output=True, text=True,
                         cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines()[0] == str(site / "prompt_tuning" / "configs")
    assert "class_path: prompt_tuning.methods.objectives.SelfRegulating" in out.stdout

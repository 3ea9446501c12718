"""bench/gpu.py: the GPU check's dry run runs here, without a GPU, and says that nothing was measured."""

import zipfile

import pytest


@pytest.fixture
def gpu(repo_root, monkeypatch):
    monkeypatch.syspath_prepend(str(repo_root))  # the repository root holds bench/
    monkeypatch.setenv("PYTHONPATH", str(repo_root))
    import bench.gpu as module

    return module


def _wheel(folder, name: str, tags: str = "py3-none-any"):
    """A minimal installable wheel ``name``-0.1."""
    path = folder / f"{name}-0.1-{tags}.whl"
    info = f"{name}-0.1.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}/__init__.py", "")
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    return path


def test_dry_run_checks_everything_and_measures_nothing(gpu, tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels, "pygml_probe")
    out = tmp_path / "out"
    assert gpu.main(["--dry-run", "--out", str(out), "--wheels", str(wheels)]) == 0
    text = (out / "gpu-check.md").read_text()
    assert text.startswith(gpu.DRY_HEADER)
    for part in ["wheels", *gpu.PARTS]:
        assert f"| {part} | ok |" in text, part
    assert "tests collected" in text
    for part in ("evaluator", "attention", "steps"):
        assert f"## {part} (dry run, CPU, tiny sizes)" in text
        assert (out / f"{part}.log").exists()


@pytest.mark.parametrize("name, match", [
    ("faiss_gpu-1.0-cp310-abi3-manylinux_2_28_x86_64.whl", None),
    ("faiss_gpu-1.0-cp313-abi3-manylinux_2_28_x86_64.whl", "not for CPython 3.12"),
    ("numpy-2.0-cp311-cp311-manylinux_2_17_x86_64.whl", "not for CPython 3.12"),
    ("numpy-2.0-cp312-cp312-macosx_11_0_arm64.whl", "not for x86-64 Linux"),
    ("broken.whl", "not a wheel file name"),
])
def test_wheel_names_are_checked_for_the_gpu_machines_python(gpu, tmp_path, name, match):
    (tmp_path / name).write_bytes(b"")
    if match is None:
        assert [p.name for p in gpu.check_wheels(tmp_path)] == [name]
    else:
        with pytest.raises(gpu.WheelsError, match=match):
            gpu.check_wheels(tmp_path)


def test_wheels_folder_errors_name_the_folder(gpu, tmp_path):
    with pytest.raises(gpu.WheelsError, match=f"{tmp_path / 'none'} does not exist"):
        gpu.check_wheels(tmp_path / "none")
    with pytest.raises(gpu.WheelsError, match="holds no .whl file"):
        gpu.check_wheels(tmp_path)
    for version in ("1.0", "2.0"):
        (tmp_path / f"omegaconf-{version}-py3-none-any.whl").write_bytes(b"")
    with pytest.raises(gpu.WheelsError, match="two versions of omegaconf: keep one"):
        gpu.check_wheels(tmp_path)


def test_the_gpu_run_selects_the_cuda_test_files(gpu):
    files = gpu.cuda_test_files()
    assert "tests/test_cuda.py" in files and "tests/test_neighbors.py" in files

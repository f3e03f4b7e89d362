import pytest
import tvm

from qcompile import QCompileError, get_target, list_targets
from qcompile.backends import backend_for
from qcompile.targets import TARGETS_DIR, detect_host

REQUIRED = {"host", "x86-avx512-vnni", "rpi4", "rpi5", "android-arm64", "rpi3-armv7", "cuda-sm80", "cuda-sm90"}


def test_every_required_target_is_a_file_that_makes_a_tvm_target():
    names = {spec.name for spec in list_targets()}
    assert REQUIRED <= names
    for spec in list_targets():
        assert (TARGETS_DIR / f"{spec.name}.toml").is_file()
        target = backend_for(spec).tvm_target()
        assert isinstance(target, tvm.target.Target)
        assert target.kind.name == {"cpu": "llvm", "vulkan": "webgpu"}.get(spec.kind, spec.kind)  # Vulkan runs WGSL


def test_cross_targets_name_triple_features_and_toolchain():
    rpi5 = backend_for(get_target("rpi5")).tvm_target()
    assert rpi5.attrs["mtriple"] == "aarch64-linux-gnu" and "+dotprod" in list(rpi5.attrs["mattr"])
    armv7 = get_target("rpi3-armv7")
    assert armv7.llvm["mfloat-abi"] == "hard" and armv7.toolchain["cc"] == "arm-linux-gnueabihf-g++"
    android = get_target("android-arm64")
    assert "+i8mm" in android.features() and android.toolchain["libc"] == "bionic"
    assert backend_for(get_target("cuda-sm90")).tvm_target().attrs["arch"] == "sm_90"


def test_host_features_come_from_the_cpu_flags():
    host = get_target("host")
    detected = detect_host()
    assert host.arch == detected["arch"]
    assert host.features() == detected["llvm"]["mattr"]
    flags = open("/proc/cpuinfo").read()
    assert ("+avx512vnni" in host.features()) == (" avx512_vnni" in flags)


def test_unknown_target_lists_the_known_ones():
    with pytest.raises(QCompileError) as err:
        get_target("rpi9")
    assert "unknown target 'rpi9'" in str(err.value)
    assert "rpi5" in str(err.value) and "host" in str(err.value)


def test_a_target_file_given_by_path(tmp_path):
    path = tmp_path / "board.toml"
    path.write_text((TARGETS_DIR / "rpi4.toml").read_text().replace('name = "rpi4"', 'name = "board"'))
    assert get_target(str(path)).name == "board"
    path.write_text("name = ")
    with pytest.raises(QCompileError, match="board.toml: not a valid target file"):
        get_target(str(path))

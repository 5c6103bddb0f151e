"""Build Potluck's installers with Briefcase, in one command.

    python installers/build.py                      # the installers of this computer's OS
    python installers/build.py --stage-only         # only write the Briefcase project (no internet)
    python installers/build.py --dev-setup          # make `briefcase dev`'s environment (package index)
    python installers/build.py --dev-test           # ... and run `briefcase dev --test` in it

Options: --platform auto|macOS|windows|linux, --format FMT (repeatable: dmg|pkg|zip on macOS,
msi|zip on Windows, deb|rpm|flatpak on Linux), --torch cuda|cpu, --pin REQUIREMENT (repeatable,
e.g. --pin torch==2.13.0), --pin-installed NAME (pin NAME to the version this Python has),
--no-install (with --dev-test: never install, exit 3 when the environment is not ready), --verbose.

Briefcase reads only pyproject.toml, so this driver reads briefcase.toml (the packaging settings)
and pyproject.toml (version, description, licence, dependencies, launcher), checks them, and writes
a self-contained Briefcase project into the stage folder (build/briefcase-stage by default):

    pyproject.toml       [project] from ours + [tool.briefcase] from briefcase.toml
    LICENSE              the licence files
    icons/               .icns, .ico and PNG sizes made from the one source icon
    src/potluck/         the launcher: `python -m potluck` runs [project.scripts] potluck
    src/app, src/engine  the code
    src/potluck_resources  resources/ (catalog, icons, demo model) as a package
    src/tests            tests/ plus Briefcase's test entry tests/potluck.py

Then it runs `briefcase create`, `build` and `package` there for this OS and copies the installers
to dist/: a .dmg on macOS (signed and notarised with $POTLUCK_MACOS_IDENTITY, ad hoc otherwise),
an .msi on Windows (signed with $POTLUCK_WINDOWS_IDENTITY when set), a .deb and an .rpm on Linux
(built in Docker images of the target distributions). create/build/package download Briefcase's
templates and Python support packages, so they need the internet.

`briefcase dev` needs only the package index, and only to make its environment (a virtual
environment in the stage folder's .briefcase/). --dev-setup makes it and records what it was made
from; later runs reuse it while the requirements are unchanged, so --dev-test (and
tests/test_briefcase_dev.py, inside tests/run.sh's network namespace) run without any network.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.machinery
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(Path(__file__).resolve().parent) not in sys.path:  # when imported rather than run
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from icons import IconError, write_icons

PLATFORMS = ("macOS", "windows", "linux")
HOST_PLATFORM = {"darwin": "macOS", "win32": "windows", "linux": "linux"}
FORMATS = {"macOS": ("dmg", "pkg", "zip"), "windows": ("msi", "zip"), "linux": ("deb", "rpm", "flatpak")}
DEFAULT_FORMATS = {"macOS": ("dmg",), "windows": ("msi",), "linux": ("deb", "rpm")}
# Keys of briefcase.toml that must not be there: they come from pyproject.toml [project].
FROM_PYPROJECT = {"version": "version", "description": "description", "license": "license",
                  "requires_python": "requires-python"}
# Table-valued settings Briefcase allows in an app table and in each platform table; any other
# table there would be a platform (app level) or an output format (platform level).
APP_TABLES = {"permission", "document_type", "install_option", "uninstall_option", "license"}
PLATFORM_TABLES = {
    "macOS": {"app", "Xcode", "entitlement", "info", "permission", "document_type"},
    "windows": {"app", "VisualStudio", "permission", "document_type", "install_option", "uninstall_option"},
    "linux": {"system", "flatpak", "appimage", "permission", "document_type"},
}
DRIVER_KEYS = {"stage_dir", "resources", "resources_exclude", "torch_cpu_index", "linux"}
DRIVER_LINUX_KEYS = {"deb_target", "rpm_target"}
BUNDLE_RE = re.compile(r"[a-zA-Z][a-zA-Z0-9-]*(\.[a-zA-Z][a-zA-Z0-9-]*)+")
APP_NAME_RE = re.compile(r"[a-z][a-z0-9_]*")
RESOURCES_PACKAGE = "potluck_resources"
BRIEFCASE_TESTS = ("test_installers.py",)  # run by the test entry, the tests named test_installed_*
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", ".DS_Store")
DEV_NOT_READY = 3  # exit status of --dev-test --no-install when --dev-setup has not made the environment


class ConfigError(Exception):
    """briefcase.toml or pyproject.toml is wrong; the message says where and what to do."""


class BuildError(Exception):
    """A build step failed; the message says which."""


# ---- reading and checking the settings ----

def load_config(root: Path = ROOT, briefcase_file: Path | None = None) -> dict:
    """Read and check briefcase.toml and pyproject.toml; returns their merged settings:
    {"app_name", "briefcase" (the [tool.briefcase] table), "driver", "project", "scripts", "pytest"}."""
    briefcase_file = briefcase_file or root / "briefcase.toml"
    packaging = _read_toml(briefcase_file)
    pyproject = _read_toml(root / "pyproject.toml")
    name = briefcase_file.name
    try:
        briefcase = packaging["tool"]["briefcase"]
    except (KeyError, TypeError):
        raise ConfigError(f"{name} has no [tool.briefcase] table: Potluck's packaging settings go there "
                          "(see installers/README.md).") from None
    project = _check_project(pyproject)
    _check_global(briefcase, name)
    app_name = _check_apps(briefcase, name, project, root)
    driver = _check_driver(packaging.get("tool", {}).get("potluck", {}).get("installers", {}), name, root)
    return {"app_name": app_name, "briefcase": briefcase, "driver": driver, "project": project,
            "scripts": pyproject["project"].get("scripts", {}),
            "pytest": pyproject.get("tool", {}).get("pytest", {}).get("ini_options", {})}


def _read_toml(path: Path) -> dict:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path} is missing.") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}.") from None


def _check_project(pyproject: dict) -> dict:
    project = pyproject.get("project")
    if not isinstance(project, dict) or "name" not in project:
        raise ConfigError("pyproject.toml has no [project] table with a name.")
    dynamic = set(project.get("dynamic", []))
    for key in ("version", "description", "license"):
        if key in dynamic or key not in project:
            raise ConfigError(f"pyproject.toml [project] must state `{key}` literally (not dynamic): the "
                              "installers take it from there.")
    keep = ("name", "version", "description", "license", "license-files", "requires-python", "authors", "urls",
            "dependencies")
    return {key: project[key] for key in keep if key in project}


def _check_global(briefcase: dict, name: str) -> None:
    for key, source in FROM_PYPROJECT.items():
        if key in briefcase:
            raise ConfigError(f"{name}: remove `{key}` from [tool.briefcase]; it comes from pyproject.toml "
                              f"[project] {source}, so that it is written in one place only.")
    bundle = briefcase.get("bundle")
    if not bundle:
        raise ConfigError(f"{name}: [tool.briefcase] has no `bundle`, so the app has no app id. Set it to a "
                          'reversed domain name, e.g. bundle = "org.potluck" (app id org.potluck.<app name>).')
    if not isinstance(bundle, str) or not BUNDLE_RE.fullmatch(bundle):
        raise ConfigError(f"{name}: bundle = {bundle!r} is not a reversed domain name such as \"org.potluck\" "
                          "(dot-separated parts of letters, digits and '-', each starting with a letter).")


def _check_apps(briefcase: dict, name: str, project: dict, root: Path) -> str:
    apps = briefcase.get("app")
    if not isinstance(apps, dict) or not apps:
        raise ConfigError(f"{name} defines no app: add a [tool.briefcase.app.<name>] table (for Potluck, "
                          "[tool.briefcase.app.potluck]).")
    if len(apps) != 1:
        raise ConfigError(f"{name} defines {len(apps)} apps ({', '.join(apps)}); Potluck ships exactly one.")
    (app_name, app), = apps.items()
    where = f"{name} [tool.briefcase.app.{app_name}]"
    if not APP_NAME_RE.fullmatch(app_name):
        raise ConfigError(f"{where}: the app name {app_name!r} must be lower case letters, digits and '_' "
                          "(it is the launcher's module name and the last part of the app id).")
    for key, source in FROM_PYPROJECT.items():
        if key in app:
            raise ConfigError(f"{where}: remove `{key}`; it comes from pyproject.toml [project] {source}.")
    for key in ("formal_name", "long_description", "icon", "sources"):
        if not app.get(key):
            raise ConfigError(f"{where} has no `{key}`.")
    _check_sources(app, app_name, where, root)
    _check_icon(app["icon"], where, root)
    for key, value in app.items():
        if isinstance(value, dict) and key not in APP_TABLES:
            _check_platform(key, value, where)
    return app_name


def _check_sources(app: dict, app_name: str, where: str, root: Path) -> None:
    generated = {app_name, RESOURCES_PACKAGE}
    for source in [*app["sources"], *app.get("test_sources", [])]:
        if source in generated:
            raise ConfigError(f"{where}: do not list {source!r} in sources; the driver generates it.")
        if not (root / source / "__init__.py").is_file():
            raise ConfigError(f"{where}: source {source!r} is not a package folder of the repository "
                              f"(no {source}/__init__.py).")


def _check_icon(icon: str, where: str, root: Path) -> None:
    path = root / icon
    if path.suffix != ".png" or not path.is_file():
        raise ConfigError(f"{where}: icon = {icon!r} must name the source PNG (e.g. \"resources/icons/potluck.png\"); "
                          "the driver makes every platform's icon from it.")


def _check_platform(key: str, table: dict, where: str) -> None:
    if key not in PLATFORMS:
        near = [p for p in PLATFORMS if p.lower() == key.lower()]
        hint = f" (did you mean {near[0]!r}? the spelling is exact)" if near else ""
        raise ConfigError(f"{where}: unknown platform key {key!r}{hint}. Potluck's installers are for "
                          f"{', '.join(PLATFORMS)}; other settings of the app are not tables.")
    for sub, value in table.items():
        if isinstance(value, dict) and sub not in PLATFORM_TABLES[key]:
            raise ConfigError(f"{where}.{key}: unknown table {sub!r}; a table here is one of "
                              f"{', '.join(sorted(PLATFORM_TABLES[key]))}.")


def _check_driver(driver: dict, name: str, root: Path) -> dict:
    for key in driver:
        if key not in DRIVER_KEYS:
            raise ConfigError(f"{name} [tool.potluck.installers]: unknown key {key!r}; known: "
                              f"{', '.join(sorted(DRIVER_KEYS))}.")
    for key in driver.get("linux", {}):
        if key not in DRIVER_LINUX_KEYS:
            raise ConfigError(f"{name} [tool.potluck.installers.linux]: unknown key {key!r}; known: "
                              f"{', '.join(sorted(DRIVER_LINUX_KEYS))}.")
    settings = {"stage_dir": "build/briefcase-stage", "resources": "resources", "resources_exclude": [],
                "torch_cpu_index": "https://download.pytorch.org/whl/cpu",
                **driver, "linux": {"deb_target": "ubuntu:24.04", "rpm_target": "fedora:43", **driver.get("linux", {})}}
    if not (root / settings["resources"]).is_dir():
        raise ConfigError(f"{name} [tool.potluck.installers]: resources = {settings['resources']!r} is not a folder.")
    return settings


# ---- the staged Briefcase project ----

def stage(config: dict, root: Path = ROOT, stage_dir: Path | None = None, torch: str = "cuda",
          pins: list[str] = (), dev: bool = False) -> Path:
    """Write the Briefcase project; returns its folder. Briefcase's own build/ dist/ and .briefcase/
    folders inside it are kept (so `briefcase dev` reuses its environment); everything else is new.
    dev: the project is for `briefcase dev` only (see staged_pyproject)."""
    stage_dir = Path(stage_dir or root / config["driver"]["stage_dir"])
    stage_dir.mkdir(parents=True, exist_ok=True)
    for old in ("src", "icons", "pyproject.toml"):
        _remove(stage_dir / old)
    app_name = config["app_name"]
    app = config["briefcase"]["app"][app_name]
    src = stage_dir / "src"
    for source in app["sources"]:
        shutil.copytree(root / source, src / source, ignore=IGNORE)
    for source in app.get("test_sources", []):
        shutil.copytree(root / source, src / source, ignore=IGNORE)
    _write_launcher(src / app_name, config["scripts"], app_name)
    _stage_resources(root / config["driver"]["resources"], src / RESOURCES_PACKAGE, config["driver"]["resources_exclude"])
    if "tests" in app.get("test_sources", []):
        _write_test_entry(src / "tests", app_name, config["pytest"])
    licence_files = _stage_licences(config, root, stage_dir)
    try:
        write_icons(root / app["icon"], stage_dir / "icons", name=app_name)
    except IconError as exc:
        raise ConfigError(str(exc)) from None
    pyproject = staged_pyproject(config, licence_files, torch=torch, pins=pins, dev=dev)
    (stage_dir / "pyproject.toml").write_text(_toml_text(pyproject, dev=dev), encoding="utf-8")
    return stage_dir


def staged_pyproject(config: dict, licence_files: list[str], torch: str = "cuda", pins: list[str] = (),
                     dev: bool = False) -> dict:
    """The pyproject.toml data Briefcase reads: our [project] plus the merged [tool.briefcase].

    dev=True leaves out every `system_runtime_requires` (the Linux packages the installed app
    depends on, such as Qt's xcb libraries). On Linux `briefcase dev` refuses to install the
    requirements unless all of them are installed on this computer (it checks system_requires and
    system_runtime_requires with dpkg/rpm), yet under `briefcase dev` the app runs on this computer's
    own Python with PySide6's wheel, which carries Qt, and its tests run headless (offscreen): those
    packages are what the .deb/.rpm must pull in for a desktop, not what the dev environment uses.
    system_requires (needed to build wheels) stays, and so does Briefcase's own base list."""
    import copy

    app_name = config["app_name"]
    briefcase = copy.deepcopy(config["briefcase"])
    briefcase["license-files"] = licence_files
    app = briefcase["app"][app_name]
    app["sources"] = [f"src/{app_name}", *(f"src/{s}" for s in app["sources"]), f"src/{RESOURCES_PACKAGE}"]
    if "test_sources" in app:
        app["test_sources"] = [f"src/{s}" for s in app["test_sources"]]
    app["icon"] = f"icons/{app_name}"
    project = copy.deepcopy(config["project"])
    project.pop("license-files", None)
    if torch == "cpu":
        for platform in ("linux", "windows"):
            app.setdefault(platform, {})["requirement_installer_args"] = [
                "--extra-index-url", config["driver"]["torch_cpu_index"]]
    elif torch != "cuda":
        raise ConfigError(f"--torch {torch!r}: choose cuda or cpu.")
    for pin in pins:
        _apply_pin(pin, project, app)
    if dev:
        _drop_key(app, "system_runtime_requires")
    return {"project": project, "tool": {"briefcase": briefcase}}


def _drop_key(table: dict, key: str) -> None:
    table.pop(key, None)
    for value in table.values():
        if isinstance(value, dict):
            _drop_key(value, key)


def installed_pin(name: str) -> str:
    """NAME==<the version installed in this Python>, without a local label (2.13.0+cpu -> 2.13.0)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version(name)
    except PackageNotFoundError:
        raise ConfigError(f"--pin-installed {name}: {name} is not installed in this Python ({sys.executable}); "
                          f"install it or give the version with --pin {name}==VERSION.") from None
    return f"{name}=={installed.split('+', 1)[0]}"


def _apply_pin(pin: str, project: dict, app: dict) -> None:
    name = _requirement_name(pin)
    lists = [project.get("dependencies", []), app.get("requires", [])]
    lists += [table.get("requires", []) for table in app.values() if isinstance(table, dict)]
    found = False
    for requirements in lists:
        for i, requirement in enumerate(requirements):
            if _requirement_name(requirement) == name:
                marker = requirement.partition(";")[2]
                requirements[i] = f"{pin}; {marker.strip()}" if marker and ";" not in pin else pin
                found = True
    if not found:
        raise ConfigError(f"--pin {pin}: no requirement named {name!r} to pin (see pyproject.toml "
                          "dependencies and the requires lists of briefcase.toml).")


def _requirement_name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if not match:
        raise ConfigError(f"{requirement!r} is not a requirement such as torch==2.13.0.")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def _write_launcher(package: Path, scripts: dict, app_name: str) -> None:
    target = scripts.get(app_name)
    if not target or ":" not in target:
        raise ConfigError(f"pyproject.toml [project.scripts] has no `{app_name} = \"module:function\"` entry: "
                          "the installed app runs that function.")
    module, function = target.split(":", 1)
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        f'"""The installed app\'s launcher, generated by installers/build.py from [project.scripts] {app_name}."""\n',
        encoding="utf-8")
    (package / "__main__.py").write_text(LAUNCHER.format(app_name=app_name, module=module, function=function),
                                         encoding="utf-8")


LAUNCHER = '''"""Briefcase starts the app with `python -m {app_name}`; generated by installers/build.py.

In an installed app sys.executable is the app's own launcher (Potluck.exe,
Potluck.app/Contents/MacOS/Potluck, /usr/bin/{app_name}), not a Python interpreter, so `python -m
app.cli` does not exist there. The app is told how to start itself (start at login) and its node:
$POTLUCK_APP_EXECUTABLE and $POTLUCK_NODE_COMMAND (read by app/autostart.py, app/node_process.py
and app/self_test.py). Under `briefcase dev` sys.executable is a real Python; nothing is set.
"""

import os
import shlex
import sys
from pathlib import Path


def _quote(path: str) -> str:
    if os.name == "nt":
        return f'"{{path}}"' if " " in path else path
    return shlex.quote(path)


def _tell_the_app_how_to_start_itself() -> None:
    executable = Path(sys.executable)
    if executable.name.lower().startswith("python"):
        return
    os.environ.setdefault("POTLUCK_APP_EXECUTABLE", str(executable))
    os.environ.setdefault("POTLUCK_NODE_COMMAND", _quote(str(executable)))


if __name__ == "__main__":
    _tell_the_app_how_to_start_itself()
    from {module} import {function}

    sys.exit({function}())
'''


def _stage_resources(source: Path, target: Path, exclude: list[str]) -> None:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", *exclude))
    init = target / "__init__.py"
    if not init.exists():
        init.write_text('"""Potluck\'s bundled resources (resources/ of the repository), found with '
                        'importlib.resources: see app/resources.py."""\n', encoding="utf-8")


def _write_test_entry(tests: Path, app_name: str, pytest_options: dict) -> None:
    """Briefcase's test mode runs the module tests.<app name>; it must print the exit sentinel."""
    markers = "".join(f"\n    {m}" for m in pytest_options.get("markers", []))
    (tests / "pytest.ini").write_text(f"[pytest]\nmarkers ={markers}\ntimeout = 900\n", encoding="utf-8")
    files = ", ".join(repr(name) for name in BRIEFCASE_TESTS)
    (tests / f"{app_name}.py").write_text(f'''"""Briefcase's test entry (`briefcase dev --test`), generated by installers/build.py.

Runs the tests named test_installed_* against the app as Briefcase runs it: code and resources
from the staged packages, requirements from Briefcase's own environment.
"""

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    args = [*(str(HERE / name) for name in ({files},)), "-k", "test_installed_", "-v", "-rA",
            "-p", "no:cacheprovider", "-c", str(HERE / "pytest.ini"), "--rootdir", str(HERE), *sys.argv[1:]]
    code = pytest.main(args)
    print(f">>>>>>>>>> EXIT {{code}} <<<<<<<<<<", flush=True)
    sys.exit(code)
''', encoding="utf-8")


def _stage_licences(config: dict, root: Path, stage_dir: Path) -> list[str]:
    names = config["briefcase"].get("license-files") or config["project"].get("license-files") or []
    if not names:
        raise ConfigError("briefcase.toml: set license-files = [\"LICENSE\"] in [tool.briefcase]; every installer "
                          "shows the licence.")
    for name in names:
        if not (root / name).is_file():
            raise ConfigError(f"briefcase.toml: licence file {name!r} does not exist.")
        shutil.copy2(root / name, stage_dir / Path(name).name)
    return [Path(name).name for name in names]


def _toml_text(data: dict, dev: bool = False) -> str:
    try:
        import tomli_w
    except ImportError:
        raise BuildError("tomli_w is missing: install Briefcase first (`python -m pip install briefcase==0.4.7` "
                         "brings it).") from None
    header = ("# Generated by installers/build.py from briefcase.toml and pyproject.toml: do not edit; "
              "edit those and rerun it.\n")
    if dev:
        header += ("# For `briefcase dev` only: without system_runtime_requires (see staged_pyproject in "
                   "installers/build.py).\n")
    header += "\n"
    return header + tomli_w.dumps(data, multiline_strings=True)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


# ---- running Briefcase ----

def briefcase_steps(config: dict, platform: str, formats: list[str], env: dict | None = None) -> list[tuple[list[str], str | None]]:
    """The Briefcase command lines for these installers, each with the kind of file it makes
    (None for create/build). Signing identities come from env."""
    env = os.environ if env is None else env
    steps = []
    for fmt in formats:
        if platform == "linux":
            target = config["driver"]["linux"][f"{fmt}_target"] if fmt in ("deb", "rpm") else None
            output = ["linux", "system"] if target else ["linux", "flatpak"]
            extra = ["--target", target] if target else []
            package = ["-p", fmt] if target else []
        else:
            output, extra, package = [platform, "app"], [], ["-p", fmt] + _signing(platform, env)
        steps.append((["create", *output, *extra], None))
        steps.append((["build", *output, *extra], None))
        steps.append((["package", *output, *extra, *package], fmt))
    return steps


def _signing(platform: str, env) -> list[str]:
    identity = env.get(f"POTLUCK_{platform.upper()}_IDENTITY", "").strip()
    return ["--identity", identity] if identity else ["--adhoc-sign"]


def store_notary_credentials(env=None) -> None:
    """Store the notarisation credentials where Briefcase looks for them (keychain profile
    briefcase-macOS-<team id>) when $POTLUCK_NOTARY_APPLE_ID, _TEAM_ID and _PASSWORD are set."""
    env = os.environ if env is None else env
    values = [env.get(f"POTLUCK_NOTARY_{k}", "") for k in ("APPLE_ID", "TEAM_ID", "PASSWORD")]
    if not all(values):
        return
    apple_id, team_id, password = values
    _run(["xcrun", "notarytool", "store-credentials", f"briefcase-macOS-{team_id}", "--apple-id", apple_id,
          "--team-id", team_id, "--password", password], cwd=ROOT, what="storing the notarisation credentials",
         show=False)


def check_build_host(platform: str, config: dict) -> None:
    """Refuse early what cannot work: another OS's installers, an Intel Mac, no demo model."""
    import platform as host_platform

    host = HOST_PLATFORM.get(sys.platform)
    if platform != host:
        raise BuildError(f"Installers for {platform} are built on {platform} itself (this is {host or sys.platform}); "
                         "use --stage-only to only write the Briefcase project here.")
    if platform == "macOS" and host_platform.machine() != "arm64":
        raise BuildError("The macOS installer is built on Apple Silicon (arm64): MLX and the app are arm64 only.")
    demo = ROOT / config["driver"]["resources"] / "demo-model"
    if not (demo / "config.json").is_file():
        raise BuildError(f"The demo model is missing ({demo} has no config.json): installers ship it for the "
                         "first offline try and the self-test. Build it with resources/demo-model-recipe/train.py.")


def build(config: dict, stage_dir: Path, platform: str, formats: list[str], verbose: bool = False,
          out_dir: Path = ROOT / "dist") -> list[Path]:
    if platform == "macOS" and os.environ.get("POTLUCK_MACOS_IDENTITY"):
        store_notary_credentials()
    app_name = config["app_name"]
    _remove(stage_dir / "build" / app_name)  # a clean build: nothing left over from a previous one
    _remove(stage_dir / "dist")
    for args, _ in briefcase_steps(config, platform, formats):
        _run([sys.executable, "-m", "briefcase", *args, "--no-input", *(["-v"] if verbose else [])], cwd=stage_dir,
             what=f"briefcase {' '.join(args[:3])}")
    out_dir.mkdir(parents=True, exist_ok=True)
    made = []
    for path in sorted((stage_dir / "dist").iterdir()):
        if path.is_file():
            made.append(Path(shutil.copy2(path, out_dir / path.name)))
    if not made:
        raise BuildError(f"Briefcase finished but left no installer in {stage_dir / 'dist'}.")
    return made


# ---- `briefcase dev`: its environment and its test mode ----

DEV_STAMP = "installers-dev-setup.json"  # in the environment's folder: what --dev-setup made it from


def dev_venv(config: dict, stage_dir: Path) -> Path:
    """Where `briefcase dev` keeps its virtual environment: .briefcase/<app>/venv-dev.<tag>, with
    the tag of this Python's extension modules (Briefcase's DevCommand.venv_name)."""
    tag = importlib.machinery.EXTENSION_SUFFIXES[0].split(".")[1]
    return stage_dir / ".briefcase" / config["app_name"] / f"venv-dev.{tag}"


def dev_fingerprint(stage_dir: Path) -> str:
    """What the dev environment is made from: the staged pyproject.toml (requirements, pins, installer
    arguments, test requirements) and the Python and Briefcase that make it."""
    import briefcase

    digest = hashlib.sha256()
    for part in (sys.executable, sys.version, briefcase.__version__,
                 (stage_dir / "pyproject.toml").read_text(encoding="utf-8")):
        digest.update(part.encode("utf-8") + b"\0")
    return digest.hexdigest()


def dev_ready(config: dict, stage_dir: Path) -> bool:
    """Whether --dev-setup made the environment from what is staged now. If so, puts back the app's
    metadata (src/<app>.dist-info, which Briefcase writes only when it installs, and restaging removes)."""
    venv = dev_venv(config, stage_dir)
    try:
        record = json.loads((venv / DEV_STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if record.get("fingerprint") != dev_fingerprint(stage_dir) or not (venv / "pyvenv.cfg").is_file():
        return False
    for name, text in record.get("dist_info", {}).items():
        path = stage_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return True


def record_dev_setup(config: dict, stage_dir: Path) -> None:
    """Note in the environment what it was made from, with the app metadata Briefcase wrote."""
    dist_info = {path.relative_to(stage_dir).as_posix(): path.read_text(encoding="utf-8")
                 for path in sorted((stage_dir / "src").glob("*.dist-info/*")) if path.is_file()}
    (dev_venv(config, stage_dir) / DEV_STAMP).write_text(
        json.dumps({"fingerprint": dev_fingerprint(stage_dir), "dist_info": dist_info}, indent=1), encoding="utf-8")


def dev_setup(config: dict, stage_dir: Path, verbose: bool = False) -> str:
    """Make `briefcase dev`'s environment with `briefcase dev --no-run` (it installs the requirements
    from the package index), unless the one there was made from the same requirements. Briefcase's
    output goes to logs/dev-setup.log in the stage folder; returns a line that says what happened."""
    venv = dev_venv(config, stage_dir)
    if dev_ready(config, stage_dir):
        return f"briefcase dev environment reused (requirements unchanged): {_shown(venv)}"
    (venv / DEV_STAMP).unlink(missing_ok=True)
    log = stage_dir / "logs" / "dev-setup.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"installers/build.py: making briefcase dev's environment from the package index (log: {_shown(log)})",
          flush=True)
    command = [sys.executable, "-m", "briefcase", "dev", "--no-run", "--no-input", *(["-v"] if verbose else [])]
    started = time.monotonic()
    with log.open("w", encoding="utf-8") as out:
        out.write(f"$ {' '.join(command)}\n")
        out.flush()
        code = subprocess.run(command, cwd=stage_dir, env=_dev_env(stage_dir), stdout=out, stderr=subprocess.STDOUT,
                              check=False).returncode
    if code:
        tail = "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-25:])
        raise BuildError(f"briefcase dev --no-run failed (exit status {code}); the end of {_shown(log)}:\n{tail}")
    if not (venv / "pyvenv.cfg").is_file():
        raise BuildError(f"briefcase dev --no-run finished but left no environment at {venv}: does briefcase.toml "
                         "set another env_manager? (see dev_venv in installers/build.py)")
    record_dev_setup(config, stage_dir)
    return f"briefcase dev environment made in {time.monotonic() - started:.0f} s: {_shown(venv)}"


def dev_test(stage_dir: Path, verbose: bool = False) -> None:
    """`briefcase dev --test` in the environment that dev_setup made (no -r: it installs nothing, so
    it needs no network): runs the test entry, i.e. the test_installed_* tests, on the staged code."""
    _run([sys.executable, "-m", "briefcase", "dev", "--test", "--no-input", *(["-v"] if verbose else [])],
         cwd=stage_dir, what="briefcase dev --test", env=_dev_env(stage_dir))


def _dev_env(stage_dir: Path) -> dict:
    """Briefcase makes its data folder (~/.cache/briefcase) on every start; `briefcase dev` keeps
    nothing there, so it gets one inside the stage folder. Briefcase refuses a path with a space."""
    env = dict(os.environ)
    home = stage_dir.resolve() / ".briefcase" / "home"
    if "BRIEFCASE_HOME" not in env and " " not in str(home):
        home.mkdir(parents=True, exist_ok=True)
        env["BRIEFCASE_HOME"] = str(home)
    return env


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _run(command: list[str], cwd: Path, what: str, show: bool = True, env: dict | None = None) -> None:
    if show:
        print(f"$ {' '.join(command)}", flush=True)
    try:
        subprocess.run(command, cwd=cwd, check=True, env=env)
    except FileNotFoundError:
        raise BuildError(f"{what} failed: {command[0]} is not installed.") from None
    except subprocess.CalledProcessError as exc:
        raise BuildError(f"{what} failed (exit status {exc.returncode}); its output is above. Briefcase keeps a "
                         f"log in {cwd / 'logs'}.") from None


# ---- command line ----

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python installers/build.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--platform", default="auto", choices=["auto", *PLATFORMS],
                        help="whose installers (default: this computer's OS)")
    parser.add_argument("--format", action="append", dest="formats", metavar="FMT",
                        help="installer format, repeatable: dmg|pkg|zip (macOS), msi|zip (windows), "
                             "deb|rpm|flatpak (linux); default dmg, msi, deb+rpm")
    parser.add_argument("--torch", default="cuda", choices=["cuda", "cpu"],
                        help="torch build for Linux and Windows (default cuda; cpu makes a small installer)")
    parser.add_argument("--pin", action="append", default=[], metavar="REQ",
                        help="replace a requirement of the same name, e.g. --pin torch==2.13.0")
    parser.add_argument("--pin-installed", action="append", default=[], metavar="NAME",
                        help="pin NAME to the version installed in this Python (without a local label such as "
                             "+cpu), e.g. --pin-installed torch")
    parser.add_argument("--config", type=Path, default=None, help="packaging settings (default: briefcase.toml)")
    parser.add_argument("--stage-dir", type=Path, default=None, help="where to write the Briefcase project")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--stage-only", action="store_true", help="write the Briefcase project and stop")
    mode.add_argument("--dev-setup", action="store_true",
                      help="then make `briefcase dev`'s environment (package index), or reuse it if its "
                           "requirements are unchanged")
    mode.add_argument("--dev-test", action="store_true",
                      help="as --dev-setup, then run `briefcase dev --test` in that environment")
    parser.add_argument("--no-install", action="store_true",
                        help=f"with --dev-test: install nothing (no network); exit {DEV_NOT_READY} when "
                             "--dev-setup has not made the environment for these requirements")
    parser.add_argument("--verbose", action="store_true", help="Briefcase's verbose output")
    args = parser.parse_args(argv)
    if args.no_install and not args.dev_test:
        parser.error("--no-install goes with --dev-test.")
    args.platform = HOST_PLATFORM.get(sys.platform, "linux") if args.platform == "auto" else args.platform
    args.formats = args.formats or list(DEFAULT_FORMATS[args.platform])
    for fmt in args.formats:
        if fmt not in FORMATS[args.platform]:
            parser.error(f"--format {fmt} is not a {args.platform} installer format; choose from "
                         f"{', '.join(FORMATS[args.platform])}.")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    dev = args.dev_setup or args.dev_test
    try:
        config = load_config(ROOT, args.config)
        if not (args.stage_only or dev):
            check_build_host(args.platform, config)
        pins = [*args.pin, *(installed_pin(name) for name in args.pin_installed)]
        stage_dir = stage(config, ROOT, args.stage_dir, torch=args.torch, pins=pins, dev=dev)
        if not dev:
            print(f"Staged the Briefcase project in {_shown(stage_dir)}", flush=True)
        if args.stage_only:
            return 0
        if dev:
            if not args.no_install:
                print(f"installers/build.py: {dev_setup(config, stage_dir, args.verbose)}", flush=True)
            elif not dev_ready(config, stage_dir):
                print("installers/build.py: briefcase dev's environment is missing or was made from other "
                      "requirements. Make it with `python installers/build.py --dev-setup` and the same --torch, "
                      "--pin and --pin-installed options (it needs the package index).", file=sys.stderr)
                return DEV_NOT_READY
            if args.dev_test:
                dev_test(stage_dir, args.verbose)
            return 0
        made = build(config, stage_dir, args.platform, args.formats, args.verbose)
    except (ConfigError, BuildError) as exc:
        print(f"installers/build.py: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    print("Installers:\n" + "\n".join(f"  {path}" for path in made))
    return 0


if __name__ == "__main__":
    sys.exit(main())

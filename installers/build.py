"""Build Potluck's installers with Briefcase, in one command.

    python installers/build.py                      # the installers of this computer's OS
    python installers/build.py --stage-only         # only write the Briefcase project (no internet)
    python installers/build.py --dev-test           # run `briefcase dev --test` on the staged project

Options: --platform auto|macOS|windows|linux, --format FMT (repeatable: dmg|pkg|zip on macOS,
msi|zip on Windows, deb|rpm|flatpak on Linux), --torch cuda|cpu, --pin REQUIREMENT (repeatable,
e.g. --pin torch==2.13.0), --verbose.

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
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
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
BRIEFCASE_TESTS = ("test_installers.py",)  # run by the test entry, keyword "installed"
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", ".DS_Store")


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
          pins: list[str] = ()) -> Path:
    """Write the Briefcase project; returns its folder. Briefcase's own build/ dist/ and .briefcase/
    folders inside it are kept (so `briefcase dev` reuses its environment); everything else is new."""
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
    pyproject = staged_pyproject(config, licence_files, torch=torch, pins=pins)
    (stage_dir / "pyproject.toml").write_text(_toml_text(pyproject), encoding="utf-8")
    return stage_dir


def staged_pyproject(config: dict, licence_files: list[str], torch: str = "cuda", pins: list[str] = ()) -> dict:
    """The pyproject.toml data Briefcase reads: our [project] plus the merged [tool.briefcase]."""
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
    return {"project": project, "tool": {"briefcase": briefcase}}


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
    args = [*(str(HERE / name) for name in ({files},)), "-k", "installed", "-v", "-rA",
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


def _toml_text(data: dict) -> str:
    try:
        import tomli_w
    except ImportError:
        raise BuildError("tomli_w is missing: install Briefcase first (`python -m pip install briefcase==0.4.7` "
                         "brings it).") from None
    header = ("# Generated by installers/build.py from briefcase.toml and pyproject.toml: do not edit; "
              "edit those and rerun it.\n\n")
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


def dev_test(stage_dir: Path, verbose: bool = False) -> None:
    """`briefcase dev --test`: install the requirements into Briefcase's dev environment (kept in
    the stage folder's .briefcase/ between runs; -r refreshes it) and run the test entry."""
    _run([sys.executable, "-m", "briefcase", "dev", "--test", "-r", "--no-input", *(["-v"] if verbose else [])],
         cwd=stage_dir, what="briefcase dev --test")


def _run(command: list[str], cwd: Path, what: str, show: bool = True) -> None:
    if show:
        print(f"$ {' '.join(command)}", flush=True)
    try:
        subprocess.run(command, cwd=cwd, check=True)
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
    parser.add_argument("--config", type=Path, default=None, help="packaging settings (default: briefcase.toml)")
    parser.add_argument("--stage-dir", type=Path, default=None, help="where to write the Briefcase project")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--stage-only", action="store_true", help="write the Briefcase project and stop")
    mode.add_argument("--dev-test", action="store_true", help="then run `briefcase dev --test` in it")
    parser.add_argument("--verbose", action="store_true", help="Briefcase's verbose output")
    args = parser.parse_args(argv)
    args.platform = HOST_PLATFORM.get(sys.platform, "linux") if args.platform == "auto" else args.platform
    args.formats = args.formats or list(DEFAULT_FORMATS[args.platform])
    for fmt in args.formats:
        if fmt not in FORMATS[args.platform]:
            parser.error(f"--format {fmt} is not a {args.platform} installer format; choose from "
                         f"{', '.join(FORMATS[args.platform])}.")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_config(ROOT, args.config)
        if not (args.stage_only or args.dev_test):
            check_build_host(args.platform, config)
        stage_dir = stage(config, ROOT, args.stage_dir, torch=args.torch, pins=args.pin)
        print(f"Staged the Briefcase project in {stage_dir}", flush=True)
        if args.stage_only:
            return 0
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

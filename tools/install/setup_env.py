#!/usr/bin/env python3
"""Set up the project's environment: `make install` runs this.

Steps, each skipped when its work is already done (a second run only probes):
  1. environment   create `.venv` (or use --python, an existing environment's interpreter)
  2. torch         torch 2.14.1 + torchvision 0.29.1 (the pair verified with detectron2 v0.6);
                   with --python, the interpreter's own torch if it works and is at least
                   MIN_TORCH (a GPU image's CUDA build is kept, never replaced)
  3. requirements  requirements.txt (+ requirements-test.txt with --with-tests)
  4. detectron2    leave a compiled detectron2 alone; otherwise install the fallback build
                   (tools/install/detectron2_fallback.py)
  5. project       `pip install -e .` of this repository (packages pretrain and transfer)
then print the environment report (tools/collect_env.py).

Offline (the lent GPU machine): `--find-links DIR --no-index` installs from a local folder of
wheels and detectron2's sdist only (tools/device/pack.py makes one).

Standard library only. pip's own output goes to `<env>/setup.log`; a failure prints its tail,
names the step and says how to fix it.
"""

import argparse
import json
import subprocess
import sys
import time
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# run as a script: the repository on the path for the sibling module and the project's process
# runner (ssl2det/process.py, standard library only): nothing is installed yet
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from ssl2det.process import log_tail, run_logged  # noqa: E402
from tools.install import detectron2_fallback  # noqa: E402
TORCH_PINS = ("torch==2.14.1", "torchvision==0.29.1")
#: The oldest torch an existing interpreter may bring (--python): the project is tested on 2.14
#: and on the GPU image's 2.11 (docs/performance.md#gpu-runs).
MIN_TORCH = (2, 4)


class StepFailed(RuntimeError):
    def __init__(self, step, message):
        super().__init__(f"step '{step}' failed: {message}")


def say(step, message):
    print(f"[setup] {step:<13} {message}", flush=True)


class Environment:
    """The Python environment being set up, with a log for the output of pip and friends."""

    def __init__(self, python: Path, log_path: Path, index_args=()):
        self.python = str(python)
        self.log_path = log_path
        self.index_args = list(index_args)  # --find-links DIR / --no-index, for every pip call
        with open(log_path, "a") as log:
            log.write(f"\n==== setup_env.py {time.strftime('%Y-%m-%d %H:%M:%S')} ====\n")

    def run(self, step, args, fix):
        """Run `python ARGS`, output to the log; on failure raise with the log's tail and `fix`."""
        code = run_logged([self.python, *args], self.log_path)
        if code != 0:
            tail = log_tail(self.log_path, 25).splitlines()
            raise StepFailed(step, f"`{' '.join(args[:4])} ...` exited with {code}.\n"
                             + "\n".join("    | " + line for line in tail)
                             + f"\n  Full log: {self.log_path}\n  Fix: {fix}")

    def pip_install(self, step, args, fix):
        self.run(step, ["-m", "pip", "install", "--disable-pip-version-check", *self.index_args,
                        *args], fix)

    def probe(self, requirement_files):
        args = [str(REPO / "tools/install/probe.py"), *map(str, requirement_files)]
        proc = subprocess.run([self.python, *args], capture_output=True, text=True)
        if proc.returncode != 0:
            raise StepFailed("probe", f"{self.python} could not run the probe:\n{proc.stderr}")
        return json.loads(proc.stdout)


def ensure_venv(path: Path) -> Path:
    python = path / "bin" / "python"
    if python.exists():
        say("environment", f"{path} exists")
        return python
    t = time.time()
    venv.EnvBuilder(with_pip=True).create(path)
    say("environment", f"created {path} ({time.time() - t:.0f} s)")
    return python


def _release(version: str) -> tuple:
    return tuple(int(x) for x in version.split("+")[0].split(".")[:2])


def ensure_torch(env, state, managed):
    torch = state["torch"]
    pinned = {p.split("==")[0]: p.split("==")[1] for p in TORCH_PINS}
    versions_ok = torch["ok"] and all(
        torch[name].split("+")[0] == version for name, version in pinned.items())
    if torch["ok"] and not managed and _release(torch["torch"]) < MIN_TORCH:
        raise StepFailed("torch", f"{env.python} has torch {torch['torch']}; this project needs "
                         f"at least {'.'.join(map(str, MIN_TORCH))}.\n  Fix: upgrade torch and "
                         "torchvision in that environment, or leave out --python to get a venv "
                         f"with {' '.join(TORCH_PINS)}")
    if torch["ok"] and (versions_ok or not managed):
        say("torch", f"torch {torch['torch']} / torchvision {torch['torchvision']}: ok")
        return False
    reason = torch.get("error") or f"have torch {torch['torch']}, want {pinned['torch']}"
    say("torch", f"installing {' '.join(TORCH_PINS)} ({reason}); about a minute...")
    t = time.time()
    env.pip_install("torch", list(TORCH_PINS),
                    "check that PyPI (or the machine's wheel store) is reachable and the disk has "
                    "6 GB free; then run `make install` again. Offline, use --python with an "
                    "interpreter that has torch")
    say("torch", f"installed ({time.time() - t:.0f} s)")
    return True


def unsatisfied_besides_torch(state):
    """The unsatisfied requirement lines, without torch's pins (ensure_torch's business) and
    without the "(have X)" notes the probe adds."""
    return [r.split(" (have ")[0] for r in state["unsatisfied"]
            if not r.startswith(("torch==", "torchvision=="))]


def ensure_requirements(env, state, files):
    unsatisfied = unsatisfied_besides_torch(state)
    if not unsatisfied:
        say("requirements", f"{' + '.join(f.name for f in files)}: all satisfied")
        return False
    say("requirements", f"installing {len(unsatisfied)}: {', '.join(unsatisfied)}")
    t = time.time()
    # only the missing lines: the files' torch pins would replace a kept torch
    env.pip_install("requirements", unsatisfied,
                    "read the pip error above; a version conflict means requirements*.txt needs "
                    "a new pin; offline, the --find-links folder lacks a wheel")
    say("requirements", f"installed ({time.time() - t:.0f} s)")
    return True


def ensure_detectron2(env, state, cache_dir, find_links=None):
    d2 = state["detectron2"]
    site = Path(state["site_packages"])
    if d2["state"] == "compiled":
        say("detectron2", f"compiled detectron2 {d2['version']} found at {d2['path']}: "
            "leaving it alone")
        return False
    if d2["state"] == "fallback" and d2.get("patch_revision") == detectron2_fallback.PATCH_REVISION:
        say("detectron2", f"fallback build {d2['version']} (patch revision "
            f"{d2['patch_revision']}): ok")
        return False
    if d2["state"] != "missing" and Path(d2["path"]).parent != site:
        raise StepFailed("detectron2", f"a detectron2 without a working compiled extension is "
                         f"imported from {d2['path']}, outside this environment's site-packages "
                         f"({site}), so a fallback installed there would stay hidden behind it.\n"
                         "  Fix: remove that folder from PYTHONPATH (or build it), then run "
                         "`make install` again.")
    what = {"missing": "no detectron2 found",
            "broken": f"detectron2 has no working compiled extension ({d2.get('error')})",
            "fallback": f"fallback build has patch revision {d2.get('patch_revision')}, "
                        f"want {detectron2_fallback.PATCH_REVISION}"}[d2["state"]]
    say("detectron2", f"{what}: installing the fallback build (detectron2 v0.6 from "
        f"{detectron2_fallback.SDIST_NAME}, no compiled extension)")
    try:
        info = detectron2_fallback.install(env.python, site, cache_dir, env.log_path,
                                           search=find_links)
    except detectron2_fallback.FallbackError as e:
        raise StepFailed("detectron2", str(e)) from None
    for patch in info["patches"]:
        say("detectron2", f"  patched {patch['edits']:>2}x: {patch['why']}")
    say("detectron2", f"installed into {site}")
    return True


def ensure_project(env, state):
    project = state["project"]
    if project["installed"] and project["editable"] and project["url"] == REPO.as_uri():
        say("project", f"ssl2det installed in editable mode from {REPO}: ok")
        return False
    say("project", f"installing ssl2det from {REPO} in editable mode")
    env.pip_install("project", ["--no-deps", "--no-build-isolation", "-e", str(REPO)],
                    "check setup.py; `pip install -e .` must work inside the environment")
    return True


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--venv", type=Path, default=REPO / ".venv",
                        help="virtual environment to create or update (default: .venv)")
    parser.add_argument("--python", type=Path,
                        help="use this existing environment's interpreter instead of a venv "
                             "(its working torch is kept, whatever the version)")
    parser.add_argument("--state-dir", type=Path,
                        help="where setup.log and the download cache go (default: the venv, or "
                             ".setup/ with --python)")
    parser.add_argument("--with-tests", action="store_true",
                        help="also install requirements-test.txt (pytest, lightly)")
    parser.add_argument("--find-links", type=Path, metavar="DIR",
                        help="also look for wheels and detectron2's sdist in DIR (searched "
                             "recursively for the sdist)")
    parser.add_argument("--no-index", action="store_true",
                        help="never use a package index: install from --find-links only "
                             "(offline machines)")
    args = parser.parse_args(argv)
    if args.no_index and not args.find_links:
        parser.error("--no-index needs --find-links DIR (where the wheels are)")
    index_args = ((["--find-links", str(args.find_links)] if args.find_links else [])
                  + (["--no-index"] if args.no_index else []))

    start = time.time()
    managed = args.python is None
    python = ensure_venv(args.venv) if managed else args.python
    env_dir = args.state_dir or (args.venv if managed else REPO / ".setup")
    env_dir.mkdir(parents=True, exist_ok=True)
    env = Environment(python, env_dir / "setup.log", index_args)
    files = [REPO / "requirements.txt"] + ([REPO / "requirements-test.txt"] if args.with_tests
                                           else [])
    try:
        state = env.probe(files)
        changed = ensure_torch(env, state, managed)
        if changed:
            state = env.probe(files)
        changed |= ensure_requirements(env, state, files)
        changed |= ensure_detectron2(env, state, env_dir / "cache", args.find_links)
        changed |= ensure_project(env, state)
        if changed:  # check that what was installed works together
            state = env.probe(files)
            problems = [f"{name}: {state[name]}" for name in ("torch",)
                        if not state[name]["ok"]]
            if state["detectron2"]["state"] not in ("compiled", "fallback"):
                problems.append(f"detectron2: {state['detectron2']}")
            if not managed and state["torch"]["ok"]:  # a kept torch: its pins do not apply
                unsatisfied = unsatisfied_besides_torch(state)
            else:
                unsatisfied = state["unsatisfied"]
            if unsatisfied:
                problems.append(f"unsatisfied: {unsatisfied}")
            if problems:
                raise StepFailed("verify", "after installing, the environment is still not "
                                 "right:\n  " + "\n  ".join(problems) + f"\n  Fix: see "
                                 f"{env.log_path}, then run `make install` again")
    except StepFailed as e:
        print(f"[setup] FAILED: {e}", file=sys.stderr)
        return 1
    say("done", f"{'updated' if changed else 'nothing to do'} in {time.time() - start:.0f} s; "
        f"environment: {python}")
    subprocess.run([str(python), str(REPO / "tools/collect_env.py")], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())

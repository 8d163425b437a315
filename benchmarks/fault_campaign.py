"""Fault campaign: SIGKILL `dvc repro` of the default pipeline inside seeded stages, re-run it to
completion, and compare every output with an uninterrupted run.

In a throwaway copy of the repository (a clone of HEAD, or with --worktree the working tree as
it is) one uninterrupted `dvc repro` from scratch is the reference; it gives the stage order and
each stage's duration (from dvc's `Running stage` lines). The stages are shuffled once (seeded)
and dealt to the rounds, --kills to a round, so rounds kill different stages and enough rounds
kill every stage. Each round starts from scratch again (dvc.lock, every output it lists and
DVC's cache, with the run-cache, removed) and runs `dvc repro` in its own process group; for each
of its stages, in pipeline order, it waits for that stage to start and SIGKILLs the whole group
at a seeded fraction of the stage's reference duration, then starts `dvc repro` again. Kills are
placed in stages rather than at moments of the whole run so a slower or faster machine than the
reference's cannot push them past the end of the round. One kill per round (seeded) lands inside
a write instead: that restart runs with NS_FAULT_KILL_IN_WRITE=<the write target of its stage>,
so the stage kills itself with its temporary file / folder whole and not yet renamed
(noisystudent/io.py). After every kill: which stage was running, no process left behind,
dvc.lock still YAML, every output file present reads back whole (temporaries of the killed
writer aside). The round then ends with a plain `dvc repro` that must complete, `dvc status`
that must be clean, no temporary left, and outputs identical to the reference: the md5 of every
`outs` entry of dvc.lock (DVC hashes each, `cache: false` ones too) and the bytes of
metrics/**/*.json and models/*.pt.

Exit code 1 when any output differs, any restart fails, any output is torn or any temporary
is left; the table and the totals go to benchmarks/results/fault_campaign.{md,json}.

    .venv/bin/python benchmarks/fault_campaign.py --rounds 2 --kills 15 --seed 0
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from fnmatch import fnmatch
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
OUTPUT_DIRS = ("data", "models", "metrics", "docs")
TEMPORARY = (".*.tmp", ".*.old")  # noisystudent/io.py: .<name>.<pid>.<random>.tmp (a folder moved aside: .old)
# NS_FAULT_KILL_IN_WRITE substring -> the stages (name prefixes) whose writes it matches
IN_WRITE = {
    "data/prepared": ("prepare",),
    "models/": ("train_teacher", "train_baseline", "train_student@"),  # final models and resume checkpoints
    "/labels/": ("pseudo_label@",),
    "selected.parquet": ("select@",),
    "gallery": ("gallery@",),
    "metrics/eval/": ("evaluate@",),
    "data/robustness": ("corrupt",),
    "metrics/robustness/": ("robustness_teacher", "robustness@"),
    "metrics/summary": ("summary",),
    "docs/report": ("report",),
}
RUNNING = re.compile(r"Running stage '([^']+)'")


def say(msg: str = "") -> None:
    print(msg, flush=True)


@dataclass
class Kill:
    round: int
    n: int
    target: str  # the stage drawn for this kill
    fraction: float  # into the target's reference duration (an in-write kill: where its write fell)
    at_s: float  # from the round's start
    stage: str  # the stage dvc was running (or where dvc was)
    in_write: str = ""  # the NS_FAULT_KILL_IN_WRITE substring, for a kill inside a write
    left: list[str] = field(default_factory=list)  # temporaries beside the outputs just after the kill
    torn: list[str] = field(default_factory=list)
    read: int = 0  # output files read back after the kill
    survivors: list[str] = field(default_factory=list)
    restart_ok: bool | None = None  # did the next `dvc repro` go on without an error of its own
    note: str = ""


@dataclass
class Round:
    n: int
    kills: list[Kill] = field(default_factory=list)
    completed: bool = False
    seconds: float = 0.0
    mismatches: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------- the repository
def make_repo(workdir: Path, worktree: bool) -> Path:
    repo = workdir / "repo"
    if not worktree:
        subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
        return repo
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for f in files:
        if f and (ROOT / f).is_file():
            (repo / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, repo / f)
    git = ["git", "-c", "user.email=campaign@example.com", "-c", "user.name=campaign"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "working tree"]):
        subprocess.run([*git, *args], cwd=repo, check=True, capture_output=True)
    return repo


def environment(workdir: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "NS_FAULT_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # `python` in dvc.yaml: this venv
    env.update(DVC_NO_ANALYTICS="1", PYTHONUNBUFFERED="1", MLFLOW_TRACKING_URI=f"sqlite:///{workdir / 'mlflow.db'}")
    return env


def lock_outs(repo: Path) -> dict[str, str]:
    """path -> md5 of every `outs` entry of dvc.lock."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text()) or {}
    return {o["path"]: o.get("md5") or o.get("hash", "") for st in lock.get("stages", {}).values() for o in st.get("outs", [])}


def locked_stages(repo: Path) -> set[str]:
    try:
        return set((yaml.safe_load((repo / "dvc.lock").read_text()) or {}).get("stages", {}))
    except FileNotFoundError:
        return set()


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def from_scratch(repo: Path, outs: set[str]) -> None:
    """No dvc.lock, none of its outputs, no resume checkpoint, an empty DVC cache (the run-cache
    would otherwise restore a stage's outputs instead of running it)."""
    if (repo / "dvc.lock").exists():
        outs = outs | set(lock_outs(repo))
    for p in [*(repo / o for o in outs), repo / "dvc.lock", repo / "models/.resume", repo / ".dvc/cache"]:
        remove(p)
    for t in walk(repo)[0]:
        remove(t)


# ---------------------------------------------------------------------------- checks
def is_temporary(name: str) -> bool:
    return any(fnmatch(name, p) for p in TEMPORARY)


def walk(repo: Path) -> tuple[list[Path], list[Path]]:
    """(temporaries, other files) under the output folders, hidden ones included; a temporary
    folder is listed, not entered."""
    temps, files = [], []
    for top in OUTPUT_DIRS:
        for folder, dirs, names in os.walk(repo / top):
            temps += [Path(folder) / d for d in dirs if is_temporary(d)]
            dirs[:] = [d for d in dirs if not is_temporary(d)]
            for name in names:
                (temps if is_temporary(name) else files).append(Path(folder) / name)
    return temps, files


def torn(repo: Path) -> tuple[list[str], int]:
    """Output files that do not read back whole; how many files were read."""
    import numpy as np
    import pandas as pd
    import torch
    from PIL import Image

    readers = {".parquet": pd.read_parquet, ".json": lambda f: json.loads(f.read_text()), ".csv": pd.read_csv,
               ".npy": np.load, ".png": lambda f: Image.open(f).load(), ".yaml": lambda f: yaml.safe_load(f.read_text()),
               ".pt": lambda f: torch.load(f, map_location="cpu", weights_only=True)}
    bad, n = [], 0
    for f in walk(repo)[1]:
        if f.suffix in readers:
            n += 1
            try:
                readers[f.suffix](f)
            except Exception as e:  # noqa: BLE001 (any failure to read is the finding)
                bad.append(f"{f.relative_to(repo)}: {type(e).__name__}: {str(e)[:120]}")
    try:
        yaml.safe_load((repo / "dvc.lock").read_text())
    except FileNotFoundError:
        pass
    except Exception as e:  # noqa: BLE001
        bad.append(f"dvc.lock: {type(e).__name__}: {str(e)[:120]}")
    return bad, n


def survivors(repo: Path) -> list[str]:
    """Processes still working in the repository (one that left the process group would)."""
    found = []
    for _ in range(20):
        found = []
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit() and int(proc.name) != os.getpid():
                try:
                    if os.readlink(proc / "cwd").startswith(str(repo)):
                        cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                        found.append(f"{proc.name}: {cmd[:120]}")
                except OSError:
                    continue
        if not found:
            return []
        time.sleep(0.1)
    return found


def digest(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def compared_files(repo: Path) -> dict[str, str]:
    """metrics/**/*.json and models/*.pt -> md5 of their bytes."""
    return {str(f.relative_to(repo)): digest(f) for f in sorted([*repo.glob("metrics/**/*.json"), *repo.glob("models/*.pt")])}


# ---------------------------------------------------------------------------- running dvc
class Repro:
    """One `dvc repro` in its own process group, its output in a log file."""

    def __init__(self, repo: Path, env: dict, log: Path, extra: dict | None = None):
        self.log = log
        self.out = open(log, "w")
        self.p = subprocess.Popen([sys.executable, "-m", "dvc", "repro"], cwd=repo, env={**env, **(extra or {})},
                                  stdout=self.out, stderr=subprocess.STDOUT, start_new_session=True)
        self.killed = False

    def wait_for_stage(self, stage: str, delay: float, timeout: float) -> bool:
        """SIGKILL the group `delay` seconds after `stage` starts; False if dvc ended before then."""
        deadline = time.monotonic() + timeout
        while self.p.poll() is None and f"Running stage '{stage}'" not in self.text():
            if time.monotonic() > deadline:
                self.wait_until(0)
                raise TimeoutError(f"stage {stage} not started after {timeout:.0f} s (killed; log {self.log})")
            time.sleep(0.05)
        return self.wait_until(time.monotonic() + delay)

    def wait_until(self, deadline: float) -> bool:
        """SIGKILL the group at `deadline` (monotonic) unless it ended first; True if killed."""
        while self.p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGKILL)
            self.killed = True
        self.p.wait()
        self.out.close()
        return self.killed

    def wait(self, timeout: float) -> int:
        if self.wait_until(time.monotonic() + timeout):
            raise TimeoutError(f"dvc repro still running after {timeout:.0f} s (killed; log {self.log})")
        return self.p.returncode

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def where(self) -> str:
        """The stage running at the end of the log, or where dvc was."""
        text = self.text()
        stages = RUNNING.findall(text)
        if not stages:
            return "(dvc start: no stage yet)"
        tail = text[text.rfind(f"Running stage '{stages[-1]}'"):]
        return f"{stages[-1]} (done, dvc saving)" if "lock file 'dvc.lock'" in tail else stages[-1]

    def errors(self) -> list[str]:
        return [line for line in self.text().splitlines() if line.startswith("ERROR") or "Traceback" in line]


STALE = re.compile(r"with \(Pid (\d+)\), in RWLock-file '([^']+)' had been killed\. Auto removed it")


def lock_findings(text: str) -> list[str]:
    """What dvc said about the locks a killed `dvc repro` left: it removes a dead process's
    rwlock entries itself, with a warning per entry (summed up here in one line); anything else
    about a lock (one it cannot take fails the run) is quoted."""
    stale = STALE.findall(text)
    found = [f"dvc auto-removed {len(stale)} stale rwlock entries of killed dvc pid(s) {', '.join(sorted({p for p, _ in stale}))} "
             f"({', '.join(sorted({f for _, f in stale}))})"] if stale else []
    return found + [line.strip()[:200] for line in text.splitlines() if not STALE.search(line) and (
        "RWLock" in line or "Unable to acquire lock" in line or ("ERROR" in line and "lock" in line.lower()))]


def restart_ok(r: Repro, in_write_landed: bool) -> bool:
    """The run went on without an error of its own: it was killed by us while working, killed
    itself inside the chosen write (dvc then reports that stage's failure), or completed."""
    if r.killed or r.p.returncode == 0:
        return not r.errors()
    return in_write_landed and not [e for e in r.errors() if "failed to reproduce" not in e]


# ---------------------------------------------------------------------------- the campaign
def reference(repo: Path, env: dict, logs: Path, ref: Path, outs: set[str]) -> tuple[float, list[str]]:
    from_scratch(repo, outs)
    say("reference: one uninterrupted `dvc repro` from scratch ...")
    t0 = time.monotonic()
    r = Repro(repo, env, logs / "reference.log")
    starts: dict[str, float] = {}  # stage -> when its `Running stage` line appeared
    while r.p.poll() is None:
        for stage in RUNNING.findall(r.text()):
            starts.setdefault(stage, time.monotonic() - t0)
        if time.monotonic() - t0 > 4 * 3600:
            r.wait_until(0)
            sys.exit(f"the reference `dvc repro` ran over 4 hours: see {r.log}")
        time.sleep(0.05)
    r.wait_until(0)
    if r.p.returncode != 0:
        sys.exit(f"the reference `dvc repro` failed: see {r.log}")
    seconds = time.monotonic() - t0
    order = RUNNING.findall(r.text())
    ends = [starts[s] for s in order[1:]] + [seconds]
    durations = {s: max(e - starts[s], 0.1) for s, e in zip(order, ends)}
    ref.mkdir(parents=True, exist_ok=True)
    shutil.copy2(repo / "dvc.lock", ref / "dvc.lock")
    (ref / "files.json").write_text(json.dumps(compared_files(repo), indent=1))
    say(f"reference: {seconds:.0f} s, {len(order)} stages: " + ", ".join(f"{s} {durations[s]:.0f} s" for s in order))
    return seconds, order, durations


def deal(seed: int, order: list[str], rounds: int, kills: int) -> list[list[str]]:
    """The stages shuffled once and dealt to the rounds, `kills` each (again from the top when
    there are more kills than stages); each round's in pipeline order."""
    shuffled = random.Random(f"{seed}:deal").sample(order, len(order))
    dealt = [shuffled[(n * kills + i) % len(order)] for n in range(rounds) for i in range(kills)]
    return [sorted(set(dealt[n * kills:(n + 1) * kills]), key=order.index) for n in range(rounds)]


def write_target(stage: str) -> str | None:
    """The NS_FAULT_KILL_IN_WRITE substring that matches a write of this stage."""
    return next((sub for sub, prefixes in IN_WRITE.items() if stage.startswith(prefixes)), None)


def one_round(n: int, args, repo: Path, env: dict, logs: Path, ref: Path, durations: dict[str, float], targets: list[str],
              outs: set[str]) -> Round:
    rng = random.Random(f"{args.seed}:{n}")
    fractions = [rng.uniform(0.05, 0.95) for _ in targets]
    writers = [i for i, s in enumerate(targets) if write_target(s)]
    in_write_at = rng.choice(writers) if args.in_write and writers else -1
    rnd = Round(n)
    from_scratch(repo, outs)
    say(f"\nround {n}: kills in " + ", ".join(
        f"{s} ({'inside a write' if i == in_write_at else f'{f:.0%} in'})" for i, (s, f) in enumerate(zip(targets, fractions))))
    t0 = time.monotonic()
    previous: Kill | None = None
    for i, (stage, fraction) in enumerate(zip(targets, fractions)):
        target = write_target(stage) if i == in_write_at else None
        log = logs / f"r{n}_k{i + 1}.log"
        r = Repro(repo, env, log, {"NS_FAULT_KILL_IN_WRITE": target} if target else None)
        try:
            if target:
                code = r.wait(timeout=3 * sum(durations.values()) + 600)
                landed = code != 0 and "failed to reproduce" in r.text()
            else:
                landed = r.wait_for_stage(stage, fraction * durations[stage], timeout=3 * sum(durations.values()) + 600)
        except TimeoutError as e:
            rnd.findings.append(f"round {n} kill {i + 1}: {e}")
            return rnd
        at = time.monotonic() - t0
        rnd.findings += [f"round {n} kill {i + 1}: {f}" for f in lock_findings(r.text())]
        if previous is not None:  # this run is the restart after the previous kill
            previous.restart_ok = restart_ok(r, bool(target) and landed)
        if not landed:
            if r.p.returncode == 0:
                say(f"  kill {i + 1}: the pipeline completed at {at:.0f} s before the kill in {stage}")
                rnd.findings.append(f"round {n} kill {i + 1}: pipeline completed before the kill in {stage} ({at:.0f} s)")
                previous = None
                break
            say(f"  kill {i + 1}: dvc repro failed by itself (exit {r.p.returncode}) at {at:.0f} s: {r.errors()[-3:]}")
            rnd.findings.append(f"round {n} kill {i + 1}: restart failed by itself: {r.errors()[-3:]}")
            previous = None
            continue
        k = Kill(n, i + 1, stage, round(fraction, 3) if not target else -1.0, round(at, 1), r.where(), target or "")
        k.survivors = survivors(repo)
        for sv in k.survivors:
            os.kill(int(sv.split(":")[0]), signal.SIGKILL)
        k.left = [str(t.relative_to(repo)) for t in walk(repo)[0]]
        k.torn, k.read = torn(repo)
        if target and not any(Path(t).name.startswith(".") for t in k.left):
            k.note = "no temporary left by the in-write kill"
        rnd.kills.append(k)
        previous = k
        say(f"  kill {i + 1}: {at:6.1f} s  {k.stage}" + (f"  [in write: {target}]" if target else f"  ({fraction:.0%} into {stage})")
            + f"  ({k.read} files read back)" + (f"  left: {', '.join(k.left)}" if k.left else "")
            + (f"  TORN: {k.torn}" if k.torn else "") + (f"  SURVIVORS: {k.survivors}" if k.survivors else ""))

    say("  completing: dvc repro ...")
    final = Repro(repo, env, logs / f"r{n}_final.log")
    try:
        code = final.wait(timeout=3 * sum(durations.values()) + 600)
    except TimeoutError as e:
        code = f"timeout ({e})"
    rnd.findings += [f"round {n} final run: {f}" for f in lock_findings(final.text())]
    if previous is not None:
        previous.restart_ok = code == 0
    rnd.seconds = round(time.monotonic() - t0, 1)
    if code != 0:
        say(f"  FAILED: the completing dvc repro exited {code}: {final.errors()[-5:]}")
        rnd.findings.append(f"round {n}: the completing dvc repro failed (exit {code}): {final.errors()[-5:]}")
        return rnd
    rnd.completed = True
    status = subprocess.run([sys.executable, "-m", "dvc", "status"], cwd=repo, env=env, capture_output=True, text=True)
    if "up to date" not in status.stdout:
        rnd.mismatches.append(f"dvc status after completion: {status.stdout.strip()[:300]}")
    want, got = lock_outs(ref), lock_outs(repo)
    rnd.mismatches += [f"{p}: md5 {got.get(p)} (reference {want.get(p)})" for p in sorted(set(want) | set(got)) if want.get(p) != got.get(p)]
    want_files, got_files = json.loads((ref / "files.json").read_text()), compared_files(repo)
    rnd.mismatches += [f"{p}: bytes differ" for p in sorted(set(want_files) | set(got_files)) if want_files.get(p) != got_files.get(p)]
    rnd.leftovers = [str(t.relative_to(repo)) for t in walk(repo)[0]] + [str(f.relative_to(repo)) for f in (repo / "models/.resume").glob("*")]
    say(f"  round {n}: completed in {rnd.seconds:.0f} s; {len(want)} outputs and {len(want_files)} files compared, "
        f"{len(rnd.mismatches)} mismatches" + (f": {rnd.mismatches}" if rnd.mismatches else "")
        + (f"; LEFT: {rnd.leftovers}" if rnd.leftovers else ""))
    return rnd


def report(args, T: float, order: list[str], durations: dict[str, float], rounds: list[Round], out: Path, seconds: float) -> dict:
    kills = [k for r in rounds for k in r.kills]
    restart_failures = [k for k in kills if k.restart_ok is False] + [r for r in rounds if not r.completed]
    mismatches = [f"round {r.n}: {m}" for r in rounds for m in r.mismatches]
    torn_ = [f"round {k.round} kill {k.n}: {t}" for k in kills for t in k.torn]
    leftovers = [f"round {r.n}: {t}" for r in rounds for t in r.leftovers]
    survivors_ = [f"round {k.round} kill {k.n}: {s}" for k in kills for s in k.survivors]
    findings = [f for r in rounds for f in r.findings]
    result = {
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "source": args.source,
        "rounds": args.rounds, "kills_per_round": args.kills, "seed": args.seed,
        "reference_seconds": round(T, 1), "campaign_seconds": round(seconds, 1), "stage_order": order,
        "reference_stage_seconds": {s: round(d, 1) for s, d in durations.items()},
        "kills": len(kills), "kills_in_write": sum(bool(k.in_write) for k in kills),
        "stages_killed": sorted({k.stage for k in kills}),
        "stages_never_killed": [s for s in order if s not in {k.stage for k in kills}],
        "mismatches": mismatches, "restart_failures": len(restart_failures), "torn": torn_,
        "leftover_temporaries": leftovers, "survivors": survivors_, "findings": findings,
        "ok": bool(kills) and not (mismatches or restart_failures or torn_ or leftovers or survivors_),
        "table": [asdict(k) for k in kills],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    ok = {True: "yes", False: "**NO**", None: "?"}
    rows = [f"| {k.round} | {k.n} | {k.target} | {'write' if k.in_write else f'{k.fraction:.0%}'} | {k.at_s:.1f} | {k.stage} | "
            f"{k.in_write or 'no'} | {ok[k.restart_ok]} | "
            f"{', '.join(k.left) or '-'} |" for k in kills]
    md = [
        "# Fault campaign: `dvc repro` SIGKILLed inside seeded stages, re-run, compared with an uninterrupted run", "",
        f"`{result['command']}` on {result['source']}; reference run {T:.0f} s; campaign {seconds / 60:.1f} min.", "",
        f"- kills: **{result['kills']}** ({result['kills_in_write']} inside a write), over {len(result['stages_killed'])} "
        f"of the pipeline's {len(order)} stages" + (f" (never killed: {', '.join(result['stages_never_killed'])})" if result['stages_never_killed'] else ""),
        f"- mismatches with the uninterrupted run: **{len(mismatches)}**" + "".join(f"\n  - {m}" for m in mismatches),
        f"- restart failures: **{len(restart_failures)}**",
        f"- torn outputs after a kill: **{len(torn_)}**" + "".join(f"\n  - {t}" for t in torn_),
        f"- temporaries left after completion: **{len(leftovers)}**" + "".join(f"\n  - {t}" for t in leftovers),
        f"- processes left after a kill: **{len(survivors_)}**",
        "- findings:" + ("".join(f"\n  - {f}" for f in findings) if findings else " none"), "",
        "Every `outs` md5 of dvc.lock and the bytes of metrics/**/*.json and models/*.pt are compared; "
        "`left` lists the temporaries beside the outputs just after the kill (a re-run clears them).", "",
        "`drawn` is the stage drawn for the kill and `into` the fraction of its reference duration; `stage killed` is "
        "the one dvc was running (a stage shorter this time than in the reference hands the kill to the next).", "",
        "| round | kill | drawn | into | s | stage killed | in write | restart ok | left |", "|---|---|---|---|---|---|---|---|---|", *rows, "",
    ]
    out.with_suffix(".md").write_text("\n".join(md))
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    ap.add_argument("--rounds", type=int, default=2, help="rounds, each from scratch (default 2)")
    ap.add_argument("--kills", type=int, default=15, help="kills per round, each in a different stage (default 15)")
    ap.add_argument("--seed", type=int, default=0, help="seeds the stages, the fractions and the in-write kills (default 0)")
    ap.add_argument("--workdir", type=Path, help="where the copy of the repository goes (default: a new temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (logs: <workdir>/logs)")
    ap.add_argument("--worktree", action="store_true", help="copy the working tree as it is instead of cloning HEAD")
    ap.add_argument("--no-in-write", dest="in_write", action="store_false", help="only timed kills")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/fault_campaign",
                    help="results, .md and .json (default benchmarks/results/fault_campaign)")
    args = ap.parse_args()
    if args.kills < 1 or args.rounds < 1:
        ap.error("--rounds and --kills must be at least 1")

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="fault_campaign_"))
    if args.workdir and workdir.exists() and any(workdir.iterdir()):
        ap.error(f"--workdir {workdir} is not empty")
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    logs = workdir / "logs"
    logs.mkdir()
    say(f"work folder {workdir} ({'working tree' if args.worktree else 'clone of HEAD'}); {args.rounds} rounds x {args.kills} kills, seed {args.seed}")
    start = time.monotonic()
    try:
        repo = make_repo(workdir, args.worktree)
        # what was tested, read from the copy when it was made (HEAD may move during the campaign)
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
        args.source = f"the working tree (on {head})" if args.worktree else f"HEAD {head}"
        env = environment(workdir)
        outs = set(lock_outs(repo)) if (repo / "dvc.lock").exists() else set()
        T, order, durations = reference(repo, env, logs, workdir / "reference", outs)
        outs |= set(lock_outs(repo))
        dealt = deal(args.seed, order, args.rounds, args.kills)
        rounds = [one_round(n + 1, args, repo, env, logs, workdir / "reference", durations, dealt[n], outs) for n in range(args.rounds)]
        result = report(args, T, order, durations, rounds, args.out, time.monotonic() - start)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    say(f"\nkills {result['kills']} ({result['kills_in_write']} in a write), stages killed {len(result['stages_killed'])}, "
        f"mismatches {len(result['mismatches'])}, restart failures {result['restart_failures']}, torn {len(result['torn'])}, "
        f"leftovers {len(result['leftover_temporaries'])}, survivors {len(result['survivors'])}; findings {len(result['findings'])}")
    for f in result["findings"]:
        say(f"  finding: {f}")
    say(f"results: {args.out.with_suffix('.md')}" + (f"; logs: {logs}" if args.keep else ""))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

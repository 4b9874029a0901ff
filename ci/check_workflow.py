#!/usr/bin/env python3
"""Checks that the GitHub Actions workflow parses and is wired as intended:
a build job, a shard job whose matrix lists shards 1..N where N is the
workflow's SHARDS and every shard runs `--shard K/N` through ci/main.sh, and
a merge job that needs the shards, runs `estale-repro merge` and uploads the
HTML report as an artifact. Run by ctest (ci_workflow): it also checks that
broken variants of the workflow are rejected, so the check itself can fail.
Usage: check_workflow.py WORKFLOW.yml"""
import copy
import sys

import yaml


def steps_text(job):
    return "\n".join(str(s.get("run", "")) + " " + str(s.get("uses", "")) + " " + str(s.get("with", ""))
                     for s in job.get("steps", []))


def problem(wf):
    """The first problem of the parsed workflow, or None."""
    if not isinstance(wf, dict):
        return "not a YAML mapping"
    # YAML 1.1 reads a bare `on:` key as the boolean True.
    if "on" not in wf and True not in wf:
        return "no 'on' trigger"
    jobs = wf.get("jobs")
    if not isinstance(jobs, dict):
        return "no jobs"
    for name in ("build", "shard", "merge"):
        if name not in jobs:
            return f"no '{name}' job"
        if "runs-on" not in jobs[name] or not jobs[name].get("steps"):
            return f"job '{name}' needs runs-on and steps"
    try:
        n = int(wf.get("env", {}).get("SHARDS", 0))
    except ValueError:
        return "env SHARDS is not a number"
    if n < 2:
        return "env SHARDS must be at least 2"
    shard = jobs["shard"]
    shards = shard.get("strategy", {}).get("matrix", {}).get("shard")
    if shards != list(range(1, n + 1)):
        return f"shard matrix {shards} is not 1..{n} (SHARDS)"
    if shard.get("needs") != "build":
        return "shard job must need build"
    text = steps_text(shard)
    if "SHARD=${{ matrix.shard }}/${SHARDS}" not in text or "ci/main.sh" not in text:
        return "shard job must run ci/main.sh with SHARD=${{ matrix.shard }}/${SHARDS}"
    if "/dev/fuse" not in str(shard.get("container", {}).get("options", "")):
        return "shard job's container needs --device /dev/fuse"
    if "actions/upload-artifact" not in text:
        return "shard job must upload its JSON report"
    merge = jobs["merge"]
    if merge.get("needs") != "shard":
        return "merge job must need the shard job"
    text = steps_text(merge)
    if "estale-repro merge" not in text or "--html" not in text:
        return "merge job must run estale-repro merge ... --html"
    ups = [s for s in merge["steps"] if str(s.get("uses", "")).startswith("actions/upload-artifact")]
    if not ups or "matrix.html" not in str(ups[-1].get("with", {}).get("path", "")):
        return "merge job must upload the HTML report as an artifact"
    return None


def broken_variants(wf):
    """Copies of the workflow, each with one defect the check must catch."""
    def variant(f):
        w = copy.deepcopy(wf)
        f(w)
        return w
    yield "a shard missing from the matrix", variant(lambda w: w["jobs"]["shard"]["strategy"]["matrix"]["shard"].pop())
    yield "SHARDS not matching the matrix", variant(lambda w: w["env"].update(SHARDS="5"))
    yield "no merge job", variant(lambda w: w["jobs"].pop("merge"))
    yield "merge not waiting for the shards", variant(lambda w: w["jobs"]["merge"].pop("needs"))
    yield "no HTML upload", variant(lambda w: w["jobs"]["merge"]["steps"].pop())
    yield "no FUSE device", variant(lambda w: w["jobs"]["shard"]["container"].update(options=""))


def main():
    path = sys.argv[1]
    try:
        with open(path) as f:
            wf = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        print(f"{path}: does not parse: {e}", file=sys.stderr)
        return 1
    p = problem(wf)
    if p:
        print(f"{path}: {p}", file=sys.stderr)
        return 1
    for what, w in broken_variants(wf):
        if problem(w) is None:
            print(f"{path}: the check accepts a workflow with {what}", file=sys.stderr)
            return 1
    print(f"{path}: ok ({wf['env']['SHARDS']} shards)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

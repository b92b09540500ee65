#!/usr/bin/env python3
"""Drive the E2B emulator with E2B's official Python SDK (e2b==2.63.0) only.

Usage: E2B_EMULATOR_BIN=path/to/e2b-emulator python conformance.py
   or: python conformance.py path/to/e2b-emulator

Starts the emulator on 127.0.0.1:0, points the SDK at it through E2B_API_URL,
E2B_SANDBOX_URL and E2B_API_KEY, runs one check per behaviour, prints one line
per check and finally "N passed, M failed". Exits non-zero on any failure. The
emulator is stopped at the end whatever happens.
"""

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import traceback

CHECKS = []


def check(name):
    def register(fn):
        CHECKS.append((name, fn))
        return fn

    return register


def start_emulator(binary, api_key):
    proc = subprocess.Popen(
        [binary, "--listen", "127.0.0.1:0", "--api-key", api_key, "--max-timeout", "3600"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line_box = {}

    def read_first_line():
        line_box["line"] = proc.stdout.readline()

    reader = threading.Thread(target=read_first_line, daemon=True)
    reader.start()
    reader.join(timeout=20)
    line = line_box.get("line", "")
    if not line:
        proc.kill()
        _, err = proc.communicate(timeout=5)
        raise RuntimeError(f"emulator did not print its ready line; stderr:\n{err}")
    ready = json.loads(line)
    for key in ("api_url", "sandbox_url", "pid"):
        assert key in ready, f"ready line lacks {key!r}: {line!r}"
    return proc, ready


def stop_emulator(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def main():
    binary = os.environ.get("E2B_EMULATOR_BIN") or (sys.argv[1] if len(sys.argv) > 1 else None)
    if not binary:
        print("set E2B_EMULATOR_BIN or pass the emulator binary path", file=sys.stderr)
        return 2
    api_key = "e2b_" + secrets.token_hex(20)
    try:
        proc, ready = start_emulator(binary, api_key)
    except Exception as exc:  # noqa: BLE001 - reported as the one failed check
        print(f"FAIL start emulator: {exc}", flush=True)
        print("0 passed, 1 failed")
        return 1
    passed = failed = 0
    try:
        os.environ["E2B_API_URL"] = ready["api_url"]
        os.environ["E2B_SANDBOX_URL"] = ready["sandbox_url"]
        os.environ["E2B_API_KEY"] = api_key
        os.environ.pop("E2B_DEBUG", None)
        os.environ.pop("E2B_DOMAIN", None)
        ctx = {"api_key": api_key}
        started = time.monotonic()
        for name, fn in CHECKS:
            t0 = time.monotonic()
            try:
                fn(ctx)
                passed += 1
                print(f"ok   {name} ({time.monotonic() - t0:.2f}s)", flush=True)
            except Exception as exc:  # noqa: BLE001 - every failure is reported
                failed += 1
                print(f"FAIL {name}: {exc!r}", flush=True)
                traceback.print_exc(limit=4)
        print(f"# total {time.monotonic() - started:.1f}s", flush=True)
    finally:
        cleanup = ctx.get("sandbox") if "ctx" in locals() else None
        if cleanup is not None:
            try:
                cleanup.kill()
            except Exception:
                pass
        stop_emulator(proc)
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


# --- checks, run in order; later ones use the sandbox the first one made ---

from e2b import CommandExitException, Sandbox, SandboxQuery  # noqa: E402
from e2b.exceptions import AuthenticationException, SandboxException  # noqa: E402


def list_ids(query=None):
    paginator = Sandbox.list(query=query)
    ids = []
    while paginator.has_next:
        ids.extend(s.sandbox_id for s in paginator.next_items())
    return ids


@check("wrong API key is rejected with 401")
def _(ctx):
    try:
        Sandbox.create(api_key="e2b_" + "0" * 40, timeout=60)
    except AuthenticationException:
        return
    raise AssertionError("create with a wrong API key did not raise AuthenticationException")


@check("create sandbox with metadata")
def _(ctx):
    ctx["run_id"] = secrets.token_hex(4)
    sbx = Sandbox.create(timeout=120, metadata={"suite": "conformance", "run": ctx["run_id"]})
    ctx["sandbox"] = sbx
    assert sbx.sandbox_id, "sandbox id is empty"
    info = sbx.get_info()
    assert info.metadata.get("run") == ctx["run_id"], f"metadata not kept: {info.metadata}"
    assert str(info.state.value) == "running", f"state is {info.state}"
    assert sbx.is_running(), "a new sandbox is not running"


@check("list with a matching metadata filter finds the sandbox")
def _(ctx):
    ids = list_ids(SandboxQuery(metadata={"run": ctx["run_id"]}))
    assert ids == [ctx["sandbox"].sandbox_id], f"expected only our sandbox, got {ids}"


@check("list with a non-matching metadata filter does not")
def _(ctx):
    ids = list_ids(SandboxQuery(metadata={"run": "no-such-run"}))
    assert ctx["sandbox"].sandbox_id not in ids, f"non-matching filter returned {ids}"


@check("commands.run returns stdout")
def _(ctx):
    result = ctx["sandbox"].commands.run("echo hello from the sandbox")
    assert result.exit_code == 0, f"exit code {result.exit_code}"
    assert result.stdout == "hello from the sandbox\n", f"stdout {result.stdout!r}"


@check("commands.run separates stderr")
def _(ctx):
    result = ctx["sandbox"].commands.run("echo out; echo err >&2")
    assert result.stdout == "out\n", f"stdout {result.stdout!r}"
    assert result.stderr == "err\n", f"stderr {result.stderr!r}"


@check("nonzero exit raises CommandExitException with exit_code")
def _(ctx):
    try:
        ctx["sandbox"].commands.run("echo partial; exit 7")
    except CommandExitException as exc:
        assert exc.exit_code == 7, f"exit_code {exc.exit_code}"
        assert exc.stdout == "partial\n", f"stdout {exc.stdout!r}"
        return
    raise AssertionError("exit 7 did not raise CommandExitException")


@check("commands.run passes envs")
def _(ctx):
    result = ctx["sandbox"].commands.run('echo "$GREETING"', envs={"GREETING": "hi there"})
    assert result.stdout == "hi there\n", f"stdout {result.stdout!r}"


@check("commands.run honours cwd")
def _(ctx):
    result = ctx["sandbox"].commands.run("pwd", cwd="/tmp")
    assert result.stdout == "/tmp\n", f"stdout {result.stdout!r}"


@check("default user is 'user' with home /home/user")
def _(ctx):
    result = ctx["sandbox"].commands.run('whoami; echo "$HOME"; pwd')
    assert result.stdout == "user\n/home/user\n/home/user\n", f"stdout {result.stdout!r}"


@check("user='root' runs as root")
def _(ctx):
    result = ctx["sandbox"].commands.run("whoami; id -u", user="root")
    assert result.stdout == "root\n0\n", f"stdout {result.stdout!r}"


@check("background command shows in processes list and can be killed")
def _(ctx):
    sbx = ctx["sandbox"]
    handle = sbx.commands.run("sleep 300", background=True)
    pids = [p.pid for p in sbx.commands.list()]
    assert handle.pid in pids, f"pid {handle.pid} not in {pids}"
    assert handle.kill(), "kill returned False"
    try:
        handle.wait()
        raise AssertionError("killed command did not raise")
    except CommandExitException as exc:
        assert exc.exit_code == -1, f"killed command exit_code {exc.exit_code}"
    deadline = time.monotonic() + 5
    while handle.pid in [p.pid for p in sbx.commands.list()]:
        assert time.monotonic() < deadline, "killed process still listed"
        time.sleep(0.1)


@check("commands.kill signals only the command's process, as envd does")
def _(ctx):
    sbx = ctx["sandbox"]
    handle = sbx.commands.run(
        "exec sh -c 'echo $$ > kill-pids; sleep 3173 & echo $! >> kill-pids; wait'",
        background=True,
    )
    deadline = time.monotonic() + 5
    while True:
        pids = sbx.files.read("kill-pids") if sbx.files.exists("kill-pids") else ""
        if len(pids.splitlines()) >= 2:
            break
        assert time.monotonic() < deadline, f"no pids written: {pids!r}"
        time.sleep(0.05)
    sh_pid, sleep_pid = (int(line) for line in pids.splitlines()[:2])
    assert handle.pid == sh_pid, f"reported pid {handle.pid}, the command's own is {sh_pid}"
    assert handle.kill(), "kill returned False"
    try:
        handle.wait()
        raise AssertionError("killed command did not raise")
    except CommandExitException as exc:
        assert exc.exit_code == -1, f"killed command exit_code {exc.exit_code}"
    alive = sbx.commands.run(f"kill -0 {sleep_pid} && echo alive; kill -KILL {sleep_pid}")
    assert alive.stdout == "alive\n", f"background child of a killed command: {alive.stdout!r}"


@check("files write/read/exists/list/remove")
def _(ctx):
    sbx = ctx["sandbox"]
    info = sbx.files.write("/home/user/project/notes.txt", "first line\n")
    assert info.path == "/home/user/project/notes.txt", f"write info path {info.path}"
    assert sbx.files.read("/home/user/project/notes.txt") == "first line\n"
    assert sbx.files.exists("/home/user/project/notes.txt"), "written file does not exist"
    names = [e.name for e in sbx.files.list("/home/user/project")]
    assert names == ["notes.txt"], f"list gave {names}"
    seen = sbx.commands.run("cat project/notes.txt").stdout
    assert seen == "first line\n", f"command saw {seen!r}"
    sbx.files.remove("/home/user/project/notes.txt")
    assert not sbx.files.exists("/home/user/project/notes.txt"), "removed file still exists"


@check("make_dir tells a directory it made from one already there; remove takes a whole tree")
def _(ctx):
    # crabbox makes its staging and request directories through MakeDir, and takes "already
    # exists" for made; E2B's envd tells the two apart, and so must the emulator.
    sbx = ctx["sandbox"]
    assert sbx.files.make_dir("/home/user/claim/inner") is True, "a new directory (and parent)"
    assert sbx.files.make_dir("/home/user/claim/inner") is False, "an existing one"
    sbx.files.write("/home/user/claim/inner/f.txt", "x")
    sbx.files.remove("/home/user/claim")
    assert not sbx.files.exists("/home/user/claim"), "a removed tree is gone whole"


@check("set_timeout moves the end time")
def _(ctx):
    sbx = ctx["sandbox"]
    before = sbx.get_info().end_at
    sbx.set_timeout(600)
    after = sbx.get_info().end_at
    assert (after - before).total_seconds() > 300, f"end_at {before} -> {after}"


@check("pause stops envd, connect resumes and the sandbox works again")
def _(ctx):
    sbx = ctx["sandbox"]
    sbx.files.write("/home/user/kept.txt", "still here")
    assert sbx.pause() is True, "pause returned False"
    info = Sandbox.get_info(sbx.sandbox_id)
    assert str(info.state.value) == "paused", f"state after pause {info.state}"
    assert not sbx.is_running(), "paused sandbox reports running"
    resumed = Sandbox.connect(sbx.sandbox_id, timeout=120)
    assert resumed.sandbox_id == sbx.sandbox_id
    assert resumed.is_running(), "resumed sandbox is not running"
    out = resumed.commands.run("cat /home/user/kept.txt").stdout
    assert out == "still here", f"after resume read {out!r}"
    ctx["sandbox"] = resumed


def wait_for(what, fn, seconds=15):
    deadline = time.monotonic() + seconds
    while True:
        value = fn()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def port_get(ctx, host, headers=None):
    """GET / of a sandbox port through the emulator, addressed by Host as E2B's proxy is."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        os.environ["E2B_API_URL"] + "/", headers={"Host": host, **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@check("pause keeps running processes; connect resumes them")
def _(ctx):
    sbx = ctx["sandbox"]
    handle = sbx.commands.run("sleep 600", background=True)
    assert sbx.pause() is True, "pause returned False"
    assert sbx.pause() is False, "a second pause did not report already paused"
    resumed = Sandbox.connect(sbx.sandbox_id, timeout=120)
    pids = [p.pid for p in resumed.commands.list()]
    assert handle.pid in pids, f"process {handle.pid} gone after pause/resume: {pids}"
    resumed.commands.kill(handle.pid)
    ctx["sandbox"] = resumed


@check("lifecycle on_timeout=pause pauses at timeout; auto_resume wakes it on traffic")
def _(ctx):
    sbx = Sandbox.create(timeout=2, lifecycle={"on_timeout": "pause", "auto_resume": True})
    try:
        info = sbx.get_info()
        assert info.lifecycle == {"on_timeout": "pause", "auto_resume": True}, info.lifecycle
        sbx.files.write("/home/user/idle.txt", "kept while paused")
        wait_for(
            "the sandbox to pause at its timeout",
            lambda: str(Sandbox.get_info(sbx.sandbox_id).state.value) == "paused",
        )
        out = sbx.commands.run("cat /home/user/idle.txt").stdout
        assert out == "kept while paused", f"after auto-resume read {out!r}"
        state = str(Sandbox.get_info(sbx.sandbox_id).state.value)
        assert state == "running", f"traffic did not resume it: {state}"
    finally:
        sbx.kill()


@check("create_snapshot / list_snapshots / Sandbox.create(snapshot) / delete_snapshot")
def _(ctx):
    sbx = ctx["sandbox"]
    sbx.files.write("/home/user/deps/installed.txt", "node_modules stand-in")
    snap = sbx.create_snapshot()
    assert snap.snapshot_id, "empty snapshot id"
    assert sbx.is_running(), "the source does not run on after its snapshot"
    paginator = sbx.list_snapshots()
    listed = []
    while paginator.has_next:
        listed.extend(s.snapshot_id for s in paginator.next_items())
    assert snap.snapshot_id in listed, f"{snap.snapshot_id} not in {listed}"
    child = Sandbox.create(snap.snapshot_id, timeout=60)
    try:
        assert child.sandbox_id != sbx.sandbox_id
        out = child.files.read("/home/user/deps/installed.txt")
        assert out == "node_modules stand-in", f"snapshot child read {out!r}"
        child.files.write("/home/user/deps/installed.txt", "changed in the child")
        assert sbx.files.read("/home/user/deps/installed.txt") == "node_modules stand-in"
    finally:
        child.kill()
    assert Sandbox.delete_snapshot(snap.snapshot_id) is True, "delete returned False"
    assert Sandbox.delete_snapshot(snap.snapshot_id) is False, "second delete found it"


@check("fork(count=3) starts three sandboxes with the source's files; the source runs on")
def _(ctx):
    sbx = ctx["sandbox"]
    sbx.files.write("/home/user/fork-me.txt", "from the source")
    before = sbx.get_info().end_at
    forks = sbx.fork(count=3, timeout=60)
    try:
        assert len(forks) == 3, f"{len(forks)} results"
        for f in forks:
            assert isinstance(f, Sandbox), f"a fork failed: {f!r}"
        ids = {f.sandbox_id for f in forks}
        assert len(ids) == 3 and sbx.sandbox_id not in ids, f"fork ids {ids}"
        for f in forks:
            assert f.files.read("/home/user/fork-me.txt") == "from the source"
        assert sbx.is_running(), "source stopped running"
        assert sbx.get_info().end_at == before, "the fork moved the source's end time"
    finally:
        for f in forks:
            if isinstance(f, Sandbox):
                f.kill()
    try:
        sbx.fork(count=21)
        raise AssertionError("fork(count=21) was accepted")
    except Exception as exc:  # noqa: BLE001 - the SDK or the service refuses it
        assert "21" in str(exc) or "count" in str(exc).lower(), repr(exc)


@check("get_host reaches a server in the sandbox; two sandboxes share a port; private traffic needs the token")
def _(ctx):
    sbx = ctx["sandbox"]
    other = Sandbox.create(timeout=120, network={"allow_public_traffic": False})
    try:
        assert other.traffic_access_token, "a private sandbox has no traffic access token"
        for box, text in ((sbx, "first"), (other, "second")):
            box.files.write("/home/user/www/index.html", text)
            box.commands.run(
                "cd /home/user/www && exec python3 -m http.server 8765 --bind 127.0.0.1",
                background=True,
            )
        host = sbx.get_host(8765)
        assert host == f"8765-{sbx.sandbox_id}.e2b.app", f"host {host}"
        status, body = wait_for("the first server", lambda: (r := port_get(ctx, host))[0] == 200 and r)
        assert body == "first", f"first sandbox served {body!r}"
        other_host = other.get_host(8765)
        token = {"e2b-traffic-access-token": other.traffic_access_token}
        status, body = wait_for(
            "the second server", lambda: (r := port_get(ctx, other_host, token))[0] == 200 and r
        )
        assert body == "second", f"second sandbox served {body!r}"
        status, _ = port_get(ctx, other_host)
        assert status == 403, f"private port without the token: {status}"
        status, _ = port_get(ctx, sbx.get_host(8766))
        assert status == 502, f"a closed port answered {status}"
    finally:
        other.kill()


@check("pty: create, send input, resize, read output, exit code")
def _(ctx):
    from e2b import PtySize

    sbx = ctx["sandbox"]
    handle = sbx.pty.create(PtySize(rows=24, cols=80), timeout=30)
    sbx.pty.resize(handle.pid, PtySize(rows=33, cols=101))
    sbx.pty.send_stdin(handle.pid, b"stty size; echo tty=$(tty); exit 3\n")
    seen = bytearray()
    try:
        handle.wait(on_pty=lambda data: seen.extend(data))
        raise AssertionError("exit 3 did not raise")
    except CommandExitException as exc:
        assert exc.exit_code == 3, f"exit code {exc.exit_code}"
    text = seen.decode(errors="replace")
    assert "33 101" in text, f"size not seen: {text!r}"
    assert "tty=/dev/pts/" in text, f"not a terminal: {text!r}"


@check("kill removes the sandbox from the list")
def _(ctx):
    sbx = ctx.pop("sandbox")
    assert sbx.kill() is True, "kill returned False"
    assert sbx.sandbox_id not in list_ids(), "killed sandbox still listed"
    assert Sandbox.kill(sbx.sandbox_id) is False, "second kill did not report not found"
    try:
        sbx.commands.run("true")
        raise AssertionError("command on a killed sandbox succeeded")
    except SandboxException:
        pass


@check("network: create without internet and with egress lists, read back, update")
def _(ctx):
    sbx = Sandbox.create(
        timeout=120,
        allow_internet_access=False,
        network={"allow_out": ["registry.npmjs.org", "10.1.0.0/16"], "deny_out": ["10.0.0.0/8"]},
    )
    try:
        info = sbx.get_info()
        assert info.allow_internet_access is False, f"allow_internet_access {info.allow_internet_access!r}"
        net = info.network or {}
        assert net.get("allow_out") == ["registry.npmjs.org", "10.1.0.0/16"], f"network {net!r}"
        assert net.get("deny_out") == ["10.0.0.0/8"], f"network {net!r}"
        # No internet inside: the sandbox's network has nothing but a loopback.
        out = sbx.commands.run(
            "cat /proc/net/route | wc -l; tail -n +3 /proc/net/dev | cut -d: -f1", timeout=30
        )
        assert out.stdout.split()[0] == "1", f"routes: {out.stdout!r}"
        assert out.stdout.split()[1:] == ["lo"], f"interfaces: {out.stdout!r}"
        sbx.update_network({"allow_out": ["example.com"], "deny_out": ["0.0.0.0/0"]})
        net = sbx.get_info().network or {}
        assert net.get("allow_out") == ["example.com"], f"after update {net!r}"
        assert net.get("deny_out") == ["0.0.0.0/0"], f"after update {net!r}"
        sbx.update_network({"allow_internet_access": True})
        info = sbx.get_info()
        assert info.allow_internet_access is True, f"after update {info.allow_internet_access!r}"
        assert (info.network or {}).get("allow_out", []) == [], "an update replaces the lists"
        try:
            sbx.update_network({"deny_out": ["example.com"]})
            raise AssertionError("a domain in deny_out was accepted")
        except SandboxException:
            pass
    finally:
        sbx.kill()
    plain = Sandbox.create(timeout=60)
    try:
        info = plain.get_info()
        assert info.allow_internet_access is None, f"unset: {info.allow_internet_access!r}"
    finally:
        plain.kill()


@check("Template.exists finds base and not an unknown template")
def _(ctx):
    from e2b import Template

    assert Template.exists("base") is True, "base should exist"
    assert Template.exists("no-such-template-crabbox") is False, "an unknown template exists"


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Drive `crabbox mcp` with the official MCP Python SDK (mcp==2.3.0) as the client.

Usage: CRABBOX_BIN=path/to/crabbox E2B_EMULATOR_BIN=path/to/e2b-emulator python client.py

For each provider (local, then e2b against the emulator) it starts `crabbox mcp` over stdio
in a fresh git repository with private state and config directories, runs one check per
behaviour, prints one line per check and finally "N passed, M failed"; then one check of
Streamable HTTP (`crabbox mcp --http 127.0.0.1:0`). Exits non-zero on any failure. Every
process it starts is stopped at the end whatever happens.
"""

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
from pathlib import Path

import anyio
from mcp import Client, StdioServerParameters
from mcp.shared.exceptions import MCPError

TOOLS = {"warmup", "run", "status", "list", "stop", "pause", "resume", "snapshot", "url", "download", "logs", "wait", "kill", "shard", "runs", "fork", "workspaces"}
NOT_OURS = "cbx_0000deadbeef"


def start_emulator(binary, api_key):
    proc = subprocess.Popen(
        [binary, "--listen", "127.0.0.1:0", "--api-key", api_key],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    box = {}
    reader = threading.Thread(target=lambda: box.update(line=proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout=30)
    line = box.get("line", "")
    if not line:
        proc.kill()
        raise RuntimeError("emulator did not print its ready line")
    return proc, json.loads(line)


def stop_process(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


class Machine:
    """One isolated crabbox 'machine': a repository, state and config dirs, an environment."""

    def __init__(self, tmp, provider, extra_env):
        self.home = Path(tmp)
        self.repo = self.home / "repo"
        self.repo.mkdir()
        git_env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null"}
        for args in (
            ["init", "-q"],
            ["config", "user.email", "t@example.com"],
            ["config", "user.name", "t"],
        ):
            subprocess.run(["git", *args], cwd=self.repo, check=True, env=git_env)
        (self.repo / "hello.txt").write_text("hello from the repo\n")
        (self.repo / ".gitignore").write_text("*.pid\n")
        subprocess.run(["git", "add", "-A"], cwd=self.repo, check=True, env=git_env)
        subprocess.run(["git", "commit", "-qm", "init"], cwd=self.repo, check=True, env=git_env)
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "LANG": "C.UTF-8",
            "XDG_STATE_HOME": str(self.home / "state"),
            "XDG_CONFIG_HOME": str(self.home / "config"),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": "/dev/null",
            "CRABBOX_PROVIDER": provider,
            **extra_env,
        }
        self.provider = provider

    def stdio(self, binary):
        return StdioServerParameters(
            command=binary, args=["mcp"], env=self.env, cwd=str(self.repo)
        )


class Progress:
    """Collects a call's progress messages; `wait_for` waits for one containing a text."""

    def __init__(self):
        self.messages = []
        self._waiters = []

    async def __call__(self, progress, total, message):
        if message is not None:
            self.messages.append(message)
        for text, event in self._waiters:
            if message is not None and text in message:
                event.set()

    def event_for(self, text):
        event = anyio.Event()
        self._waiters.append((text, event))
        return event


def structured(result):
    assert not result.is_error, f"tool failed: {text_of(result)}"
    assert result.structured_content is not None, "no structured content"
    return result.structured_content


def text_of(result):
    return "\n".join(getattr(c, "text", "") for c in result.content)


async def expect_protocol_error(client, tool, args, *needles):
    try:
        result = await client.call_tool(tool, args)
    except MCPError as e:
        message = str(e.error.message)
        for n in needles:
            assert n in message, f"{tool} {args}: error {message!r} lacks {n!r}"
        return e.error
    raise AssertionError(f"{tool} {args}: no protocol error, got {result}")


PIDS_ALIVE = (
    "for f in cmd.pid child.pid; do p=$(cat $f); "
    "if [ -r /proc/$p/stat ]; then s=$(sed 's/.*) //' /proc/$p/stat | cut -c1); else s=; fi; "
    'case "$s" in ""|Z) echo "gone $f";; *) echo "alive $f $s";; esac; done'
)


async def checks_for(machine, binary, report, secret=None):
    async with Client(machine.stdio(binary)) as client:

        async def check(name, fn):
            try:
                await fn()
                report(True, f"{machine.provider}: {name}")
            except Exception as exc:  # noqa: BLE001 - reported as a failed check
                detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
                report(False, f"{machine.provider}: {name}: {detail}")

        async def list_tools():
            tools = (await client.list_tools()).tools
            names = {t.name for t in tools}
            assert names == TOOLS, f"tools {names}"
            for t in tools:
                assert t.description, f"{t.name} has no description"
                assert t.input_schema.get("type") == "object", f"{t.name} input schema"
                assert t.output_schema and t.output_schema.get("type") == "object", (
                    f"{t.name} has no object output schema"
                )
            by_name = {t.name: t for t in tools}
            assert by_name["list"].annotations.read_only_hint, by_name["list"].annotations
            assert by_name["stop"].annotations.destructive_hint, by_name["stop"].annotations
            run = by_name["run"]
            for arg in ("command", "id", "sync", "keep", "env", "timeoutSecs", "root"):
                assert arg in run.input_schema["properties"], f"run lacks {arg}"

        await check("lists its tools with input and output schemas", list_tools)

        async def failing_command():
            progress = Progress()
            result = await client.call_tool(
                "run",
                {"command": "cat hello.txt; echo to-stderr >&2; exit 3"},
                progress_callback=progress,
            )
            out = structured(result)
            assert out["exitCode"] == 3, out
            assert out["stdout"] == {"tail": "hello from the repo\n", "bytes": 20, "truncated": False}, out
            assert out["stderr"]["tail"] == "to-stderr\n", out
            assert out["created"] and out["released"] and not out["kept"], out
            assert out["sync"]["files"] >= 2 and out["sync"]["sentFiles"] >= 2, out["sync"]
            for key in ("acquireMs", "syncMs", "commandMs", "releaseMs"):
                assert key in out["timing"], out["timing"]
            assert "stdout: hello from the repo" in progress.messages, progress.messages
            assert "stderr: to-stderr" in progress.messages, progress.messages

        await check("a failing command's exit code is in the result, with output and sync figures", failing_command)

        async def long_output():
            script = "i=0; while [ $i -lt 3000 ]; do echo line-$i; i=$((i+1)); done"
            out = structured(
                await client.call_tool("run", {"command": script, "sync": False, "maxOutputBytes": 100})
            )
            so = out["stdout"]
            assert so["truncated"] and so["tail"].endswith("line-2999\n"), so
            assert len(so["tail"].encode()) <= 100, so
            whole = Path(so["file"]).read_text()
            assert len(whole.encode()) == so["bytes"], (len(whole), so["bytes"])
            assert whole.startswith("line-0\nline-1\n") and Path(so["file"]).is_relative_to(
                Path(machine.env["XDG_STATE_HOME"])
            ), so["file"]
            assert any(so["file"] in w for w in out["warnings"]), out["warnings"]

        await check("long output is cut to a tail, the whole kept in a file under the state dir", long_output)

        lease = {}

        async def warmup_and_status():
            box = structured(await client.call_tool("warmup", {}))
            assert box["leaseId"].startswith("cbx_"), box
            assert box["claimed"], box
            lease["id"] = box["leaseId"]
            st = structured(await client.call_tool("status", {"id": box["leaseId"], "waitSecs": 60}))
            assert st["ready"] and st["leaseId"] == box["leaseId"], st
            listed = structured(await client.call_tool("list", {}))["boxes"]
            assert any(b["leaseId"] == lease["id"] and b["claimed"] for b in listed), listed
            out = structured(await client.call_tool("run", {"id": lease["id"], "command": ["cat", "hello.txt"]}))
            assert out["exitCode"] == 0 and out["stdout"]["tail"] == "hello from the repo\n", out
            assert out["kept"] and not out["created"], out

        await check("warmup leases a box; status, list and run reach it by id", warmup_and_status)

        async def cancel_mid_command():
            assert "id" in lease, "no lease (warmup failed)"
            progress = Progress()
            started = progress.event_for("stdout: started")
            script = "echo $$ > cmd.pid; sleep 300 & echo $! > child.pid; echo started; wait"
            async with anyio.create_task_group() as tg:

                async def call():
                    await client.call_tool(
                        "run", {"id": lease["id"], "command": script}, progress_callback=progress
                    )

                tg.start_soon(call)
                with anyio.fail_after(120):
                    await started.wait()
                # Cancelling the call sends notifications/cancelled for it.
                tg.cancel_scope.cancel()
            # The server answers later calls once the cancelled run has stopped its command.
            out = structured(
                await client.call_tool("run", {"id": lease["id"], "sync": False, "command": PIDS_ALIVE})
            )
            assert out["stdout"]["tail"] == "gone cmd.pid\ngone child.pid\n", out["stdout"]

        await check("cancelling a run stops the remote command and what it started", cancel_mid_command)

        async def timeout():
            assert "id" in lease, "no lease (warmup failed)"
            out = structured(
                await client.call_tool(
                    "run", {"id": lease["id"], "sync": False, "command": "echo before; sleep 300", "timeoutSecs": 1}
                )
            )
            assert out["timedOut"] is True and out["exitCode"] == 124, out
            assert out["stdout"]["tail"] == "before\n", out["stdout"]

        await check("timeoutSecs stops the command; the result says timedOut, exit code 124", timeout)

        async def detached_and_download():
            assert "id" in lease, "no lease (warmup failed)"
            out = structured(
                await client.call_tool(
                    "run", {"id": lease["id"], "sync": False, "detach": True, "command": "echo one; echo two"}
                )
            )
            assert out["runId"], out
            logs = structured(await client.call_tool("logs", {"run": out["runId"], "follow": True}))
            assert logs["output"]["tail"] == "one\ntwo\n", logs
            structured(
                await client.call_tool(
                    "run", {"id": lease["id"], "sync": False, "command": "mkdir -p out && echo data > out/r.txt"}
                )
            )
            got = structured(
                await client.call_tool("download", {"id": lease["id"], "remote": "out/r.txt", "local": "fetched"})
            )
            assert got["bytes"] == 5, got
            assert (machine.repo / "fetched").read_text() == "data\n", got

        await check("a detached run's logs; download brings a file home", detached_and_download)

        async def wait_and_kill():
            assert "id" in lease, "no lease (warmup failed)"
            out = structured(
                await client.call_tool(
                    "run", {"id": lease["id"], "sync": False, "detach": True, "command": "exit 7"}
                )
            )
            waited = structured(await client.call_tool("wait", {"run": out["runId"]}))
            assert waited["exitCode"] == 7, waited
            out = structured(
                await client.call_tool(
                    "run", {"id": lease["id"], "sync": False, "detach": True, "command": "sleep 3600"}
                )
            )
            killed = structured(await client.call_tool("kill", {"run": out["runId"]}))
            assert killed["stopped"], killed
            waited = structured(await client.call_tool("wait", {"run": out["runId"]}))
            assert waited["exitCode"] == 143, waited

        await check("wait gives a detached run's exit code; kill stops one", wait_and_kill)

        async def runs_fork_workspaces():
            assert "id" in lease, "no lease (warmup failed)"
            runs = structured(await client.call_tool("runs", {"id": lease["id"]}))["runs"]
            assert any(r["exitCode"] == 7 and r["state"] == "exited" for r in runs), runs
            out = structured(
                await client.call_tool(
                    "run", {"id": lease["id"], "workspace": "agent-2", "command": "pwd"}
                )
            )
            assert out["exitCode"] == 0 and "agent-2" in out["stdout"]["tail"], out
            listed = structured(await client.call_tool("workspaces", {"id": lease["id"]}))
            names = [w["name"] for w in listed["workspaces"]]
            assert names[0] == "main" and "agent-2" in names, listed
            forked = structured(await client.call_tool("fork", {"id": lease["id"], "count": 2}))
            assert len(forked["forks"]) == 2 and not forked["failed"], forked
            for f in forked["forks"]:
                structured(await client.call_tool("stop", {"id": f["leaseId"]}))

        await check("runs lists detached runs; run in a workspace, workspaces lists it; fork makes leases", runs_fork_workspaces)

        async def shard():
            out = structured(
                await client.call_tool(
                    "shard",
                    {"count": 2, "command": "echo shard {{index}}/{{total}} $CRABBOX_SHARD_INDEX; test {{index}} = 1"},
                )
            )
            assert out["exitCode"] == 1, out
            assert [s["exitCode"] for s in out["shards"]] == [0, 1], out
            assert out["uploads"] == 1 and out["plan"]["forked"], out
            assert "[1/2] shard 1/2 1\n" in out["stdout"]["tail"], out
            assert "[2/2] shard 2/2 2\n" in out["stdout"]["tail"], out
            await expect_protocol_error(client, "shard", {"count": 21, "command": "true"}, "shard.maxCount")

        await check("shard: synced once, forked, one verdict; over the cap refused", shard)

        async def lifecycle():
            assert "id" in lease, "no lease (warmup failed)"
            if machine.provider == "local":
                e = await expect_protocol_error(client, "pause", {"id": lease["id"]}, "local")
                assert e.data["kind"] == "usage", e
                return
            out = structured(await client.call_tool("pause", {"id": lease["id"]}))
            assert out["state"] == "paused" and not out["already"], out
            out = structured(await client.call_tool("resume", {"id": lease["id"]}))
            assert out["state"] == "running", out
            snap = structured(await client.call_tool("snapshot", {"id": lease["id"], "name": "mcp-snap"}))
            assert snap["snapshot"]["id"] and "mcp-snap" in snap["snapshot"]["names"], snap
            url = structured(await client.call_tool("url", {"id": lease["id"], "port": 8000}))
            assert url["port"] == 8000 and "8000" in url["url"], url

        await check("pause, resume, snapshot and url where the provider has them; refused where not", lifecycle)

        async def bad_input():
            e = await expect_protocol_error(client, "no-such-tool", {}, "tool not found")
            await expect_protocol_error(client, "run", {"command": 5}, "command: expected a string")
            await expect_protocol_error(client, "run", {"command": "true", "timeoutSecs": "ten"}, "invalid type")
            await expect_protocol_error(client, "run", {"comand": "true"}, "unknown field `comand`")
            await expect_protocol_error(client, "run", {"command": ""}, "command: it is empty")
            await expect_protocol_error(client, "status", {"id": 7}, "invalid type")
            e = await expect_protocol_error(client, "stop", {"id": NOT_OURS}, NOT_OURS)
            assert e.code == -32602 and e.data["kind"] == "notFound" and e.data["exitCode"] == 4, e
            await expect_protocol_error(client, "status", {"id": NOT_OURS}, NOT_OURS)
            await expect_protocol_error(client, "run", {"id": NOT_OURS, "command": "true"}, NOT_OURS)
            await expect_protocol_error(client, "list", {"root": "/nonexistent/dir"}, "not a directory")
            await expect_protocol_error(client, "list", {"provider": "nope"}, 'unknown provider "nope"')
            await expect_protocol_error(
                client, "run", {"command": "true", "env": {"CRABBOX_E2B_API_KEY": "x"}}, "credential"
            )
            # Still serving.
            structured(await client.call_tool("list", {}))

        await check("bad input is a protocol error naming the problem; the server keeps serving", bad_input)

        if secret:

            async def masked():
                out = structured(
                    await client.call_tool(
                        "run", {"command": "echo k=$PLANTED; echo $PLANTED >&2", "sync": False, "env": {"PLANTED": secret}}
                    )
                )
                text = json.dumps(out)
                assert secret not in text and secret[4:] not in text, "the API key is in the result"
                assert out["stdout"]["tail"] == "k=****\n", out["stdout"]

            await check("the API key never appears in a result", masked)

        async def stop():
            assert "id" in lease, "no lease (warmup failed)"
            out = structured(await client.call_tool("stop", {"id": lease["id"]}))
            assert out["leaseId"] == lease["id"] and out["alreadyGone"] is False, out
            listed = structured(await client.call_tool("list", {}))["boxes"]
            assert not any(b["leaseId"] == lease["id"] for b in listed), listed
            await expect_protocol_error(client, "stop", {"id": lease["id"]}, lease["id"])

        await check("stop releases the lease; a second stop is refused", stop)


async def http_check(binary, machine, report):
    proc = subprocess.Popen(
        [binary, "mcp", "--http", "127.0.0.1:0"],
        cwd=machine.repo,
        env=machine.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = await anyio.to_thread.run_sync(proc.stderr.readline)
        assert "serving MCP at " in line, f"no address line: {line!r}"
        url = line.split("serving MCP at ", 1)[1].strip()
        assert url.startswith("http://127.0.0.1:"), url
        async with Client(url) as client:
            names = {t.name for t in (await client.list_tools()).tools}
            assert names == TOOLS, names
            out = structured(await client.call_tool("run", {"command": "exit 4", "sync": False}))
            assert out["exitCode"] == 4, out
        refused = subprocess.run(
            [binary, "mcp", "--http", "0.0.0.0:0"], env=machine.env, cwd=machine.repo,
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )
        assert refused.returncode == 2 and "not a loopback address" in refused.stderr, refused
        assert refused.stdout == "", refused.stdout
        report(True, "http: Streamable HTTP on loopback serves the tools; other addresses are refused")
    except Exception as exc:  # noqa: BLE001
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        report(False, f"http: {detail}")
    finally:
        stop_process(proc)


async def main_async(binary, emulator):
    results = {"passed": 0, "failed": 0}

    def report(ok, line):
        results["passed" if ok else "failed"] += 1
        print(f"{'ok  ' if ok else 'FAIL'} {line}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        local = Machine(tmp, "local", {})
        await checks_for(local, binary, report)
        await http_check(binary, local, report)

    api_key = "e2b_" + secrets.token_hex(20)
    try:
        proc, ready = start_emulator(emulator, api_key)
    except Exception as exc:  # noqa: BLE001
        report(False, f"e2b: start emulator: {exc}")
        return results
    try:
        env = {
            "E2B_API_KEY": api_key,
            "E2B_API_URL": ready["api_url"],
            "E2B_SANDBOX_URL": ready["sandbox_url"],
        }
        with tempfile.TemporaryDirectory() as tmp:
            await checks_for(Machine(tmp, "e2b", env), binary, report, secret=api_key)
    finally:
        stop_process(proc)
    return results


def main():
    binary = os.environ.get("CRABBOX_BIN")
    emulator = os.environ.get("E2B_EMULATOR_BIN")
    if not binary or not emulator:
        print("set CRABBOX_BIN and E2B_EMULATOR_BIN", file=sys.stderr)
        return 2
    results = anyio.run(main_async, binary, emulator)
    print(f"{results['passed']} passed, {results['failed']} failed")
    return 1 if results["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())

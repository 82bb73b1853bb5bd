"""docs/python.md, run: every block that starts with `# file: NAME` is written to a directory as NAME, and
every `console` block is run there — `ferry run ...` starts a node (on free ports, which the curl lines then
use), `curl ...` and `python3 ...` run and their output must be what the guide shows."""
import os
import re
import shlex
import subprocess
import tempfile
import unittest

from harness import BUILD_DIR, FERRY_BIN, SOURCE_DIR, Ferry, free_port

GUIDE = os.path.join(SOURCE_DIR, "docs", "python.md")
HAVE_PYTHON = os.path.exists(os.path.join(BUILD_DIR, "libferry_runtime_python.so"))


def blocks(text):
    """(language, body) of each fenced block, in order."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w*)\n(.*?)^```$", text, re.M | re.S)]


def commands(console):
    """(command, expected output lines) of each `$ ` line of a console block."""
    out = []
    for line in console.splitlines():
        if line.startswith("$ "):
            out.append((line[2:], []))
        elif out:
            out[-1][1].append(line)
    return out


@unittest.skipUnless(HAVE_PYTHON, "this build has no python runtime")
class PythonGuideTest(unittest.TestCase):
    def test_every_block_of_the_guide_runs_as_shown(self):
        with open(GUIDE) as f:
            guide = blocks(f.read())
        files = [b for b in guide if b[1].startswith("# file: ")]
        consoles = [b[1] for b in guide if b[0] == "console"]
        self.assertGreaterEqual(len(files), 8)
        self.assertGreaterEqual(len(consoles), 7)
        with tempfile.TemporaryDirectory() as d:
            for _, body in files:
                name = body.splitlines()[0][len("# file: "):].strip()
                with open(os.path.join(d, name), "w") as f:
                    f.write(body)
            for console in consoles:
                with self.subTest(console=console.splitlines()[0]):
                    self.run_console(console, d)

    def run_console(self, console, cwd):
        node = None
        try:
            for command, expected in commands(console):
                argv = shlex.split(command)
                if argv[:2] == ["ferry", "run"]:
                    node = Ferry(target=argv[2:], cwd=cwd, timeout=120)
                    continue
                if argv[0] == "curl":
                    if node:
                        argv = [a.replace("127.0.0.1:8000", f"127.0.0.1:{node.port}") for a in argv]
                    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60)
                elif argv[0] == "python3":
                    with tempfile.TemporaryDirectory() as state:
                        env = dict(os.environ, PYTHONPATH=os.path.join(SOURCE_DIR, "python"), FERRY_BIN=FERRY_BIN,
                                   FERRY_STATE_DIR=state, FERRY_HTTP_PORT="0",
                                   FERRY_ADDRESS=f"http://127.0.0.1:{free_port()}")
                        done = subprocess.run(["/usr/bin/python3", *argv[1:]], cwd=cwd, env=env,
                                              capture_output=True, text=True, timeout=300)
                else:
                    self.fail(f"the guide runs a command the test does not know: {command}")
                self.assertEqual(done.returncode, 0, f"{command}: {done.stderr}")
                self.assertEqual(done.stdout.rstrip("\n"), "\n".join(expected), command)
        finally:
            if node:
                node.stop()
                node.close()


if __name__ == "__main__":
    unittest.main()

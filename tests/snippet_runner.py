"""Run many Python scripts, each as if started alone, without paying the imports of torch and transformers
for every one (`tests/test_docs_snippets.py`).

Started as ``python snippet_runner.py``: imports torch and transformers once (not fwp_hf: a script may need to
load a checkpoint's remote code before fwp_hf is imported), then reads one request per line on stdin,
``{"script": PATH, "cwd": DIR, "stdout": FILE, "stderr": FILE, "timeout": SECONDS}``, runs the script in a
forked child (its own working directory, ``__main__`` namespace, output files) and answers one line
``{"returncode": N}`` on stdout (1 for an uncaught exception, whose traceback ends the stderr file; 124 when
the child ran past its timeout and was killed).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time


def preload() -> None:
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from transformers import (  # noqa: F401  (the lazy modules every snippet touches)
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForSeq2SeqLM,
        AutoTokenizer,
        CompileConfig,
        PreTrainedModel,
        pipeline,
    )


def run_child(request: dict) -> None:
    """In the forked child: run the script as __main__ and exit with its status."""
    import runpy
    import traceback

    os.chdir(request["cwd"])
    sys.path[0] = request["cwd"]
    with open(request["stdout"], "w") as out, open(request["stderr"], "w") as err:
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
    sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
    status = 0
    try:
        runpy.run_path(request["script"], run_name="__main__")
    except SystemExit as exit_request:
        status = exit_request.code if isinstance(exit_request.code, int) else (0 if exit_request.code is None else 1)
        if not isinstance(exit_request.code, int) and exit_request.code is not None:
            print(exit_request.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - reported as Python reports it
        traceback.print_exc()
        status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def main() -> None:
    preload()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            run_child(request)
        deadline = time.monotonic() + request["timeout"]
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                returncode = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                returncode = 124
                break
            time.sleep(0.05)
        print(json.dumps({"returncode": returncode}), flush=True)


if __name__ == "__main__":
    main()

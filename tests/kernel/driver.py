"""Performs the operations listed in argv[1] (JSON), in order, for the kernel tests.

Run with `python -S -B` so that start-up writes nothing; stdlib only.
"""

import json
import os
import sys

os.umask(0)
for op in json.loads(sys.argv[1]):
    kind, path = op[0], op[1]
    if kind == "chdir":
        os.chdir(path)
    elif kind == "exec":
        pid = os.fork()
        if pid == 0:
            try:
                os.execv(path, [path])
            finally:
                os._exit(127)
        os.waitpid(pid, 0)
    elif kind == "create":
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, op[2]))
    elif kind == "modify":
        os.close(os.open(path, os.O_WRONLY))
    elif kind == "ftruncate":
        fd = os.open(path, os.O_WRONLY)
        os.ftruncate(fd, 0)
        os.close(fd)
    elif kind == "chmod":
        os.chmod(path, op[2])
    elif kind == "rename":
        os.rename(path, op[2])
    elif kind == "link":
        os.link(path, op[2])
    elif kind == "truncate":
        os.truncate(path, 0)
    elif kind == "delete":
        os.unlink(path)
    else:
        sys.exit(f"unknown operation {kind}")
    print(json.dumps(op), flush=True)

"""Random and mutated YAML and JSON through every CLI verb: exit 0 or 1, bounded, no traceback.

The inputs start from the files in examples/ (policies, events, the cluster) and are
mutated (byte flips, truncation, duplicated lines, inserted aliases, deep nesting,
control characters, huge numbers, tags, bad UTF-8) or drawn as random documents made of
the policy language's field names. Each input is given to `validate`, `compile`,
`compile --pods`, `explain` (as the policy and as the event) and to the standalone
sensor's readers, in-process; a handful go through the installed command to show that
no traceback reaches stderr. The in-process runs happen under an address-space limit, so
an input that makes the CLI allocate without bound fails the test instead of the machine.
"""

from __future__ import annotations

import contextlib
import io
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stockade.cli import main
from stockade.policy.loader import KNOWN_FIELDS, SourceError, iter_policies
from stockade.sensor.containers import ContainersError, load_containers

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
POLICY = EXAMPLES / "policies/drift-prevention.yaml"
EVENT = EXAMPLES / "events/new-binary-in-web-pod.json"
SEEDS = [p.read_bytes() for p in sorted(EXAMPLES.rglob("*")) if p.suffix in (".yaml", ".json")] + [
    b'{"/sys/fs/cgroup/unified": {"kubernetes": {"namespace": "shop"}}}'
]
SNIPPETS = [
    b"\x00", b"\x01", b"\x1b", "\ufffe".encode(), b"\xff\xfe", b"\xef\xbb\xbf", b"\t", b"\r\n",
    b"&a ", b"*a", b"<<: *a\n", b"- &a [x, x, x]\n- [*a, *a, *a]\n", b"? ", b": ", b"\n- ",
    b"---\n", b"...\n", b"%YAML 1.1\n", b"'", b'"', b"\\u0000", b"\\ud800", b"\\ud83d\\ude00",
    b"!!python/object:os.system ", b"!!binary ", b"!!set ", b"!!int ", b"!<tag:x> ", b"!x ",
    b"[" * 300, b"{a: " * 80, b"9" * 5000, b"-9" * 30, b"1e999", b"0x" + b"f" * 40,
    b"190:20:30", b"2024-13-45", b"~", b"null", b"true", b"NaN", "é😀".encode(),
    b"kind: PodList\nitems: [", b"metadata: [a]\n", b"metadata: 5\n", b"name: [x]\n",
    b"processName: [\"a\\0b\"]\n", b"spec: {nodeName: 3}\n", b"labels: {a: [b]}\n",
]  # fmt: skip
NAMES = [*KNOWN_FIELDS, "kind", "metadata", "items", "spec", "labels", "nodeName", "part"]
NAMES += ["operation", "container", "kubernetes", "apiVersion", "Pod", "PodList", "Namespace"]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        match draw(st.sampled_from(["flip", "truncate", "insert", "duplicate", "delete"])):
            case "flip" if data:
                data[min(at, len(data) - 1)] = draw(st.integers(0, 255))
            case "truncate":
                del data[at:]
            case "insert":
                data[at:at] = draw(st.sampled_from(SNIPPETS))
            case "duplicate":  # a line twice: duplicate keys, mostly
                start = data.rfind(b"\n", 0, at) + 1
                end = data.find(b"\n", at)
                line = data[start : end + 1 if end >= 0 else len(data)]
                data[start:start] = line
            case "delete":
                del data[at : at + draw(st.integers(1, 40))]
    return bytes(data)


SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**30)
    | st.floats()
    | st.sampled_from(NAMES)
    | st.text(max_size=12)
)
TREES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(NAMES) | st.text(max_size=6), inner, max_size=5)
    ),
    max_leaves=30,
)


@st.composite
def random_document(draw: st.DrawFn) -> bytes:
    tree = draw(TREES)
    if draw(st.booleans()):
        return json.dumps(tree).encode()
    return yaml.safe_dump(tree, allow_unicode=draw(st.booleans())).encode()


INPUTS = mutated() | random_document()

# Each verb given the input file at the place that reads it.
VERBS: list[Callable[[Path], list[str | Path]]] = [
    lambda p: ["validate", p],
    lambda p: ["compile", p, "--summary"],
    lambda p: ["compile", POLICY, "--pods", p, "--node", "node-a", "--summary"],
    lambda p: ["explain", "--policy", p, "--event", EVENT],
    lambda p: ["explain", "--policy", POLICY, "--event", p],
]
SECONDS_PER_RUN = 5.0
HEADROOM = 1 << 30  # bytes of address space an input may make the CLI take


def run_cli(args: list[str | Path]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main([str(a) for a in args])
    return code, out.getvalue()


def read_for_the_sensor(path: Path) -> None:
    """What `stockade sensor --standalone` reads: the policy and the containers file."""
    with contextlib.suppress(SourceError):
        list(iter_policies([path]))
    with contextlib.suppress(ContainersError):
        load_containers(path)


@contextlib.contextmanager
def address_space_limit() -> Iterator[None]:
    """Allocations beyond HEADROOM raise MemoryError while inside."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as f:
        used = int(f.read().split()[0]) * resource.getpagesize()
    limit = used + HEADROOM if hard == resource.RLIM_INFINITY else min(hard, used + HEADROOM)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="stockade-fuzz-") as d:
        yield Path(d)


@settings(
    max_examples=2000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=INPUTS, suffix=st.sampled_from([".yaml", ".json"]))
def test_every_verb_exits_0_or_1_quickly(workdir: Path, data: bytes, suffix: str) -> None:
    path = workdir / f"input{suffix}"
    path.write_bytes(data)
    with address_space_limit():
        for verb in VERBS:
            start = time.monotonic()
            code, output = run_cli(verb(path))
            assert code in (0, 1), output
            assert "Traceback" not in output
            if code == 1:  # every line names the file it is about
                for line in output.splitlines():
                    assert line.startswith((f"{path}: ", f"{POLICY}: ", "can't compile: ")), line
            assert time.monotonic() - start < SECONDS_PER_RUN, verb(path)
        start = time.monotonic()
        read_for_the_sensor(path)
        assert time.monotonic() - start < SECONDS_PER_RUN


def stockade(*args: str | Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("stockade", path=str(Path(sys.executable).parent))
    command = [exe] if exe else [sys.executable, "-m", "stockade.cli"]
    return subprocess.run(
        [*command, *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )


def test_no_traceback_reaches_the_installed_command(tmp_path: Path) -> None:
    """A few hundred mutated files through the real command: every line names its file."""
    files: list[Path] = []

    @settings(max_examples=300, database=None, deadline=None)
    @given(data=INPUTS)
    def collect(data: bytes) -> None:
        path = tmp_path / f"f{len(files)}.yaml"
        path.write_bytes(data)
        files.append(path)

    collect()
    result = stockade("validate", *files)
    assert result.returncode in (0, 1)
    assert "Traceback" not in result.stderr
    for line in (result.stdout + result.stderr).splitlines():
        assert line.startswith(str(tmp_path / "f")), line
    for path in files[:3]:
        for verb in VERBS[1:]:
            result = stockade(*verb(path))
            assert result.returncode in (0, 1)
            assert "Traceback" not in result.stderr

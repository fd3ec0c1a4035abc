"""Load benchmark of the tracking server against its peers, with wrk, on 127.0.0.1.

    python benchmarks/bench_tracking.py [--duration 10] [--connections 64] [--soak 0]

What it runs, one after the other, each for ``--duration`` seconds (wrk with one thread
per CPU it may use: ``-t1`` pinned to CPU 1, ``-t2`` when it shares both cores):

- msgtrack's tracking server (``msgtrack tracking-server``) pinned to CPU 0 with wrk on
  CPU 1, for the three requests of the mix: a click from a returning visitor (visitor
  and session cookies sent), a first click (no cookies: both are set), an open; then
  the returning-visitor click again at about half the measured rate, for its p99;
- the same with ``--workers 2`` and nothing pinned (wrk shares the two cores);
- nginx (Debian's) answering ``return 302`` with its access log on, one worker on CPU 0,
  run from a config in a temp dir on a free port;
- pytracking's click decoding (``get_click_tracking_result``) in a Django view under
  gunicorn (one sync worker on CPU 0; the settings ``startproject`` writes: its apps and
  middleware, DEBUG off), installed into a throwaway venv
  (``/tmp/msgtrack-bench-venv``), not into msgtrack's dependencies.
- ``--soak SECONDS``: returning-visitor clicks for that long against one worker, paced
  at up to 8,000/s (16 connections, 2 ms apart; 5,600/s measured), sampling the server's RSS every 5 s
  (memory must stay flat). ``--only ''`` runs the soak alone.
- ``--scaling PAIRS``: that many interleaved pairs of runs, one worker on CPU 0 (wrk on
  CPU 1) then two workers unpinned, first of msgtrack's returning-visitor click, then of
  nginx. Each line gives the CPUs kept busy (``/proc/stat``, softirq included: loopback
  TCP runs there) and the ceiling ``2 / busy`` of the 1-core run: two workers share both
  cores with wrk, so they cannot pass it, and the faster the server, the lower it is.
  Interleaving keeps a noisy host's drift out of the ratios.
- ``--ratios ROUNDS``: that many interleaved rounds of msgtrack's returning-visitor click,
  nginx and pytracking (each on CPU 0, wrk on CPU 1, all three servers up throughout),
  with the ratios of each round and their medians: the peers seconds apart rather than
  minutes, for a host whose speed drifts.

Every run also records the CPU time the hypervisor stole from this VM (``/proc/stat``):
on a shared host a run can lose most of a core to a neighbour, and then it measures the
neighbour. ``--scaling`` and ``--ratios`` give their medians over the rounds with at most
``STEAL_LIMIT`` of a CPU stolen, and over all rounds.

Every server writes one log line per request. The table goes to stdout and to
``benchmarks/out/tracking.md``. Needs ``wrk``, ``taskset`` and ``nginx`` (Debian).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from msgtrack.config import load_settings
from msgtrack.links.addresses import SESSION_COOKIE, VISITOR_COOKIE
from msgtrack.links.sign import KeyRing, LinkToken
from msgtrack.tracking import snapshot

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out" / "tracking.md"
VENV = Path("/tmp/msgtrack-bench-venv")
DELIVERY, MESSAGE, CLICK, OPEN = 1, 123456, 10, 12
DESTINATION = "https://shop.example/spring?utm_source=newsletter"
USER_AGENT = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"
)
VISITOR_ID = "Q2xpY2tpbmdWaXNpdG9yMD"  # a returning visitor's cookie (22 characters)
HALF_LOAD_DELAY_MS = 4  # per-connection pause used to run at about half the measured rate
SOAK_CONNECTIONS, SOAK_DELAY_MS = 16, 2
# A run during which the hypervisor took more than this share of a CPU measured the host,
# not the server: --scaling and --ratios leave such rounds out of their medians.
STEAL_LIMIT = 0.05


@dataclass
class Result:
    name: str
    rps: float
    p50_ms: float
    p99_ms: float
    errors: str = ""
    steal: float = 0.0  # CPUs the hypervisor took during the run, on average
    busy: float = 0.0  # CPUs kept busy during the run (all processes and the kernel)
    cpu_us: float = 0.0  # busy CPU time per request, µs
    wrk_us: float = 0.0  # wrk's own CPU time per request, µs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_up(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited {proc.returncode} before answering {url}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


@contextmanager
def started(command: list[str], url: str, env: dict[str, str] | None = None) -> Iterator[int]:
    """Run ``command`` until the block ends (SIGTERM, then SIGKILL); yields its pid."""
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/tmp"
    )
    try:
        wait_until_up(url, proc)
        yield proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wrk(
    name: str,
    url: str,
    *,
    duration: int,
    connections: int,
    headers: tuple[str, ...] = (),
    cpu: str | None = "1",
    delay_ms: int | None = None,
    script: Path | None = None,
) -> Result:
    """One wrk run; ``script`` (a Lua file, e.g. ``rotating_script``) makes the requests.

    wrk runs one thread per CPU it may use: one pinned to ``cpu``, or one per CPU when
    unpinned (a single thread sharing a core with a worker gets only its share of that
    core and leaves both workers waiting for requests)."""
    threads = 1 if cpu is not None else os.cpu_count() or 1
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration}s",
        "--latency",
        "--timeout",
        "5s",
    ]
    for header in headers:
        command += ["-H", header]
    delay_script = None
    if delay_ms is not None and script is None:
        delay_script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
        delay_script.write(f"function delay()\n  return {delay_ms}\nend\n")
        delay_script.close()
        script = Path(delay_script.name)
    if script is not None:
        command += ["-s", str(script)]
    command.append(url)
    if cpu is not None:
        command = ["taskset", "-c", cpu, *command]
    before, start = _cpu_times(), time.monotonic()
    try:
        out = subprocess.run(
            command, capture_output=True, text=True, timeout=duration + 60, check=True
        ).stdout
    finally:
        if delay_script is not None:
            os.unlink(delay_script.name)
    after, elapsed = _cpu_times(), time.monotonic() - start
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    requests = max(1.0, rps * duration)
    busy_seconds = after.busy - before.busy
    errors = []
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors.append(f"{m.group(1)} non-2xx/3xx")
    if m := re.search(r"Socket errors: (.*)", out):
        errors.append(m.group(1).strip())
    return Result(
        name,
        rps,
        _percentile(out, "50"),
        _percentile(out, "99"),
        "; ".join(errors),
        steal=(after.steal - before.steal) / elapsed,
        busy=busy_seconds / elapsed,
        cpu_us=busy_seconds / requests * 1e6,
        wrk_us=(after.children - before.children) / requests * 1e6,
    )


def _percentile(out: str, pct: str) -> float:
    m = re.search(rf"^\s+{pct}(?:\.000)?%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    if m is None:
        return float("nan")
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


# -- msgtrack ----------------------------------------------------------------------------------


TOKENS = 10_000  # distinct messages the load rotates through


@dataclass(frozen=True)
class Visit:
    """One message's requests: its click and open paths and its session cookie."""

    click: str
    open: str
    session: str


def make_home(tmp: Path, tokens: int = TOKENS) -> tuple[dict[str, str], list[Visit]]:
    """A home with keys and one published delivery; returns (env, one Visit per message,
    ``tokens`` distinct messages)."""
    home = tmp / "home"
    settings = load_settings(home)
    keyring = KeyRing.generate()
    keyring.save(settings.keys_file)
    snapshot.publish(
        settings.snapshots_dir,
        DELIVERY,
        [
            snapshot.PublishedUrl(CLICK, DELIVERY, "click", DESTINATION, "spring", True),
            snapshot.PublishedUrl(OPEN, DELIVERY, "open", "", "", True),
        ],
    )
    env = dict(os.environ)
    env.update(
        MSGTRACK_HOME=str(home),
        MSGTRACK_DB=f"sqlite:///{tmp / 'unused.db'}",
        PYTHONPATH=str(ROOT / "src"),
    )
    visits = [
        Visit(
            "/c/" + keyring.sign_link(LinkToken(DELIVERY, message, CLICK)),
            "/o/" + keyring.sign_link(LinkToken(DELIVERY, message, OPEN)),
            keyring.sign_session(DELIVERY, message),
        )
        for message in range(MESSAGE, MESSAGE + tokens)
    ]
    return env, visits


def rotating_script(
    path: Path, port: int, visits: list[Visit], kind: str, delay_ms: int | None = None
) -> Path:
    """A wrk Lua script whose ``request()`` cycles through one precomputed request per
    message (``kind``: returning, first or open), so every request carries a different
    token (and session cookie) as real traffic does."""
    lines = ["local requests = {"]
    for visit in visits:
        target = visit.open if kind == "open" else visit.click
        head = [f"GET {target} HTTP/1.1", f"Host: 127.0.0.1:{port}", f"User-Agent: {USER_AGENT}"]
        if kind == "returning":
            head.append(f"Cookie: {VISITOR_COOKIE}={VISITOR_ID}; {SESSION_COOKIE}={visit.session}")
        crlf = "\\r\\n"  # Lua's escape, in the script's text
        lines.append(f'  "{crlf.join(head)}{crlf}{crlf}",')
    lines += [
        "}",
        "local n, i = #requests, 0",
        "function request()",
        "  i = i % n + 1",
        "  return requests[i]",
        "end",
    ]
    if delay_ms is not None:
        lines += ["function delay()", f"  return {delay_ms}", "end"]
    path.write_text("\n".join(lines) + "\n")
    return path


def msgtrack_command(port: int, workers: int) -> list[str]:
    command = [sys.executable, "-m", "msgtrack", "tracking-server", "--port", str(port)]
    if workers > 1:
        return [*command, "--workers", str(workers)]
    return ["taskset", "-c", "0", *command]


def bench_msgtrack(tmp: Path, duration: int, connections: int) -> list[Result]:
    env, visits = make_home(tmp)
    results = []
    for workers in (1, 2):
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        cpu = "1" if workers == 1 else None
        label = "1 core" if workers == 1 else f"{workers} workers, unpinned"

        def script(kind: str, delay_ms: int | None = None, port: int = port) -> Path:
            path = tmp / f"{kind}-{port}-{delay_ms}.lua"
            return rotating_script(path, port, visits, kind, delay_ms)

        with started(msgtrack_command(port, workers), f"{base}/health", env):
            run = {"duration": duration, "connections": connections, "cpu": cpu}
            returning_result = wrk(
                f"msgtrack click, returning visitor ({label})",
                base,
                script=script("returning"),
                **run,
            )
            results.append(returning_result)
            results.append(
                wrk(f"msgtrack click, first visit ({label})", base, script=script("first"), **run)
            )
            results.append(wrk(f"msgtrack open ({label})", base, script=script("open"), **run))
            if workers == 1:
                # about half the rate just measured: connections x (1 / delay)
                half = returning_result.rps / 2
                conns = max(1, round(half * HALF_LOAD_DELAY_MS / 1000))
                results.append(
                    wrk(
                        "msgtrack click, returning visitor, ~half load (1 core)",
                        base,
                        script=script("returning", HALF_LOAD_DELAY_MS),
                        duration=duration,
                        connections=conns,
                        cpu="1",
                    )
                )
    return results


def soak(tmp: Path, seconds: int) -> str:
    env, visits = make_home(tmp / "soak")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    samples: list[int] = []
    with started(msgtrack_command(port, 1), f"{base}/health", env) as pid:
        # paced (~8k/s), not flat out: a shared machine
        script = rotating_script(tmp / "soak.lua", port, visits, "returning", SOAK_DELAY_MS)
        command = [
            "taskset", "-c", "1", "wrk", "-t1", f"-c{SOAK_CONNECTIONS}", f"-d{seconds}s",
            "-s", str(script), base,
        ]  # fmt: skip
        load = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        while load.poll() is None:
            samples.append(_rss_kib(pid))  # taskset execs: the server's pid
            time.sleep(5)
        out = load.stdout.read() if load.stdout else ""
        written = httpx.get(f"{base}/health").json()["events_written"]
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    mib = [s / 1024 for s in samples]
    return (
        f"soak: {seconds} s of returning-visitor clicks at {rps.group(1) if rps else '?'} req/s, "
        f"{written} events written; server RSS MiB first {mib[0]:.1f}, "
        f"after 10 s {mib[min(2, len(mib) - 1)]:.1f}, max {max(mib):.1f}, last {mib[-1]:.1f} "
        f"({len(mib)} samples)"
    )


def scaling(tmp: Path, pairs: int, duration: int, connections: int) -> list[str]:
    """Interleaved 1-core / 2-worker pairs for msgtrack and for nginx; a line per pair.

    The ceiling comes from the 1-core run: it kept ``busy`` CPUs busy in all (the
    server's core plus wrk's and the kernel's work on the other, softirq included, from
    ``/proc/stat``), so two workers sharing both cores with wrk can at most reach
    ``2 / busy`` times its rate, whatever the server does.
    """
    env, visits = make_home(tmp / "scaling")
    ports = {workers: free_port() for workers in (1, 2)}
    scripts = {
        w: rotating_script(tmp / f"scaling-{w}.lua", port, visits, "returning")
        for w, port in ports.items()
    }
    lines: list[str] = []
    with ExitStack() as stack:
        # (server, workers) -> wrk's url, Lua script and headers
        targets: dict[tuple[str, int], tuple[str, Path | None, tuple[str, ...]]] = {}
        for workers, port in ports.items():
            url = f"http://127.0.0.1:{port}"
            stack.enter_context(started(msgtrack_command(port, workers), f"{url}/health", env))
            targets["msgtrack", workers] = (url, scripts[workers], ())
            if have_nginx():
                command, url = nginx_server(tmp / f"nginx-{workers}", workers)
                stack.enter_context(started(command, url))
                targets["nginx", workers] = (url, None, (f"User-Agent: {USER_AGENT}",))
        for server in ["msgtrack", "nginx"] if have_nginx() else ["msgtrack"]:
            ratios = []
            for pair in range(1, pairs + 1):
                runs = {}
                for workers in (1, 2):
                    url, script, headers = targets[server, workers]
                    runs[workers] = wrk(
                        "scaling",
                        url,
                        script=script,
                        headers=headers,
                        duration=duration,
                        connections=connections,
                        cpu="1" if workers == 1 else None,
                    )
                one, two = runs[1], runs[2]
                steal = max(one.steal, two.steal)
                ratios.append((two.rps / one.rps, steal))
                lines.append(
                    f"{server}, pair {pair}: 1 core {one.rps:,.0f}/s, {one.busy:.2f} CPUs "
                    f"busy ({one.cpu_us:.1f} µs CPU per request, wrk's own "
                    f"{one.wrk_us:.1f}); 2 workers {two.rps:,.0f}/s, {two.busy:.2f} CPUs "
                    f"busy ({two.cpu_us:.1f} µs per request): {two.rps / one.rps:.2f}x, "
                    f"ceiling 2/{one.busy:.2f} = {2 / one.busy:.2f}x; stolen "
                    f"{one.steal:.2f} / {two.steal:.2f} CPU"
                )
            lines.append(f"{server}, 2 workers / 1 core: {_medians(ratios, 'interleaved pairs')}")
    return lines


@dataclass(frozen=True)
class CpuTimes:
    """CPU-seconds since boot, summed over CPUs (``/proc/stat``)."""

    busy: float  # user, nice, system, irq, softirq: loopback TCP runs as softirq
    steal: float  # time the hypervisor gave this VM's CPUs to someone else
    children: float  # user + system of the ended child processes (the wrk runs)


def _cpu_times() -> CpuTimes:
    busy = steal = 0
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3].isdigit():
            fields = list(map(int, line.split()[1:9]))
            user, nice, system, _idle, _iowait, irq, softirq, stolen = fields
            busy += user + nice + system + irq + softirq
            steal += stolen
    tick = os.sysconf("SC_CLK_TCK")
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return CpuTimes(busy / tick, steal / tick, usage.ru_utime + usage.ru_stime)


def _medians(values: list[tuple[float, float]], what: str) -> str:
    """Median of (ratio, CPUs stolen) rounds: of the rounds the hypervisor left alone
    (stolen at most ``STEAL_LIMIT``), then of all."""
    clean = [ratio for ratio, steal in values if steal <= STEAL_LIMIT]
    every = [ratio for ratio, _ in values]
    kept = (
        f"median of the {len(clean)} of {len(values)} {what} with at most {STEAL_LIMIT:.2f} "
        f"CPU stolen: {statistics.median(clean):.2f}x (from {min(clean):.2f}x to "
        f"{max(clean):.2f}x); "
        if clean
        else f"none of the {len(values)} {what} had at most {STEAL_LIMIT:.2f} CPU stolen; "
    )
    return kept + f"median of all {len(values)}: {statistics.median(every):.2f}x"


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# -- nginx -------------------------------------------------------------------------------------


def nginx_server(prefix: Path, workers: int = 1) -> tuple[list[str], str]:
    """Command and click URL of an nginx answering ``return 302`` with its access log
    on, from a config under ``prefix``; one worker is pinned to CPU 0."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    (prefix / "logs").mkdir(parents=True)
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(
        ("user root;\n" if os.getuid() == 0 else "")  # else workers would be "nobody"
        + textwrap.dedent(
            f"""\
            worker_processes {workers};
            daemon off;
            pid {prefix}/nginx.pid;
            error_log {prefix}/logs/error.log;
            events {{ worker_connections 1024; }}
            http {{
                access_log {prefix}/logs/access.log;
                client_body_temp_path {prefix}/body;
                proxy_temp_path {prefix}/proxy;
                fastcgi_temp_path {prefix}/fastcgi;
                uwsgi_temp_path {prefix}/uwsgi;
                scgi_temp_path {prefix}/scgi;
                server {{
                    listen 127.0.0.1:{port} reuseport;
                    location / {{ return 302 {DESTINATION}; }}
                }}
            }}
            """
        )
    )
    command = [nginx, "-p", str(prefix), "-c", str(conf)]
    if workers == 1:
        command = ["taskset", "-c", "0", *command]
    return command, f"http://127.0.0.1:{port}/c/AAAAAAAAAAAAAAAAAAAAAAAAAAAA"


def have_nginx() -> bool:
    return shutil.which("nginx") is not None or Path("/usr/sbin/nginx").exists()


def bench_nginx(tmp: Path, duration: int, connections: int) -> list[Result]:
    if not have_nginx():
        return [Result("nginx: not installed (apt-get install nginx-light)", 0, 0, 0)]
    command, url = nginx_server(tmp / "nginx")
    with started(command, url):
        return [
            wrk(
                "nginx `return 302`, access log on (1 core)",
                url,
                duration=duration,
                connections=connections,
                headers=(f"User-Agent: {USER_AGENT}",),
            )
        ]


# -- pytracking in Django under gunicorn -------------------------------------------------------

DJANGO_APP = '''
"""pytracking's click decoding in a Django view, one log line per click."""
import os

import django
import pytracking
from django.conf import settings
from django.http import HttpResponseNotFound, HttpResponseRedirect
from django.urls import path

# The settings `django-admin startproject` writes (apps, middleware), DEBUG off.
settings.configure(
    DEBUG=False, ALLOWED_HOSTS=["*"], ROOT_URLCONF=__name__, SECRET_KEY="bench",
    INSTALLED_APPS=[
        "django.contrib.admin", "django.contrib.auth", "django.contrib.contenttypes",
        "django.contrib.sessions", "django.contrib.messages", "django.contrib.staticfiles",
    ],
    MIDDLEWARE=[
        "django.middleware.security.SecurityMiddleware",
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.middleware.common.CommonMiddleware",
        "django.middleware.csrf.CsrfViewMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "django.contrib.messages.middleware.MessageMiddleware",
        "django.middleware.clickjacking.XFrameOptionsMiddleware",
    ],
    TEMPLATES=[{
        "BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True,
        "OPTIONS": {"context_processors": [
            "django.template.context_processors.request",
            "django.contrib.auth.context_processors.auth",
            "django.contrib.messages.context_processors.messages",
        ]},
    }],
    DATABASES={"default": {
        "ENGINE": "django.db.backends.sqlite3", "NAME": os.environ["BENCH_DB"],
    }},
    STATIC_URL="static/",
    USE_TZ=True,
)
django.setup()
CONFIG = pytracking.Configuration(base_click_tracking_url="http://127.0.0.1/c/")
LOG = open(os.environ["BENCH_LOG"], "a", buffering=1)


def click(request, token):
    try:
        result = pytracking.get_click_tracking_result(
            token,
            request_data={"user_agent": request.META.get("HTTP_USER_AGENT"),
                          "user_ip": request.META.get("REMOTE_ADDR")},
            configuration=CONFIG,
        )
    except Exception:
        return HttpResponseNotFound()
    LOG.write(repr((result.metadata, result.request_data, result.timestamp)) + "\\n")
    return HttpResponseRedirect(result.tracked_url)


def token_for(url):
    full = pytracking.get_click_tracking_url(
        url, {"delivery": 1, "message": 123456}, configuration=CONFIG
    )
    return full.rsplit("/", 1)[1]


urlpatterns = [path("c/<str:token>", click)]

from django.core.wsgi import get_wsgi_application  # noqa: E402

application = get_wsgi_application()
'''


def pytracking_server(app_dir: Path) -> tuple[list[str], str, dict[str, str]]:
    """Command, click URL and environment of gunicorn serving pytracking's click view
    (one sync worker on CPU 0), from a throwaway venv made on first use."""
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "pytracking", "django", "gunicorn"],
            check=True,
        )
    app_dir.mkdir()
    (app_dir / "benchapp.py").write_text(DJANGO_APP)
    env = dict(
        os.environ,
        BENCH_LOG=str(app_dir / "clicks.log"),
        BENCH_DB=str(app_dir / "db.sqlite3"),
        PYTHONPATH=str(app_dir),
    )
    env.pop("VIRTUAL_ENV", None)
    token = subprocess.run(
        [str(python), "-c", f"import benchapp; print(benchapp.token_for({DESTINATION!r}))"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    port = free_port()
    command = [
        "taskset", "-c", "0", str(VENV / "bin" / "gunicorn"), "-w", "1",
        "-b", f"127.0.0.1:{port}", "--chdir", str(app_dir), "--log-level", "warning",
        "benchapp:application",
    ]  # fmt: skip
    return command, f"http://127.0.0.1:{port}/c/{token}", env


def bench_pytracking(tmp: Path, duration: int, connections: int) -> list[Result]:
    command, url, env = pytracking_server(tmp / "django")
    with started(command, url, env):
        check = httpx.get(url)
        assert check.status_code == 302 and check.headers["location"] == DESTINATION
        return [
            wrk(
                "pytracking click in Django (startproject middleware) + gunicorn (1 core)",
                url,
                duration=duration,
                connections=connections,
                headers=(f"User-Agent: {USER_AGENT}",),
            )
        ]


def ratios(tmp: Path, pairs: int, duration: int, connections: int) -> list[str]:
    """Interleaved rounds of msgtrack's returning-visitor click, nginx and pytracking,
    each on CPU 0 with wrk on CPU 1; the ratios of each round and their medians. All
    three servers run the whole time, so a round's runs are seconds apart, not minutes."""
    env, visits = make_home(tmp / "ratios")
    port = free_port()
    script = rotating_script(tmp / "ratios.lua", port, visits, "returning")
    ua = (f"User-Agent: {USER_AGENT}",)
    lines: list[str] = []
    with ExitStack() as stack:
        base = f"http://127.0.0.1:{port}"
        stack.enter_context(started(msgtrack_command(port, 1), f"{base}/health", env))
        peers: dict[str, str] = {}
        if have_nginx():
            command, peers["nginx"] = nginx_server(tmp / "nginx-ratios")
            stack.enter_context(started(command, peers["nginx"]))
        command, peers["pytracking"], peer_env = pytracking_server(tmp / "django-ratios")
        stack.enter_context(started(command, peers["pytracking"], peer_env))
        found: dict[str, list[tuple[float, float]]] = {peer: [] for peer in peers}
        for round_ in range(1, pairs + 1):
            ours = wrk("ratios", base, script=script, duration=duration, connections=connections)
            parts = [f"round {round_}: msgtrack {ours.rps:,.0f}/s (stolen {ours.steal:.2f})"]
            for peer, url in peers.items():
                theirs = wrk("ratios", url, headers=ua, duration=duration, connections=connections)
                ratio = ours.rps / theirs.rps
                found[peer].append((ratio, max(ours.steal, theirs.steal)))
                parts.append(
                    f"{peer} {theirs.rps:,.0f}/s (stolen {theirs.steal:.2f}; {ratio:.2f}x)"
                )
            lines.append(", ".join(parts))
        lines += [
            f"msgtrack returning-visitor click / {peer}: {_medians(values, 'rounds')}"
            for peer, values in found.items()
        ]
    return lines


# -- report ------------------------------------------------------------------------------------


def table(results: list[Result]) -> str:
    lines = [
        "| server and request | requests/s | p50 ms | p99 ms | CPU stolen | errors |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.name} | {r.rps:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.steal:.2f} "
            f"| {r.errors or '-'} |"
        )
    return "\n".join(lines)


def _stolen_warning(*runs: Result) -> str:
    """A warning for a ratio whose runs lost more than ``STEAL_LIMIT`` to the hypervisor."""
    worst = max(run.steal for run in runs)
    if worst <= STEAL_LIMIT:
        return ""
    return f" (not a measurement: a run had {worst:.2f} CPU stolen by the hypervisor; rerun)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--soak", type=int, default=0, help="soak seconds (0: none)")
    parser.add_argument(
        "--scaling", type=int, default=0, help="interleaved 1-core/2-worker pairs (0: none)"
    )
    parser.add_argument(
        "--ratios", type=int, default=0, help="interleaved msgtrack/peer rounds (0: none)"
    )
    parser.add_argument(
        "--only", default="msgtrack,nginx,pytracking", help="comma-separated servers to run"
    )
    args = parser.parse_args()
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is needed (apt-get install wrk util-linux)")
    only = set(args.only.split(","))
    results: list[Result] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="msgtrack-bench-tracking-") as tmp_name:
        tmp = Path(tmp_name)
        if "msgtrack" in only:
            results += bench_msgtrack(tmp, args.duration, args.connections)
        if "nginx" in only:
            results += bench_nginx(tmp, args.duration, args.connections)
        if "pytracking" in only:
            results += bench_pytracking(tmp, args.duration, args.connections)
        if args.scaling:
            notes += scaling(tmp, args.scaling, args.duration, args.connections)
        if args.ratios:
            notes += ratios(tmp, args.ratios, args.duration, args.connections)
        if args.soak:
            notes.append(soak(tmp, args.soak))
    report = table(results)
    by_name = {r.name: r for r in results}
    one = by_name.get("msgtrack click, returning visitor (1 core)")
    if one:
        for name, other in by_name.items():
            if other.rps and not name.startswith("msgtrack"):
                notes.append(
                    f"msgtrack returning-visitor click / {name.split(' ')[0]}: "
                    f"{one.rps / other.rps:.2f}x{_stolen_warning(one, other)}"
                )
        two = by_name.get("msgtrack click, returning visitor (2 workers, unpinned)")
        if two:
            notes.append(f"2 workers / 1 core: {two.rps / one.rps:.2f}x{_stolen_warning(one, two)}")
    text = report + ("\n\n" + "\n".join(f"- {n}" for n in notes) if notes else "") + "\n"
    print(text)
    out = OUT if results else OUT.with_name("tracking-soak-scaling-ratios.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        f"`python benchmarks/bench_tracking.py --duration {args.duration} "
        f"--connections {args.connections} --soak {args.soak} --scaling {args.scaling} "
        f"--ratios {args.ratios}` "
        f"on {time.strftime('%Y-%m-%d')}, "
        f"{os.cpu_count()} CPUs, load average at the end: {os.getloadavg()[0]:.2f}\n\n" + text
    )


if __name__ == "__main__":
    main()

#    Licensed under the Apache License, Version 2.0 (the "License"); you may
#    not use this file except in compliance with the License. You may obtain
#    a copy of the License at
#
#         http://www.apache.org/licenses/LICENSE-2.0
#
#    Unless required by applicable law or agreed to in writing, software
#    distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
#    WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
#    License for the specific language governing permissions and limitations
#    under the License.

"""Where the cloud lives, and starting and stopping its processes.

Every process the cloud starts is recorded in ``STATE/pids/<name>.pid``
with its start time, so ``tools/cloud down`` stops exactly what ``up``
started (and nothing else), even after a crash of the tool itself.
"""

import os
import pathlib
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[2]
STATE = ROOT / '.workspace' / 'stack'
VENV_BIN = STATE / 'venv' / 'bin'
# Unpatched Nova 34.0.0, for the compute of the rolling-upgrade tests.
OLD_VENV_BIN = STATE / 'venv-old' / 'bin'
# Upstream Tempest, apart from the services it tests.
TEMPEST_VENV_BIN = STATE / 'venv-tempest' / 'bin'
LOGS = STATE / 'logs'
PIDS = STATE / 'pids'
ETC = STATE / 'etc'
CLOUDS_YAML = STATE / 'clouds.yaml'

# The control plane listens on the bridge address; the compute hosts reach
# it through their veth, as real computes reach a controller.
BRIDGE = 'nstack-br0'
CONTROLLER = '10.78.0.1'
PREFIX_LEN = 24
PASSWORD = 'stack-secret'       # every service's password in this test cloud


def say(text):
    print('cloud: %s' % text, flush=True)


def run(*argv, check=True, **kwargs):
    """Run argv (never a shell); return the CompletedProcess.

    With check, a failure raises an error that carries the command's
    stderr, which is what says why.
    """
    proc = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    if check and proc.returncode:
        raise RuntimeError('%s exited %d: %s' % (
            ' '.join(str(a) for a in argv), proc.returncode,
            (proc.stderr or proc.stdout).strip()[-2000:]))
    return proc


def venv_env(**extra):
    env = dict(os.environ)
    env['PATH'] = '%s:%s' % (VENV_BIN, env.get('PATH', '/usr/bin:/bin'))
    env.pop('OS_CLOUD', None)
    env.update(extra)
    return env


def _start_time(pid):
    try:
        stat = pathlib.Path('/proc/%d/stat' % pid).read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(')') + 2:].split()
    # A zombie has exited; it only waits to be reaped.
    return None if fields[0] == 'Z' else fields[19]


def start(name, argv, env=None, cwd=None):
    """Start argv in a session of its own; log to LOGS/<name>.log."""
    LOGS.mkdir(parents=True, exist_ok=True)
    PIDS.mkdir(parents=True, exist_ok=True)
    with open(LOGS / ('%s.log' % name), 'ab') as log:
        proc = subprocess.Popen(
            [str(a) for a in argv], stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, env=env or venv_env(), cwd=cwd,
            start_new_session=True)
    (PIDS / ('%s.pid' % name)).write_text(
        '%d %s\n' % (proc.pid, _start_time(proc.pid)))
    return proc.pid


def running(name):
    """The pid of a process this cloud started and that still runs."""
    try:
        pid, started = (PIDS / ('%s.pid' % name)).read_text().split()
    except (OSError, ValueError):
        return None
    pid = int(pid)
    return pid if _start_time(pid) == started else None


def stop(name, grace=10):
    """Stop a process group this cloud started: SIGTERM, then SIGKILL."""
    pid = running(name)
    if pid:
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5)):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and running(name):
                time.sleep(0.1)
            if not running(name):
                break
    (PIDS / ('%s.pid' % name)).unlink(missing_ok=True)


def started_names():
    return sorted(p.stem for p in PIDS.glob('*.pid')) if PIDS.is_dir() else []


def wait_for(what, probe, timeout=120, name=None):
    """Poll probe() until it is true; fail early if process ``name`` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():
            return
        if name and not running(name):
            raise RuntimeError('%s exited; see %s' % (
                name, LOGS / ('%s.log' % name)))
        time.sleep(0.5)
    raise RuntimeError('timed out after %ds waiting for %s' % (timeout, what))


def nova_errors(limit=15):
    """The last ERROR lines of the Nova services' logs, named by log.

    A failed step prints them, so that a CI run that cannot keep the logs
    still says why a server or a move failed.
    """
    lines = []
    for log in sorted(LOGS.glob('*nova-*.log')):
        with open(log, errors='replace') as f:
            lines += ['%s: %s' % (log.stem, line.rstrip()[:400])
                      for line in f if ' ERROR ' in line and
                      # a cache backend nobody configured; harmless
                      'oslo_cache.memcache_pool' not in line]
    return lines[-limit:]


def port_open(host, port):
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def http_up(url):
    try:
        urllib.request.urlopen(url, timeout=5)
    except urllib.error.HTTPError:
        return True         # it answered
    except OSError:
        return False
    return True


def write_config(path, sections):
    """Write an ini file from {section: {key: value}}."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for section, values in sections.items():
        lines.append('[%s]' % section)
        lines += ['%s = %s' % item for item in values.items()]
        lines.append('')
    path.write_text('\n'.join(lines))
    return path


def is_mountpoint(path):
    """os.path.ismount misses bind mounts within one file system."""
    return run('mountpoint', '-q', str(path), check=False).returncode == 0


def ensure_bridge():
    """The controller's bridge: the compute hosts' veths plug into it."""
    if run('ip', 'link', 'show', BRIDGE, check=False).returncode == 0:
        return
    run('ip', 'link', 'add', BRIDGE, 'type', 'bridge')
    run('ip', 'addr', 'add', '%s/%d' % (CONTROLLER, PREFIX_LEN), 'dev',
        BRIDGE)
    run('ip', 'link', 'set', BRIDGE, 'up')


def remove_bridge():
    run('ip', 'link', 'del', BRIDGE, check=False)


def openstack(*argv, cloud='admin', check=True):
    """Run the real ``openstack`` CLI as ``cloud`` (admin or demo)."""
    env = venv_env(OS_CLIENT_CONFIG_FILE=str(CLOUDS_YAML))
    return run(str(VENV_BIN / 'openstack'), '--os-cloud', cloud,
               *[str(a) for a in argv], env=env, check=check)

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

"""nova-compute killed in the middle of a move, on the real cloud.

The copy is the longest step of a cold migration, so it is where a crash
or an OOM kill of nova-compute lands. Each step starts a move with
``--copy-pmem-devices``, waits until the copy runs, sends SIGKILL to the
pid of one host's nova-compute (not to its process group: what it started
keeps running, as after a real crash), starts it again, and checks what an
operator would: the server's state and host, the guest's own line, the
copy's processes left on either host, and after one periodic update every
namespace of the destination.

"Mid-copy" is made reliable by ``[libvirt] vpmem_copy_bandwidth``: at
``BANDWIDTH`` MiB/s a SMALL namespace takes about half a minute to copy.
A step waits until the copy's sender runs on the source (``nova-vpmem-copy
send``; with ``--live`` for the first pass of a pre-copy, without it for
the copy after the power-off) and lets it run ``INTO_COPY`` seconds more
before the kill. ``[DEFAULT] update_resources_interval`` is ``INTERVAL``
seconds, so that the destination's periodic zeroing shows within a test.
"""

import json
import os
import pathlib
import signal
import time

from e2e.stack import base
from e2e.stack import computes
from e2e.stack import guest_image
from e2e.stack import nova
from e2e.stack import scenario

BANDWIDTH = 4           # MiB/s
INTO_COPY = 4           # seconds between the sender's start and the kill
INTERVAL = 10           # update_resources_interval, seconds
GONE_WITHIN = 60        # the copy's processes end within this after restart
HOSTS = {host.name: host for host in computes.HOSTS}


def copy_processes(host):
    """{pid: argv} of the copy's processes on host.

    The helper (under sudo, on both hosts), the ssh client on the source
    and the sshd session that runs the helper on the destination; found by
    the host's mount namespace, as computes.ComputeHost does.
    """
    wanted = 'mnt:[%d]' % os.stat(host.mount_ns).st_ino
    found = {}
    for proc in pathlib.Path('/proc').glob('[0-9]*'):
        try:
            if os.readlink(proc / 'ns' / 'mnt') != wanted:
                continue
            argv = (proc / 'cmdline').read_bytes().decode(
                'utf-8', 'replace').split('\0')
        except OSError:
            continue
        line = ' '.join(argv)
        # sshd's listener names itself "sshd: ... [listener] ...".
        # The helper starts itself again as python3 -I -m nova.cmd....
        if ('nova-vpmem-copy' in line or 'nova.cmd.vpmem_copy' in line or
                argv[0] == 'ssh' or
                (argv[0].startswith('sshd: ') and '[listener]' not in line)):
            found[int(proc.name)] = line.strip()
    return found


def options(precopy=False):
    """nova.conf options of the crash steps, on top of the cloud's."""
    libvirt = {'vpmem_copy_bandwidth': BANDWIDTH, 'vpmem_precopy': precopy}
    if precopy:
        libvirt['vpmem_precopy_bandwidth'] = BANDWIDTH
    return {'DEFAULT': {'update_resources_interval': INTERVAL},
            'libvirt': libvirt}


def configure(extra):
    """Restart both computes with extra options (None: the cloud's own)."""
    for host in computes.HOSTS:
        base.stop(host.service('nova-compute'))
        start_compute(host, extra)
    base.wait_for('the nova-compute services', lambda: nova._computes_up(
        computes.HOSTS), timeout=180)


def start_compute(host, extra=None):
    host.start_nova_compute(nova.compute_config(
        host, computes.CLIENT_DIR / 'known_hosts', extra))


def kill_compute(host):
    """SIGKILL to nova-compute's pid only, as a crash or the OOM killer."""
    pid = base.running(host.service('nova-compute'))
    if not pid:
        raise scenario.ScenarioError('nova-compute of %s is not running' %
                                     host.name)
    os.kill(pid, signal.SIGKILL)
    base.wait_for('nova-compute of %s to die' % host.name,
                  lambda: not base.running(host.service('nova-compute')),
                  timeout=30)
    base.say('%s: nova-compute (pid %d) killed' % (host.name, pid))


def wait_for_sender(host, live, timeout=300):
    """Wait until the copy's sender runs on host; return its argv."""
    progress = scenario.Progress()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for argv in copy_processes(host).values():
            if ' send ' in argv and ('--live' in argv) == live:
                return argv
        progress('waiting for the copy to start on %s' % host.name)
        time.sleep(0.5)
    raise scenario.ScenarioError('no copy started on %s within %ds' % (
        host.name, timeout))


def wait_no_copy_processes(since, within=GONE_WITHIN):
    """Wait until no copy process runs on either host.

    :param since: time.monotonic() of the kill
    :returns: ({host: {pid: argv}} of those still there after ``within``
        seconds, seconds from the kill until the last one was gone)
    """
    deadline = time.monotonic() + within
    while True:
        left = {name: copy_processes(host) for name, host in HOSTS.items()}
        left = {name: procs for name, procs in left.items() if procs}
        if not left or time.monotonic() >= deadline:
            return left, time.monotonic() - since
        time.sleep(0.5)


def wait_zero(host_name, timeout=3 * INTERVAL + 30):
    """Wait until every namespace of host_name reads back all zero."""
    deadline = time.monotonic() + timeout
    while True:
        zero = scenario.is_zero(host_name)
        if all(zero.values()) or time.monotonic() >= deadline:
            return zero
        time.sleep(2)


def migrations(server):
    return json.loads(server.action(
        'server', 'migration', 'list', '--server', server.id, '-f',
        'json').stdout)


def wait_migration(server, status, timeout=300):
    """Wait until the server's last migration has status; return it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = server.migrations()
        if found and found[0]['status'] == status:
            return migrations(server)[0]
        time.sleep(2)
    raise scenario.ScenarioError('the migration of %s is not %s after %ds' %
                                 (server.name, status, timeout))


def wait_settled(server, timeout=300):
    """Wait until the server has no task; return its `server show`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = scenario.API.call('GET', '/servers/%s' % server.id)['server']
        if info['OS-EXT-STS:task_state'] is None:
            return server.show()
        time.sleep(2)
    raise scenario.ScenarioError('%s still has a task after %ds' % (
        server.name, timeout))


class CrashTour(object):
    """The steps, in order; each returns a scenario.Step."""

    def __init__(self, name='vpmem-crash'):
        self.server = scenario.Server(name)
        self.first = None

    def _same_data(self, line):
        return scenario.same_data(line, self.first)

    def boot(self):
        configure(options())
        self.server.boot('pmem.small', 'hostA')
        self.first = self.server.wait_guest_line()
        ok = (self.first['first_boot'] == 'yes' and
              self.first['pattern'] == 'ok')
        return scenario.Step('slow copies; boot on hostA', ok,
                             'vpmem_copy_bandwidth %d MiB/s, periodic '
                             'update every %d s' % (BANDWIDTH, INTERVAL),
                             self.first)

    def kill_source_during_copy(self):
        """SIGKILL of the source's nova-compute while the guest is off."""
        return self._kill_source_step(live=False)

    def kill_source_during_precopy(self):
        """SIGKILL of the source's nova-compute during pre-copy pass 1."""
        configure(options(precopy=True))
        return self._kill_source_step(live=True)

    def _kill_source_step(self, live):
        source = HOSTS['hostA']
        self.server.action('server', 'migrate', '--copy-pmem-devices',
                           self.server.id)
        wait_for_sender(source, live=live)
        time.sleep(INTO_COPY)
        kill_compute(source)
        killed = time.monotonic()
        left, gone_after = wait_no_copy_processes(killed)
        start_compute(source, options(precopy=live))
        info = wait_settled(self.server)
        migration = wait_migration(self.server, 'error')
        if live:
            # Killed before the power-off: the guest never stopped.
            line = guest_image.parse_line(self.server.console())
            rebooted = line['boot'] not in self.server.seen_boots
        else:
            line = self.server.wait_guest_line()
            rebooted = True
        zero = wait_zero('hostB')
        ok = (info['status'] == 'ACTIVE' and self.server.host == 'hostA' and
              self._same_data(line) and rebooted != live and not left and
              all(zero.values()))
        return scenario.Step(
            'SIGKILL of hostA\'s nova-compute during %s' % (
                'pre-copy pass 1 (guest running)' if live else
                'the copy (guest off)'), ok,
            '%s on %s; migration %s; guest %s; copy processes left: %s '
            '(%.1f s after the kill); hostB zero: %s' % (
                info['status'], self.server.host, migration['Status'],
                'rebooted' if rebooted else 'kept running', left or 'none',
                gone_after, zero), line)

    def kill_destination_during_copy(self):
        """SIGKILL of the destination's nova-compute while the copy runs."""
        configure(options())
        dest = HOSTS['hostB']
        self.server.action('server', 'migrate', '--copy-pmem-devices',
                           self.server.id)
        wait_for_sender(HOSTS['hostA'], live=False)
        time.sleep(INTO_COPY)
        kill_compute(dest)
        killed = time.monotonic()
        # The copy needs the destination's sshd, not its nova-compute: it
        # ends, and finish_resize waits in hostB's queue.
        wait_migration(self.server, 'post-migrating')
        start_compute(dest, options())
        self.server.wait_status('VERIFY_RESIZE')
        line = self.server.wait_guest_line()
        self.server.action('server', 'resize', 'confirm', self.server.id)
        self.server.wait_status('ACTIVE')
        left, gone_after = wait_no_copy_processes(killed)
        zero = wait_zero('hostA')
        ok = (self.server.host == 'hostB' and self._same_data(line) and
              not left and all(zero.values()))
        return scenario.Step(
            'SIGKILL of hostB\'s nova-compute during the copy', ok,
            'on %s after the restart and confirm; copy processes left: %s '
            '(checked %.0f s after the kill); hostA zero: %s' % (
                self.server.host, left or 'none', gone_after, zero), line)

    def delete(self):
        base.openstack('server', 'delete', '--wait', self.server.id,
                       cloud='demo')
        configure(None)
        zero = {h.name: all(scenario.is_zero(h.name).values())
                for h in computes.HOSTS}
        return scenario.Step('delete: every namespace zero',
                             all(zero.values()),
                             ', '.join('%s %s' % i for i in zero.items()),
                             None)

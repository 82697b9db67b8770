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

"""The whole two-host environment: hosts, their namespaces, faults.

``Environment.setup()`` builds it (network namespaces + sshd + ssh client
drop-in + namespace stand-ins), ``teardown()`` removes every trace of it.
The Nova services run on top of it (e2e.cloud.NovaCloud).
"""

import json
import os
import pathlib
import shutil
import sys
import time

from e2e import hosts as hosts_mod
from e2e import namespaces as ns_mod

DEFAULT_BASE = pathlib.Path('/srv/nova-e2e')
MIB = 1024 * 1024
E2E_BIN = pathlib.Path(__file__).resolve().parent / 'bin'


class Environment(object):

    def __init__(self, base=DEFAULT_BASE, namespace_mib=64, streams=2,
                 copy_timeout=0, use_netns=None, copy_options=None):
        self.base = pathlib.Path(base)
        self.namespace_size = namespace_mib * MIB
        self.streams = streams
        self.copy_timeout = copy_timeout
        # More [libvirt] options of the copy, set before the computes start.
        self.copy_options = dict(copy_options or {})
        self.faults_dir = self.base / 'faults'
        venv_bin = pathlib.Path(sys.executable).parent
        self.helper_path = venv_bin / 'nova-vpmem-copy'
        self.pair = hosts_mod.HostPair(
            self.base, path_dirs=[E2E_BIN, venv_bin],
            environment_for=self._host_environment, use_netns=use_netns)
        for region, host in enumerate(self.pair.hosts):
            host.namespaces = ns_mod.HostNamespaces(
                host.root, region, self.namespace_size)
            host.environment = self._host_environment(host)

    def _host_environment(self, host):
        """What a process started 'on' this host finds in its environment."""
        return {
            'NOVA_VPMEM_COPY_NAMESPACES': str(host.root / 'namespaces.json'),
            'NOVA_E2E_HOST': host.name,
            'NOVA_E2E_FAULTS': str(self.faults_dir),
        }

    @property
    def hosts(self):
        return self.pair.hosts

    @property
    def a(self):
        return self.pair.a

    @property
    def b(self):
        return self.pair.b

    @property
    def mode(self):
        return self.pair.mode

    def host(self, name_or_address):
        for host in self.hosts:
            if name_or_address in (host.name, host.address):
                return host
        raise KeyError(name_or_address)

    @property
    def copy_helper_installed(self):
        return self.helper_path.exists()

    def setup(self):
        self.teardown()
        self.base.mkdir(parents=True, exist_ok=True)
        (self.base / 'instances').mkdir(exist_ok=True)
        for host in self.hosts:
            (self.faults_dir / host.name).mkdir(parents=True, exist_ok=True)
            host.namespaces.setup()
        self.pair.setup()

    def teardown(self):
        self.pair.teardown()
        for host in self.hosts:
            host.namespaces.teardown()
        if self.base.exists():
            shutil.rmtree(self.base, ignore_errors=True)

    # -- faults (see e2e/bin/vpmem-copy-faults) ------------------------------

    def arm(self, host, subcommand, at, action):
        spec = self.faults_dir / host.name / ('%s.json' % subcommand)
        spec.write_text(json.dumps({'at': at, 'action': action}))

    def disarm(self):
        for path in self.faults_dir.glob('*/*'):
            path.unlink()

    def wait_reached(self, host, subcommand, timeout=60):
        marker = self.faults_dir / host.name / ('%s.reached' % subcommand)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if marker.exists():
                return int(marker.read_text() or 0)
            time.sleep(0.1)
        raise TimeoutError('%s on %s never reached its fault point' % (
            subcommand, host.name))


def ensure_root():
    if os.geteuid() != 0:
        sys.exit('the end-to-end environment needs root (network '
                 'namespaces, sshd, mounts)')

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

"""Patched Nova: API, conductor, scheduler, cells v2 and two computes.

The control services run on the controller (the root namespaces) with
``STATE/etc/nova/nova.conf``; each compute host runs nova-compute in its own
namespaces with its own ``/etc/nova/nova.conf`` (see ``computes``). The
cells are the usual two: cell0 for servers that never got a host, and cell1
with both computes.
"""

import time
import urllib.error

from e2e.stack import base
from e2e.stack import computes
from e2e.stack import control

NOVA_ETC = base.ETC / 'nova'
NOVA_CONF = NOVA_ETC / 'nova.conf'
API_PORT = 8774
API_URL = 'http://%s:%d/v2.1' % (base.CONTROLLER, API_PORT)
# Installed by nova's wheel, as its data file etc/nova/api-paste.ini.
API_PASTE = base.VENV_BIN.parent / 'etc' / 'nova' / 'api-paste.ini'


def _common(my_ip):
    return {
        'DEFAULT': {'transport_url': control.transport_url(),
                    'my_ip': my_ip},
        'placement': dict(control.service_auth('nova'),
                          region_name='RegionOne'),
        'neutron': dict(control.service_auth('nova'),
                        region_name='RegionOne'),
        'service_user': dict(control.service_auth('nova'),
                             send_service_user_token='true'),
        'oslo_messaging_notifications': {'driver': 'noop'},
    }


def controller_config():
    sections = _common(base.CONTROLLER)
    sections['DEFAULT'].update({
        'state_path': base.STATE / 'nova',
    })
    sections.update({
        'api': {'auth_strategy': 'keystone'},
        'wsgi': {'api_paste_config': API_PASTE},
        'api_database': {'connection': control.database_url('nova_api')},
        'database': {'connection': control.database_url('nova_cell1')},
        'keystone_authtoken': control.authtoken('nova'),
        'conductor': {'workers': 1},
        'scheduler': {'workers': 1,
                      # tools/cloud maps the hosts itself, once both run.
                      'discover_hosts_in_cells_interval': -1},
        'filter_scheduler': {'enabled_filters': ','.join((
            'ComputeFilter', 'ComputeCapabilitiesFilter',
            'ImagePropertiesFilter', 'NUMATopologyFilter'))},
        'oslo_concurrency': {'lock_path': base.STATE / 'nova' / 'locks'},
    })
    return sections


def compute_config(host, known_hosts, extra=None):
    """host's nova.conf; extra: {section: {option: value}} on top."""
    sections = _common(host.address)
    sections['DEFAULT'].update({
        'host': host.name,
        'compute_driver': 'libvirt.LibvirtDriver',
        'state_path': '/var/lib/nova',
        'instances_path': '/var/lib/nova/instances',
        # The test guest has no ACPI daemon: a clean shutdown would only
        # wait out the timeout before the hard power-off.
        'shutdown_timeout': 0,
    })
    sections.update({
        'libvirt': {
            # TCG: the KVM of these machines cannot run a stock kernel.
            'virt_type': 'qemu',
            'cpu_mode': 'none',
            'pmem_namespaces': computes.PMEM_NAMESPACES_OPTION,
            'vpmem_copy_known_hosts_file': known_hosts,
            'vpmem_copy_ssh_identity_file': computes.COPY_KEY_IN_HOME,
        },
        'vnc': {'enabled': 'false'},
        'oslo_concurrency': {'lock_path': '/var/lib/nova/tmp'},
        # nova-compute starts its privsep daemon through sudo, as in
        # production (rootwrap aside).
        'nova_sys_admin': {'helper_command': 'sudo -n %s --config-file '
                           '/etc/nova/nova.conf' % (
                               host.venv_bin / 'privsep-helper')},
    })
    for section, values in (extra or {}).items():
        sections.setdefault(section, {}).update(values)
    return sections


def manage(*argv):
    return base.run(str(base.VENV_BIN / 'nova-manage'), '--config-file',
                    str(NOVA_CONF), *argv, env=base.venv_env())


def setup_cells():
    base.say('nova: databases and cells')
    manage('api_db', 'sync')
    manage('cell_v2', 'map_cell0', '--database_connection',
           control.database_url('nova_cell0'))
    cells = manage('cell_v2', 'list_cells').stdout
    if ' cell1 ' not in cells:
        manage('cell_v2', 'create_cell', '--name', 'cell1',
               '--database_connection', control.database_url('nova_cell1'),
               '--transport-url', control.transport_url())
    manage('db', 'sync')


def start_controller():
    started = time.monotonic()
    base.write_config(NOVA_CONF, controller_config())
    setup_cells()
    # nova's WSGI app parses sys.argv with oslo.config, so gunicorn takes
    # its options from a config file (control.start_wsgi). The app reads
    # the paste file first, then nova.conf (absolute paths here).
    control.start_wsgi('nova-api', 'nova.wsgi.osapi_compute:application',
                       API_PORT, OS_NOVA_CONFIG_DIR=str(NOVA_ETC),
                       OS_NOVA_CONFIG_FILES='%s;%s' % (API_PASTE, NOVA_CONF))
    for service in ('nova-conductor', 'nova-scheduler'):
        base.start(service, [base.VENV_BIN / service, '--config-file',
                             NOVA_CONF])
    base.wait_for('nova-api', lambda: base.http_up(API_URL), name='nova-api')
    base.say('nova: api, conductor and scheduler started (%.1f s)' % (
        time.monotonic() - started))


def start_computes(known_hosts, old_compute=False):
    """Start the computes; with old_compute, unpatched hostC first.

    Nova refuses to register a service older than the rest of the
    deployment (ServiceTooOld), so in a rolling upgrade the old compute is
    the one that was there before the others were upgraded.
    """
    hosts = list(computes.HOSTS)
    if old_compute:
        computes.OLD_HOST.start_nova_compute(
            compute_config(computes.OLD_HOST, known_hosts))
        base.say('nova: waiting for the unpatched compute of hostC')
        base.wait_for('the nova-compute of hostC', lambda: _computes_up(
            [computes.OLD_HOST]), timeout=180,
            name=computes.OLD_HOST.service('nova-compute'))
    for host in hosts:
        host.start_nova_compute(compute_config(host, known_hosts))
    base.say('nova: waiting for the computes to report in')
    base.wait_for('the nova-compute services', lambda: _computes_up(hosts),
                  timeout=180)
    everyone = hosts + ([computes.OLD_HOST] if old_compute else [])
    base.say('nova: waiting for the computes\' vPMEM inventory in placement')
    base.wait_for('the vPMEM inventory of %s' % ', '.join(
        h.name for h in everyone), lambda: _pmem_reported(everyone),
        timeout=180)
    # A service is "up" as soon as its record exists, before its compute
    # node does; discover only once every node is there, or a host stays
    # unmapped and every build on it fails.
    manage('cell_v2', 'discover_hosts', '--verbose')
    mapped = manage('cell_v2', 'list_hosts').stdout
    missing = [h.name for h in everyone if ' %s ' % h.name not in mapped]
    if missing:
        raise RuntimeError('hosts not mapped to a cell: %s' % missing)


def _computes_up(hosts):
    out = base.openstack('compute', 'service', 'list', '--service',
                         'nova-compute', '-f', 'value', '-c', 'Host',
                         '-c', 'State', check=False).stdout
    up = {line.split()[0] for line in out.splitlines()
          if line.endswith(' up')}
    return up >= {host.name for host in hosts}


def _pmem_reported(hosts):
    """Each host's resource provider has its vPMEM namespaces."""
    token = control.token()         # one per poll, not one per request
    for host in hosts:
        providers = control.placement('/resource_providers?name=%s' %
                                      host.name, token)['resource_providers']
        if not providers:
            return False
        inventory = control.placement(
            '/resource_providers/%s/inventories' % providers[0]['uuid'],
            token)['inventories']
        if not any(rc.startswith('CUSTOM_PMEM_NAMESPACE_')
                   for rc in inventory):
            return False
    return True


class ComputeApi(object):
    """Nova's REST API as admin, with one token: what the scenarios poll.

    Each ``openstack`` command starts an interpreter and asks Keystone for
    a new token, a second or two of CPU: polled every 2 s, the CLI took
    about as much CPU as the TCG guests it waited for. The waits ask the API
    here; every action, and every check of a step's outcome, still runs the
    real CLI.
    """

    def __init__(self, version):
        self.headers = {'OpenStack-API-Version': 'compute %s' % version}
        self.token = None

    def call(self, method, path, body=None):
        """The decoded body of one request; a new token once it expired."""
        for attempt in (1, 2):
            if self.token is None:
                self.token = control.token()
            try:
                return control.request(method, API_URL + path, body,
                                       self.token, self.headers)[1]
            except urllib.error.HTTPError as e:
                if e.code != 401 or attempt == 2:
                    raise
                self.token = None


def stop():
    for host in computes.ALL_HOSTS:
        host.stop_services()
    for service in ('nova-scheduler', 'nova-conductor', 'nova-api'):
        base.stop(service)
